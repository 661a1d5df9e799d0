"""Synchronous successive halving: stage 1's early stopping, decided per rung.

Every trial of a round trains to the rung's iteration, then the rung is decided at once
from all of its results: the best ``ceil(n / reduction_factor)`` go on (ASHA's cutoff, the
rung's ``1 - 1/rf`` quantile, once every trial of the rung has reported). Equal APs, common
at stage 1's short budgets where many are 0, are ranked by the training loss logged last,
then kept in the round's order. Unlike ASHA, which decides as reports arrive, nothing depends on which trial
finishes first, so the same results give the same decisions at any concurrency, on any cluster.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

METRIC = "segm_AP"


def milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The rungs' iterations: grace_period * reduction_factor**k below max_t, then max_t."""
    rungs, m = [], max(1, grace_period)
    while m < max_t:
        rungs.append(m)
        m *= reduction_factor
    return rungs + [max_t]


def survivors(trials: Sequence[Mapping[str, Any]], reduction_factor: int) -> list[str]:
    """Ids of the rung's trials that go on: the best ``ceil(n / reduction_factor)`` by their
    metrics at the rung, segm AP then lower loss (a stable ranking: full ties keep the order given)."""
    def rank(i: int) -> tuple[float, float]:
        m = trials[i]["metrics"] or {}
        return -m.get(METRIC, 0.0), m.get("loss", math.inf)

    keep = math.ceil(len(trials) / reduction_factor)
    ranked = sorted(range(len(trials)), key=rank)
    chosen = set(ranked[:keep])
    return [t["id"] for i, t in enumerate(trials) if i in chosen]


def rung_pairs(trials: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """A run's own measure of its rungs' fidelity (FBNetV3 chose its early-stopping budget so that
    the short-vs-full rank correlation reached 0.92): for each rung iteration of stage 1, the
    (AP there, AP at stage 1's end) of the trials that reached both; and ("stage 1 -> verify")
    each verified candidate's last stage-1 AP against its verified AP. Kendall's tau over these
    says whether deciding at that rung ranks candidates as training longer would."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    last_stage1: dict[str, float] = {}
    for t in trials:
        if t["stage"] != "stage1" or t["status"] not in ("done", "pruned"):
            continue
        reports = [r for r in t["history"] if METRIC in r]
        if not reports:
            continue
        last_stage1[t["candidate_id"]] = reports[-1][METRIC]
        if reports[-1]["iteration"] < t["max_iter"]:  # stopped early: no end to compare with
            continue
        for r in reports[:-1]:
            pairs.setdefault(f"rung {r['iteration']} -> {reports[-1]['iteration']}", []).append(
                (r[METRIC], reports[-1][METRIC]))
    verified = [(last_stage1[t["candidate_id"]], t["metrics"][METRIC]) for t in trials
                if t["stage"] == "verify" and t["status"] == "done" and t["candidate_id"] in last_stage1
                and METRIC in (t["metrics"] or {})]
    if verified:
        pairs["stage 1 -> verify"] = verified
    return pairs
