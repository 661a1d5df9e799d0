"""What a run found: the measured and predicted Pareto fronts, as rows and as a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nars.search.pareto import pareto_mask, plot_front
from nars.search.store import STORE_FILE, RunStore
from nars.errors import UserError

# The choices a table shows beside the metrics (when the candidate has them).
SHOWN = ("t4.c", "box.c", "mask.c", "norm", "optimizer", "lr", "max_iter")


def _row(trial: dict[str, Any]) -> dict[str, Any]:
    m = trial["metrics"] or {}
    return {
        "id": trial["candidate_id"], "trial": trial["id"], "stage": trial["stage"],
        "segm_AP": m.get("segm_AP"), "bbox_AP": m.get("bbox_AP"),
        "mflops": trial["mflops"], "params": trial["params"], "iterations": trial["max_iter"],
        "choices": {k: trial["candidate"][k] for k in SHOWN if k in trial["candidate"]},
    }


def open_store(run_dir: Path) -> RunStore:
    if not (run_dir / STORE_FILE).is_file():
        raise UserError(f"{run_dir}: no {STORE_FILE} here, not a NARS run folder")
    return RunStore(run_dir / STORE_FILE)


def fronts(run_dir: Path) -> dict[str, Any]:
    """``measured``: the non-dominated verified trials (segm AP up, MFLOPs down);
    ``predicted``: stage 2's front; ``reference``; ``trials``: every measured trial."""
    store = open_store(run_dir)
    try:
        trials = [t for t in store.trials() if t["status"] in ("done", "pruned") and t["metrics"]]
        predicted = store.get_meta("stage2_front") or []
    finally:
        store.close()
    verified = [_row(t) for t in trials if t["stage"] == "verify"]
    keep = pareto_mask([r["segm_AP"] for r in verified], [r["mflops"] for r in verified]) if verified else []
    measured = sorted((r for r, k in zip(verified, keep) if k), key=lambda r: r["mflops"])
    reference = next((_row(t) for t in trials if t["stage"] == "reference"), None)
    return {"measured": measured, "predicted": predicted, "reference": reference, "trials": [_row(t) for t in trials]}


def plot(run_dir: Path, path: Path) -> None:
    f = fronts(run_dir)
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for row in f["trials"]:
        label = {"stage1": "stage 1 (short budget)", "verify": "verified (full budget)"}.get(row["stage"])
        if label:
            xs, ys = groups.setdefault(label, ([], []))
            xs.append(row["mflops"])
            ys.append(row["segm_AP"])
    measured = ([r["mflops"] for r in f["measured"]], [r["segm_AP"] for r in f["measured"]])
    ref = f["reference"]
    plot_front(path, groups, measured, (ref["mflops"], ref["segm_AP"]) if ref else None, f"NARS search: {run_dir.name}")
