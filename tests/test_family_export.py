"""``nars export RUN --front``: every member of the measured Pareto front as a model family.

The run folder is written directly, as test_report.py writes its store (no search: a
finished tiny search takes ~45 s and no shared fixture has one), with what a search leaves
for export: real candidate configs of the quick space at 64 px and checkpoints of their
models (untrained: export copies and checks weights, it never looks at their values).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from nars.cli import main
from nars.config import dump, load_config
from nars.engine.loading import load_run_weights
from nars.model.cost import config_cost
from nars.model.fbnetv3is import build_model
from nars.search.export import FAMILY_CSV, FAMILY_MD, ONNX_FILE
from nars.search.store import RunStore
from search_spaces import load_space, sample

SMALL = ["INPUT.MIN_SIZE_TRAIN", "[64]", "INPUT.MAX_SIZE_TRAIN", "80", "INPUT.MIN_SIZE_TEST", "64",
         "INPUT.MAX_SIZE_TEST", "64"]


def _trial(run: Path, cfg: dict[str, Any], candidate: dict[str, Any], cid: str, stage: str,
           seed: int) -> dict[str, Any]:
    """A trial's store row; its folder gets the config and the final checkpoint."""
    folder = run / "trials" / f"{cid}-{stage}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump(cfg))
    torch.manual_seed(seed)
    torch.save({"model": build_model(cfg).state_dict()}, folder / "model_final.pth")
    cost = config_cost(cfg)
    return {"id": f"{cid}-{stage}", "candidate_id": cid, "stage": stage, "round": 0, "candidate": candidate,
            "mflops": cost.mflops["total"], "params": cost.params["total"], "max_iter": cfg["SOLVER"]["MAX_ITER"]}


def _store(run: Path, rows: list[dict[str, Any]], results: dict[str, tuple[str, float | None]]) -> None:
    """``results``: trial id -> (final status, segm AP)."""
    store = RunStore(run / "nars.sqlite")
    store.add_trials(rows)
    for tid, (status, ap) in results.items():
        store.finish(tid, status, None if ap is None else {"segm_AP": ap, "bbox_AP": ap + 0.01}, wall_time=1.0)
    store.set_meta("experiment", {"name": "tiny", "space": "fbnetv3is_quick"})
    store.set_meta("state", "finished")
    store.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Any]:
    """Three verified candidates and the reference (one verified candidate dominated, the
    reference on the front), a stage-1 trial with the best AP of all (not verified, so never
    a member) and a failed verified trial."""
    run = tmp_path_factory.mktemp("family") / "run"
    base = load_config("search_shapes", SMALL)
    space = load_space("fbnetv3is_quick")
    reference = space.references["FBNetV3_A_dsmask"]
    drawn = sample(space.bind(base), 5)
    candidates = [(reference, space.candidate_id(reference))] + [(s.candidate, s.id) for s in drawn]
    stages = ("reference", "verify", "verify", "verify", "stage1", "verify")
    rows = [_trial(run, space.to_config(c, base=base), c, cid, stage, i)
            for i, ((c, cid), stage) in enumerate(zip(candidates, stages))]
    measured, (stage1, failed) = rows[:4], rows[4:]
    # segm AP rises with MFLOPs, except that the cheapest verified trial above the cheapest
    # trial gets the least (the cheapest one dominates it)
    by_cost = sorted(measured, key=lambda r: r["mflops"])
    dominated = next(r for r in by_cost[1:] if r["stage"] == "verify")
    ap = {r["id"]: 0.01 if r is dominated else 0.02 * (k + 1) for k, r in enumerate(by_cost)}
    results = {**{tid: ("done", a) for tid, a in ap.items()},
               stage1["id"]: ("done", 0.5), failed["id"]: ("failed", None)}
    _store(run, rows, results)
    store = RunStore(run / "nars.sqlite")
    store.set_measured_latency(by_cost[-1]["id"], 123.0)  # as a latency search stores: the export measures anew
    store.close()
    members = sorted((r for r in measured if r is not dominated), key=lambda r: r["mflops"])
    assert len({r["mflops"] for r in measured}) == 4 and any(r["stage"] == "reference" for r in members)
    return {"run": run, "members": members}


def test_the_front_exports_as_a_family_that_loads_runs_and_is_tabulated(run, tmp_path, capsys):
    out = tmp_path / "family"
    assert main(["export", str(run["run"]), "--front", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    members = run["members"]
    ids = [m["candidate_id"] for m in members]
    assert sorted(p.name for p in out.iterdir()) == sorted(ids + [FAMILY_CSV, FAMILY_MD])
    for i, m in enumerate(members, 1):
        assert f"exporting {i}/{len(members)}: {m['candidate_id']}" in captured.err
        folder = out / m["candidate_id"]
        cfg = load_config(folder / "config.yaml")
        load_run_weights(build_model(cfg), str(folder / "model_final.pth"), cfg["MODEL"]["WEIGHTS_EMA"], complete=True)
        assert (folder / ONNX_FILE).stat().st_size > 0
        summary = json.loads((folder / "summary.json").read_text())
        assert (summary["trial"], summary["stage"], summary["mflops"]) == (m["id"], m["stage"], m["mflops"])
        # untrained weights tie scores, so the detections' order, hence the parity figures, is arbitrary
        assert {"detections", "labels_equal", "box_px", "mask_iou"} <= set(summary["onnx"])
    with open(out / FAMILY_CSV, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == ids
    assert [float(r["mflops"]) for r in table] == [m["mflops"] for m in members]
    assert [r["stage"] for r in table] == [m["stage"] for m in members]
    assert all(float(r["latency_ms_at_export"]) > 0 and 0.0 <= float(r["onnx_mask_iou"]) <= 1.0 for r in table)
    assert float(table[-1]["latency_ms_at_export"]) != 123.0  # measured with the others, not the store's figure
    markdown = (out / FAMILY_MD).read_text()
    assert markdown in captured.out and "measured at export" in markdown
    assert sum(line.startswith(f"| {i} |") for line in markdown.splitlines() for i in ids) == len(ids)


def test_a_non_empty_out_is_refused_in_one_line_and_left_as_it_was(run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run["run"]), "--front", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no staging folder left beside it


def test_a_failing_member_leaves_no_family_half_written(run, tmp_path, capsys):
    """The second member's checkpoint is truncated: the first was exported, then all of it goes."""
    copy = tmp_path / "run"
    shutil.copytree(run["run"], copy)
    weights = copy / "trials" / run["members"][1]["id"] / "model_final.pth"
    weights.write_bytes(weights.read_bytes()[:4096])  # a copy cut short
    out = tmp_path / "family"
    assert main(["export", str(copy), "--front", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "exporting 2/" in captured.err and captured.err.strip().splitlines()[-1].startswith("nars export:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_without_a_verified_trial_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _store(run, [{"id": "a-stage1", "candidate_id": "a", "stage": "stage1", "round": 0, "candidate": {},
                  "mflops": 10.0, "params": 1, "max_iter": 4}], {"a-stage1": ("done", 0.1)})
    assert main(["export", str(run), "--front", "--out", str(tmp_path / "family")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no verified trial in this run yet" in err
    assert not (tmp_path / "family").exists()
