"""Synchronous successive halving: stage 1's early stopping, decided per rung.

Every trial of a round trains to the rung's iteration, then the rung is decided at once
from all of its results: the best ``ceil(n / reduction_factor)`` go on (ASHA's cutoff, the
rung's ``1 - 1/rf`` quantile, once every trial of the rung has reported). Equal APs, common
at stage 1's short budgets where many are 0, are ranked by the training loss logged last,
then kept in the round's order. Unlike ASHA, which decides as reports arrive, nothing depends on which trial
finishes first, so the same results give the same decisions at any concurrency, on any cluster.

With ``stage1.early_stop.wilcoxon_p`` a rung also compares its trials image by image (each
rung's evaluation writes its per-image segm AP; ``nars.search.paired``), as Optuna's
WilcoxonPruner does: a trial outside the best ``1/rf`` is stopped only when it is worse than the
rung's leader on the same validation images at Wilcoxon p below that level. A short trial's
dataset AP is noisy; a trial the paired test cannot tell from the leader goes on.

A rung decides only once the run has shown it can (``rung_gate``): FBNetV3 chose its
early-stopping budget so that the short-vs-full rank correlation reached 0.92. Each round's
rungs are checked against the trials of earlier rounds that reached both the rung and stage
1's end; a rung whose Kendall tau is below ``stage1.early_stop.min_tau``, or not measured yet
(too few pairs), is trained through, not decided at.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from nars.search.paired import paired_images

METRIC = "segm_AP"
MIN_PAIRS = 3  # Kendall's tau of fewer pairs says nothing (two points: always +-1)


def milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The rungs' iterations: grace_period * reduction_factor**k below max_t, then max_t."""
    rungs, m = [], max(1, grace_period)
    while m < max_t:
        rungs.append(m)
        m *= reduction_factor
    return rungs + [max_t]


def ranked(trials: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of the rung's trials, best first: segm AP, then lower loss (a stable ranking: full
    ties keep the order given)."""
    def rank(i: int) -> tuple[float, float]:
        m = trials[i]["metrics"] or {}
        return -m.get(METRIC, 0.0), m.get("loss", math.inf)

    return sorted(range(len(trials)), key=rank)


def versus_leader(trials: Sequence[Mapping[str, Any]],
                  per_image: Mapping[str, Mapping[str, float] | None]) -> dict[str, dict[str, Any] | None]:
    """Each of the rung's other trials against its leader (``ranked`` first), image by image
    (``paired.paired_images``: mean difference, interval, Wilcoxon p); None where a trial has
    no per-image results at the rung or too few images in common."""
    order = ranked(trials)
    leader = per_image.get(trials[order[0]]["id"]) if order else None
    return {trials[i]["id"]: paired_images(per_image.get(trials[i]["id"]) or {}, leader) if leader else None
            for i in order[1:]}


def survivors(trials: Sequence[Mapping[str, Any]], reduction_factor: int,
              paired: Mapping[str, Mapping[str, Any] | None] | None = None, max_p: float | None = None) -> list[str]:
    """Ids of the rung's trials that go on: the best ``ceil(n / reduction_factor)`` (``ranked``);
    with ``paired`` (``versus_leader``) and ``max_p``, also every other trial whose comparison
    does not show it worse than the leader (worse on average at Wilcoxon p < ``max_p``). A trial
    without a comparison is ranked only."""
    order = ranked(trials)
    chosen = set(order[: math.ceil(len(trials) / reduction_factor)])
    if paired is not None and max_p is not None:
        for i in order:
            d = paired.get(trials[i]["id"])
            if d is not None and not (d["mean"] < 0 and d["p"] < max_p):
                chosen.add(i)
    return [t["id"] for i, t in enumerate(trials) if i in chosen]


def stage1_pairs(trials: Sequence[Mapping[str, Any]]) -> dict[tuple[int, int], list[tuple[float, float]]]:
    """For each (rung iteration, end iteration) of stage 1, the (AP at the rung, AP at the end) of
    the trials that reached both (a trial stopped early has no end to compare with)."""
    pairs: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for t in trials:
        if t["stage"] != "stage1" or t["status"] not in ("done", "pruned"):
            continue
        reports = [r for r in t["history"] if METRIC in r]
        if not reports or reports[-1]["iteration"] < t["max_iter"]:
            continue
        for r in reports[:-1]:
            pairs.setdefault((r["iteration"], reports[-1]["iteration"]), []).append((r[METRIC], reports[-1][METRIC]))
    return pairs


def kendall_tau(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Kendall's tau-b of (x, y) pairs; None with fewer than ``MIN_PAIRS`` or when either side is
    constant (no ranking to agree with)."""
    if len(pairs) < MIN_PAIRS:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(*zip(*pairs)).statistic
    return None if math.isnan(tau) else float(tau)


def rung_gate(trials: Sequence[Mapping[str, Any]], rungs: Sequence[int], min_tau: float | None) -> list[dict[str, Any]]:
    """Which of a round's rungs (all but its last) decide: one whose tau over ``trials`` (earlier
    rounds') is at least ``min_tau``; every rung when ``min_tau`` is None (plain halving). One
    record per rung: iteration, pairs, tau (None: not measurable yet), used."""
    by_rung: dict[int, list[tuple[float, float]]] = {}
    for (m, _), pairs in stage1_pairs(trials).items():
        by_rung.setdefault(m, []).extend(pairs)
    gate = []
    for m in rungs:
        tau = kendall_tau(by_rung.get(m, []))
        used = min_tau is None or (tau is not None and tau >= min_tau)
        gate.append({"iteration": m, "pairs": len(by_rung.get(m, [])), "tau": tau, "used": used})
    return gate


def rung_pairs(trials: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """A run's own measure of its rungs' fidelity, for the report: ``stage1_pairs`` labelled
    "rung M -> END", and ("stage 1 -> verify") each verified candidate's last stage-1 AP
    against its verified AP."""
    pairs = {f"rung {m} -> {end}": p for (m, end), p in stage1_pairs(trials).items()}
    last_stage1 = {t["candidate_id"]: reports[-1][METRIC] for t in trials
                   if t["stage"] == "stage1" and t["status"] in ("done", "pruned")
                   and (reports := [r for r in t["history"] if METRIC in r])}
    verified = [(last_stage1[t["candidate_id"]], t["metrics"][METRIC]) for t in trials
                if t["stage"] == "verify" and t["status"] == "done" and t["candidate_id"] in last_stage1
                and METRIC in (t["metrics"] or {})]
    if verified:
        pairs["stage 1 -> verify"] = verified
    return pairs
