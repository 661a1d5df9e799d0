"""What a run found: the measured and predicted Pareto fronts, as rows and as a plot.

The cost axis is MFLOPs or latency (``X_AXES``); a trial's latency is its measured one where
the search measured it (verified trials and the reference), else the predicted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nars.search.experiment import latency_engine
from nars.search.pareto import pareto_mask, plot_front
from nars.search.store import open_run
from nars.errors import UserError

# The choices a table shows beside the metrics (when the candidate has them).
SHOWN = ("t4.c", "box.c", "mask.c", "norm", "optimizer", "lr", "max_iter")
X_AXES = {"mflops": "MFLOPs", "latency": "latency (ms)"}


def _row(trial: dict[str, Any], means: dict[str, tuple[float, int]] | None = None) -> dict[str, Any]:
    """A trial as a table row; a finalist's segm AP is its mean over seeds (``seed_means``)."""
    m = trial["metrics"] or {}
    mean, seeds = (means or {}).get(trial["candidate_id"], (m.get("segm_AP"), 1)) \
        if trial["stage"] in FINALIST_STAGES else (m.get("segm_AP"), 1)
    return {
        "id": trial["candidate_id"], "trial": trial["id"], "stage": trial["stage"],
        "segm_AP": mean, "seeds": seeds, "bbox_AP": m.get("bbox_AP"),
        "mflops": trial["mflops"], "params": trial["params"],
        "latency_ms": trial["latency_ms"], "measured_latency_ms": trial["measured_latency_ms"],
        "iterations": trial["max_iter"],
        "choices": {k: trial["candidate"][k] for k in SHOWN if k in trial["candidate"]},
    }


def cost_of(row: dict[str, Any], x: str) -> float | None:
    """A row's cost on axis ``x``: MFLOPs, or latency (measured, else predicted; None without)."""
    if x not in X_AXES:
        raise UserError(f"unknown cost axis {x!r}; expected one of {', '.join(X_AXES)}")
    if x == "mflops":
        return row["mflops"]
    return row["measured_latency_ms"] if row["measured_latency_ms"] is not None else row["latency_ms"]


FINALIST_STAGES = ("verify", "reference", "recipe")  # trained at the verify budget with the run's seed


def seed_offset(trial: dict[str, Any]) -> int:
    """What a trial adds to the run's seed: re-scoring round j trains every finalist with seed + j."""
    return trial["round"] if trial["stage"] == "rescore" else 0


def seed_means(trials: Sequence[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """Each finalist candidate's (mean segm AP, seeds) over its verify-budget trials: the run's
    seed (verified, reference or recipe trial) and re-scoring's (``verify.rescore``), one per seed."""
    by_seed: dict[str, dict[int, float]] = {}
    for t in trials:
        if t["stage"] in (*FINALIST_STAGES, "rescore") and t["status"] == "done" and "segm_AP" in (t["metrics"] or {}):
            by_seed.setdefault(t["candidate_id"], {}).setdefault(seed_offset(t), t["metrics"]["segm_AP"])
    return {cid: (sum(aps.values()) / len(aps), len(aps)) for cid, aps in by_seed.items()}


def tuned_parent(trials: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The tuned parent, the honest baseline a searched model must beat: the best finished trial
    of the recipe stage and the reference (ties: the reference); None without a recipe stage."""
    tuned = [t for t in trials if t["stage"] in ("reference", "recipe") and t["status"] == "done"
             and "segm_AP" in (t["metrics"] or {})]
    if not any(t["stage"] == "recipe" for t in tuned):
        return None
    return max(tuned, key=lambda t: (t["metrics"]["segm_AP"], t["stage"] == "reference"))


def fronts(run_dir: Path, x: str = "mflops") -> dict[str, Any]:
    """``measured``: the non-dominated verified trials (segm AP up, cost ``x`` down);
    ``predicted``: stage 2's front; ``reference``; ``tuned``: the tuned parent when a recipe
    stage found a better recipe than the reference's (else None); ``trials``: every measured trial."""
    store = open_run(run_dir)
    try:
        trials = [t for t in store.trials() if t["status"] in ("done", "pruned") and t["metrics"]]
        predicted = store.get_meta("stage2_front") or []
        experiment = store.get_meta("experiment")
    finally:
        store.close()
    means = seed_means(trials)
    verified = [r for r in (_row(t, means) for t in trials) if r["stage"] == "verify" and cost_of(r, x) is not None]
    if x == "latency" and not verified and trials:
        raise UserError(f"{run_dir}: the run has no latencies (it set neither constraints.max_latency_ms "
                        "nor stage2.objective latency)")
    keep = pareto_mask([r["segm_AP"] for r in verified], [cost_of(r, x) for r in verified]) if verified else []
    measured = sorted((r for r, k in zip(verified, keep) if k), key=lambda r: cost_of(r, x))
    reference = next((_row(t, means) for t in trials if t["stage"] == "reference"), None)
    tuned = tuned_parent(trials)
    return {"measured": measured, "predicted": predicted, "reference": reference,
            "tuned": _row(tuned, means) if tuned is not None and tuned["stage"] == "recipe" else None,
            "trials": [_row(t) for t in trials], "latency_engine": latency_engine(experiment)}


def axis_label(f: dict[str, Any], x: str) -> str:
    """The cost axis's label for ``fronts(run_dir, x)``; latency names its engine."""
    return f"latency (ms, {f['latency_engine']})" if x == "latency" else X_AXES[x]


def series(f: dict[str, Any], x: str = "mflops") -> dict[str, Any]:
    """What a front plot draws from ``fronts(run_dir, x)``: ``groups`` (label -> costs, segm APs
    of the stage-1 and verified trials), the ``measured`` front and the ``reference`` point."""
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for row in f["trials"]:
        label = {"stage1": "stage 1 (short budget)", "verify": "verified (full budget)",
                 "recipe": "the parent, other recipes"}.get(row["stage"])
        if label and cost_of(row, x) is not None:
            xs, ys = groups.setdefault(label, ([], []))
            xs.append(cost_of(row, x))
            ys.append(row["segm_AP"])
    measured = ([cost_of(r, x) for r in f["measured"]], [r["segm_AP"] for r in f["measured"]])
    ref = f["reference"]
    reference = (cost_of(ref, x), ref["segm_AP"]) if ref and cost_of(ref, x) is not None else None
    return {"groups": groups, "measured": measured, "reference": reference}


def plot(run_dir: Path, path: Path, x: str = "mflops") -> None:
    f = fronts(run_dir, x)
    s = series(f, x)
    plot_front(path, s["groups"], s["measured"], s["reference"], f"NARS search: {run_dir.name}",
               xlabel=axis_label(f, x))
