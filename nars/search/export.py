"""``nars export``: a verified trial as a standalone FBNetV3IS training config + weights
(and, with ``onnx``, as ``model.onnx`` for onnxruntime: nars.deploy.onnx)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from nars.config import dump, load_config
from nars.errors import UserError
from nars.fileio import atomic_write_text, make_dirs, staged_folder
from nars.model.weights import FINAL_WEIGHTS
from nars.search.store import STORE_FILE, open_run

ONNX_FILE = "model.onnx"


def pick(trials: list[dict[str, Any]], trial_id: str | None, max_mflops: float | None) -> dict[str, Any]:
    """By id (candidate or trial id), else the best measured segm AP within ``max_mflops``."""
    if trial_id is not None:
        found = [t for t in trials if trial_id in (t["id"], t["candidate_id"])]
        found.sort(key=lambda t: t["stage"] != "verify")  # a candidate's verified trial first
        if not found:
            raise UserError(f"no trial {trial_id!r} in this run (see nars pareto)")
        return found[0]
    limit = math.inf if max_mflops is None else max_mflops
    verified = [t for t in trials if t["stage"] == "verify" and t["status"] == "done" and t["mflops"] <= limit]
    if not verified:
        raise UserError("no verified trial" + (f" with MFLOPs <= {max_mflops:g}" if max_mflops is not None else "")
                        + " in this run yet")
    return max(verified, key=lambda t: t["metrics"].get("segm_AP", 0.0))


def export(run_dir: Path, out: Path, trial_id: str | None = None, max_mflops: float | None = None,
           onnx: bool = False) -> dict[str, Any]:
    """Write ``out/config.yaml``, ``out/model_final.pth`` and ``out/summary.json``; with
    ``onnx`` also ``out/model.onnx``, whose check against PyTorch goes into the summary.
    The checkpoint must load whole into the trial's model; everything is written into a
    hidden folder beside ``out`` that becomes ``out`` at the end, so a failure (a damaged
    checkpoint, a full disk, Ctrl-C) leaves no ``out`` and nothing that blocks the retry."""
    store = open_run(run_dir)
    try:
        trials = store.trials()
        experiment = store.get_meta("experiment")
    finally:
        store.close()
    trial = pick(trials, trial_id, max_mflops)
    if trial["status"] != "done":
        raise UserError(f"trial {trial['id']} is {trial['status']}, not done: nothing to export")
    trial_dir = run_dir / "trials" / trial["id"]
    weights = trial_dir / FINAL_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights} is missing (was the run's trials folder moved?)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} is not empty")
    cfg = load_config(trial_dir / "config.yaml")
    _check_weights(cfg, weights)
    cfg["OUTPUT_DIR"] = str(out / "retrain")
    cfg["SOLVER"]["CHECKPOINT_PERIOD"] = max(1, cfg["SOLVER"]["MAX_ITER"] // 5)  # the trial kept only the final one
    summary = {
        "id": trial["candidate_id"], "trial": trial["id"], "stage": trial["stage"], "metrics": trial["metrics"],
        "mflops": trial["mflops"], "params": trial["params"], "iterations": trial["max_iter"],
        "candidate": trial["candidate"], "wall_time": trial["wall_time"],
        "provenance": {"run": str(run_dir), "store": str(run_dir / STORE_FILE), "experiment": experiment,
                       "space": experiment["space"] if experiment else None},
    }
    make_dirs(out.parent, "the export's parent folder")
    with staged_folder(out, "the export") as staging:
        shutil.copyfile(weights, staging / FINAL_WEIGHTS)
        atomic_write_text(staging / "config.yaml", dump(cfg))
        if onnx:
            from nars.deploy.onnx import export_checked  # onnx and onnxruntime load only when asked

            # checked on the staged files; the graph is the same wherever it lies
            summary["onnx"] = export_checked(cfg, str(staging / FINAL_WEIGHTS), staging / ONNX_FILE).to_dict()
        atomic_write_text(staging / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _check_weights(cfg: dict[str, Any], weights: Path) -> None:
    """The trial's checkpoint loads whole into its model (a truncated or foreign file is refused)."""
    from nars.engine.loading import load_run_weights
    from nars.model.fbnetv3is import build_model

    load_run_weights(build_model(cfg), str(weights), cfg["MODEL"]["WEIGHTS_EMA"], complete=True)

