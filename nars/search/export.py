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
from nars.fileio import atomic_write_text
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
    ``onnx`` also ``out/model.onnx``, whose check against PyTorch goes into the summary."""
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
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty")
    cfg = load_config(trial_dir / "config.yaml")
    cfg["OUTPUT_DIR"] = str(out / "retrain")
    cfg["SOLVER"]["CHECKPOINT_PERIOD"] = max(1, cfg["SOLVER"]["MAX_ITER"] // 5)  # the trial kept only the final one
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "id": trial["candidate_id"], "trial": trial["id"], "stage": trial["stage"], "metrics": trial["metrics"],
        "mflops": trial["mflops"], "params": trial["params"], "iterations": trial["max_iter"],
        "candidate": trial["candidate"], "wall_time": trial["wall_time"],
        "provenance": {"run": str(run_dir), "store": str(run_dir / STORE_FILE), "experiment": experiment,
                       "space": experiment["space"] if experiment else None},
    }
    tmp = out / f".{FINAL_WEIGHTS}.tmp"
    shutil.copyfile(weights, tmp)
    tmp.replace(out / FINAL_WEIGHTS)
    atomic_write_text(out / "config.yaml", dump(cfg))
    if onnx:
        from nars.deploy.onnx import export_checked  # onnx and onnxruntime load only when asked

        summary["onnx"] = export_checked(cfg, str(out / FINAL_WEIGHTS), out / ONNX_FILE).to_dict()
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
