"""``nars export``: a verified trial as a standalone FBNetV3IS training config + weights
(and, with ``onnx``, as ``model.onnx`` for onnxruntime: nars.deploy.onnx); with ``--front``,
every member of the run's measured Pareto front, each exported so (ONNX included), as one
deployable model family with a table comparing them."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from nars.config import dump, load_config
from nars.errors import UserError
from nars.fileio import atomic_write_text, make_dirs, staged_folder
from nars.model.weights import FINAL_WEIGHTS
from nars.search.experiment import latency_engine
from nars.search.fronts import fronts, seed_means
from nars.search.pareto import pareto_mask
from nars.search.store import STORE_FILE, open_run

logger = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
FAMILY_CSV, FAMILY_MD = "family.csv", "family.md"
FAMILY_THREADS = 2  # the members' latency: torch on 2 CPU threads, the search's default (latency.threads)
# (CSV column, markdown header) of the family table; the latency is the export's own measurement
FAMILY_COLUMNS = (
    ("id", "id"), ("stage", "stage"), ("segm_AP", "segm AP"), ("bbox_AP", "bbox AP"), ("mflops", "MFLOPs"),
    ("params", "params"), ("latency_ms_at_export", f"latency ms (measured at export, {FAMILY_THREADS} threads, "
                                                   "members side by side)"),
    ("onnx_mask_iou", "ONNX vs PyTorch: binary mask IoU >="), ("onnx_box_px", "ONNX vs PyTorch: box diff px <="),
)


def pick(trials: list[dict[str, Any]], trial_id: str | None, max_mflops: float | None) -> dict[str, Any]:
    """By id (candidate or trial id), else the verified trial of the best segm AP within
    ``max_mflops``: the mean over seeds where re-scoring trained more (``seed_means``)."""
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
    means = seed_means(trials)
    return max(verified, key=lambda t: means.get(t["candidate_id"], (t["metrics"].get("segm_AP", 0.0), 1))[0])


def front_members(run_dir: Path, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials of the measured front (``fronts``'s verified one) with the reference added:
    those of both nondominated in (segm AP up, MFLOPs down), cheapest first. A candidate both
    verified and the reference (tied) appears once, as its verified trial."""
    f = fronts(run_dir)
    rows = f["measured"] + ([f["reference"]] if f["reference"] else [])
    keep = pareto_mask([r["segm_AP"] for r in rows], [r["mflops"] for r in rows]) if rows else []
    chosen: dict[str, str] = {}
    for row, kept in zip(rows, keep):
        if kept:
            chosen.setdefault(row["id"], row["trial"])
    by_id = {t["id"]: t for t in trials}
    return sorted((by_id[trial_id] for trial_id in chosen.values()), key=lambda t: t["mflops"])


def export(run_dir: Path, out: Path, trial_id: str | None = None, max_mflops: float | None = None,
           onnx: bool = False) -> dict[str, Any]:
    """Write ``out/config.yaml``, ``out/model_final.pth`` and ``out/summary.json``; with
    ``onnx`` also ``out/model.onnx``, whose check against PyTorch goes into the summary.
    The checkpoint must load whole into the trial's model; everything is written into a
    hidden folder beside ``out`` that becomes ``out`` at the end, so a failure (a damaged
    checkpoint, a full disk, Ctrl-C) leaves no ``out`` and nothing that blocks the retry."""
    trials, experiment = _read_run(run_dir)
    trial = pick(trials, trial_id, max_mflops)
    _check_out(out)
    with staged_folder(out, "the export") as staging:
        return _write_member(run_dir, trial, experiment, staging, out, onnx)


def export_family(run_dir: Path, out: Path) -> list[dict[str, Any]]:
    """Every member of the measured front (``front_members``) as ``out/<id>/``, each what
    ``export(..., onnx=True)`` writes, then their latencies measured together (comparable
    figures, whatever the run stored) and the family table as ``out/family.csv`` and
    ``out/family.md``. Staged as one folder, as ``export``: a failure leaves no ``out``.
    Returns the table's rows."""
    from nars.deploy.latency import measure_latencies

    trials, experiment = _read_run(run_dir)
    members = front_members(run_dir, trials)
    if not members:
        raise UserError("no verified trial in this run yet")
    _check_out(out)
    with staged_folder(out, "the family export") as staging:
        summaries = []
        for i, trial in enumerate(members, 1):
            logger.info("exporting %d/%d: %s (%s, %.1f MFLOPs) ...", i, len(members), trial["candidate_id"],
                        trial["stage"], trial["mflops"])
            folder = make_dirs(staging / trial["candidate_id"], "the family export")
            summaries.append(_write_member(run_dir, trial, experiment, folder, out / trial["candidate_id"], onnx=True))
        engine = latency_engine(experiment)  # the engine the search traded AP against
        logger.info("measuring the latency of the %d members together (%s, %d threads) ...", len(members), engine,
                    FAMILY_THREADS)
        latencies = measure_latencies([load_config(staging / s["id"] / "config.yaml") for s in summaries],
                                      engine=engine, threads=FAMILY_THREADS)
        rows = [_family_row(s, lat.median_ms) for s, lat in zip(summaries, latencies)]
        atomic_write_text(staging / FAMILY_CSV, family_csv(rows), "the family table")
        atomic_write_text(staging / FAMILY_MD, family_markdown(rows, run_dir), "the family table")
    return rows


def family_csv(rows: list[dict[str, Any]]) -> str:
    """The table as ``family.csv`` holds it: full-precision figures, for a spreadsheet or pandas."""
    text = io.StringIO()
    writer = csv.DictWriter(text, [key for key, _ in FAMILY_COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def family_markdown(rows: list[dict[str, Any]], run_dir: Path) -> str:
    """The table as ``family.md`` holds it and ``nars export --front`` prints it."""
    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        return {"segm_AP": "{:.3f}", "bbox_AP": "{:.3f}", "mflops": "{:.1f}", "params": "{:,}",
                "latency_ms_at_export": "{:.1f}", "onnx_mask_iou": "{:.4f}", "onnx_box_px": "{:.1e}"}.get(
                    key, "{}").format(value)

    lines = [f"Model family: the measured Pareto front (segm AP up, MFLOPs down) of {run_dir}", "",
             "| " + " | ".join(head for _, head in FAMILY_COLUMNS) + " |",
             "|" + "---|" * len(FAMILY_COLUMNS)]
    lines += ["| " + " | ".join(cell(key, row[key]) for key, _ in FAMILY_COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _family_row(summary: dict[str, Any], latency_ms: float) -> dict[str, Any]:
    m, parity = summary["metrics"], summary["onnx"]
    return {"id": summary["id"], "stage": summary["stage"], "segm_AP": m.get("segm_AP"), "bbox_AP": m.get("bbox_AP"),
            "mflops": summary["mflops"], "params": summary["params"], "latency_ms_at_export": round(latency_ms, 3),
            "onnx_mask_iou": parity["mask_iou"], "onnx_box_px": parity["box_px"]}


def _read_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    store = open_run(run_dir)
    try:
        return store.trials(), store.get_meta("experiment")
    finally:
        store.close()


def _check_out(out: Path) -> None:
    """``out`` is new or an empty folder (an export never writes over anything); its parent exists."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} is not empty")
    make_dirs(out.parent, "the export's parent folder")


def _write_member(run_dir: Path, trial: dict[str, Any], experiment: dict[str, Any] | None, folder: Path,
                  final: Path, onnx: bool) -> dict[str, Any]:
    """One trial's export into ``folder`` (staged; it becomes ``final``, which the config's
    retrain folder names): config, checked weights, ONNX with ``onnx``, summary."""
    if trial["status"] != "done":
        raise UserError(f"trial {trial['id']} is {trial['status']}, not done: nothing to export")
    trial_dir = run_dir / "trials" / trial["id"]
    weights = trial_dir / FINAL_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights} is missing (was the run's trials folder moved?)")
    cfg = load_config(trial_dir / "config.yaml")
    _check_weights(cfg, weights)
    cfg["OUTPUT_DIR"] = str(final / "retrain")
    cfg["SOLVER"]["CHECKPOINT_PERIOD"] = max(1, cfg["SOLVER"]["MAX_ITER"] // 5)  # the trial kept only the final one
    summary = {
        "id": trial["candidate_id"], "trial": trial["id"], "stage": trial["stage"], "metrics": trial["metrics"],
        "mflops": trial["mflops"], "params": trial["params"], "iterations": trial["max_iter"],
        "candidate": trial["candidate"], "wall_time": trial["wall_time"],
        "provenance": {"run": str(run_dir), "store": str(run_dir / STORE_FILE), "experiment": experiment,
                       "space": experiment["space"] if experiment else None},
    }
    shutil.copyfile(weights, folder / FINAL_WEIGHTS)
    atomic_write_text(folder / "config.yaml", dump(cfg))
    if onnx:
        from nars.deploy.onnx import export_checked  # onnx and onnxruntime load only when asked

        # checked on the staged files; the graph is the same wherever it lies
        summary["onnx"] = export_checked(cfg, str(folder / FINAL_WEIGHTS), folder / ONNX_FILE).to_dict()
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _check_weights(cfg: dict[str, Any], weights: Path) -> None:
    """The trial's checkpoint loads whole into its model (a truncated or foreign file is refused)."""
    from nars.engine.loading import load_run_weights
    from nars.model.fbnetv3is import build_model

    load_run_weights(build_model(cfg), str(weights), cfg["MODEL"]["WEIGHTS_EMA"], complete=True)
