"""stage1.warm_start: earlier runs' measured trials for the predictor, only from runs that
measured the same thing (space, setup, dataset), at this run's stage-1 budget, one per
candidate; round 0 with them is the predictor's. Run folders are made directly in stores
(no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from nars.cli import main
from nars.config import load_config
from nars.errors import UserError
from nars.search.experiment import load_experiment
from nars.search.stage1 import fit_predictor, measured, pretrained_encoder, propose
from nars.search.store import RunStore
from nars.search.warm_start import FINGERPRINT_KEY, fingerprint, warm_results
from search_spaces import load_space, sample

DATA = Path(__file__).parent / "data"
BUDGET = 10  # the stage-1 iterations every candidate trains in these tests
PINS = yaml.safe_load((DATA / "tiny_search.yaml").read_text())["config"]


def _exp(tmp: Path, *overrides: str) -> dict[str, Any]:
    exp = load_experiment(DATA / "tiny_search.yaml", ["dataset.shapes.out", str(tmp / "shapes"), *overrides])
    exp["workdir"] = str(tmp)
    return exp


def _space(exp: dict[str, Any]):
    return load_space(exp["space"]).bind(load_config(exp["base_config"]), exp["config"])


def _iters(candidate: dict[str, Any]) -> int:
    return BUDGET


def _run(folder: Path, exp: dict[str, Any], trials: list[tuple[Any, str, str, int, float]],
         stored_fingerprint: bool = True) -> Path:
    """A run folder whose store holds ``exp`` and trials (sample, stage, status, max_iter, AP)."""
    folder.mkdir(parents=True)
    store = RunStore(folder / "nars.sqlite")
    store.set_meta("experiment", exp)
    if stored_fingerprint:
        store.set_meta(FINGERPRINT_KEY, fingerprint(exp, _space(exp)))
    for s, stage, status, max_iter, ap in trials:
        tid = f"{s.id}-{stage}"
        store.add_trials([{"id": tid, "candidate_id": s.id, "stage": stage, "round": 0, "candidate": s.candidate,
                           "mflops": s.mflops, "params": s.params, "max_iter": max_iter}])
        store.finish(tid, status, None if status == "failed" else {"segm_AP": ap, "bbox_AP": ap})
    store.close()
    return folder


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    exp = _exp(tmp_path_factory.mktemp("warm"))
    return sample(_space(exp), 6, method="uniform", seed=5)


def test_warm_results_keep_measured_trials_at_this_budget_one_per_candidate(tmp_path, drawn):
    exp = _exp(tmp_path)
    a, b, c, d, e, f = drawn
    first = _run(tmp_path / "runs" / "a", exp, [
        (a, "stage1", "done", BUDGET, 0.1), (b, "stage1", "pruned", BUDGET, 0.02), (c, "stage1", "failed", BUDGET, 0),
        (d, "verify", "done", 12, 0.3),  # the verify budget: would read as a better candidate than it is
        (e, "stage1", "done", BUDGET, 0.05)])
    _run(tmp_path / "runs" / "b", _exp(tmp_path, "seed", "3"), [  # another seed: the same measurements
        (b, "stage1", "done", BUDGET, 0.04), (a, "stage1", "done", BUDGET, 0.2), (f, "verify", "done", BUDGET, 0.07)])
    exp["stage1"]["warm_start"] = ["runs/a", "runs/b", str(first)]  # relative to the workdir; a repeat is read once
    rows = warm_results(exp, _space(exp), _iters)
    assert [(r["candidate_id"], r["status"], r["metrics"]["segm_AP"]) for r in rows] == [
        (a.id, "done", 0.1), (b.id, "done", 0.04), (e.id, "done", 0.05), (f.id, "done", 0.07)]
    assert [Path(r["run"]).name for r in rows] == ["a", "b", "a", "b"]
    assert all(r["candidate"] == s.candidate for r, s in zip(rows, (a, b, e, f)))
    assert measured(rows) == rows  # stage 1's own results and these are one list


def test_a_run_without_a_stored_fingerprint_is_compared_by_its_experiment(tmp_path, drawn):
    exp = _exp(tmp_path)
    _run(tmp_path / "old", _exp(tmp_path / "elsewhere"), [(drawn[0], "stage1", "done", BUDGET, 0.1)],
         stored_fingerprint=False)  # the same shapes, generated at another path
    exp["stage1"]["warm_start"] = ["old"]
    assert [r["candidate_id"] for r in warm_results(exp, _space(exp), _iters)] == [drawn[0].id]


@pytest.mark.parametrize("change, message", [
    (["space", "fbnetv3is"], "stage1.warm_start src: searched space fbnetv3is, this run searches fbnetv3is_quick"),
    (["dataset.shapes.seed", "1"], "stage1.warm_start src: trained on dataset shapes domain=shapes, seed=1, size=64, "
                                   "train=16, val=8, this run on shapes domain=shapes, seed=0"),
    (["config", json.dumps({**PINS, "SOLVER.IMS_PER_BATCH": 2})],
     "stage1.warm_start src: its trials trained with SOLVER.IMS_PER_BATCH = 2, this run's with 4"),
    (["stage1.fidelity", "supernet"], "stage1.warm_start src: its stage 1 measured with stage1.fidelity supernet, "
                                      "this run's with trials"),
])
def test_a_run_that_measured_something_else_is_refused(tmp_path, drawn, change, message):
    theirs = _exp(tmp_path, *change)
    _run(tmp_path / "src", theirs, [(s, "stage1", "done", BUDGET, 0.1) for s in
                                    sample(_space(theirs), 2, method="uniform", seed=1)])
    exp = _exp(tmp_path, "stage1.warm_start", "[src]")
    with pytest.raises(UserError, match="^" + message.replace("[", r"\[")):
        warm_results(exp, _space(exp), _iters)


def test_another_version_of_the_space_under_the_same_name_is_refused(tmp_path, drawn):
    edited = yaml.safe_load((Path(load_space("fbnetv3is_quick").path)).read_text())
    edited["extends"] = str(Path(load_space("fbnetv3is").path))
    edited["parameters"]["t4.c"] = {"type": "int", "low": 48, "high": 128, "step": 16}
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(edited))
    theirs = _exp(tmp_path, "space", str(tmp_path / "quick.yaml"))
    _run(tmp_path / "src", theirs, [(drawn[0], "stage1", "done", BUDGET, 0.1)])
    exp = _exp(tmp_path, "stage1.warm_start", "[src]")
    with pytest.raises(UserError, match="searched another version of space fbnetv3is_quick"):
        warm_results(exp, _space(exp), _iters)


def test_a_folder_that_is_not_a_run_or_has_nothing_at_this_budget_is_refused(tmp_path, drawn):
    (tmp_path / "empty").mkdir()
    exp = _exp(tmp_path, "stage1.warm_start", "[empty]")
    with pytest.raises(UserError, match=r"^stage1.warm_start empty: not a NARS run folder \(no nars.sqlite\)"):
        warm_results(exp, _space(exp), _iters)
    _run(tmp_path / "longer", exp, [(drawn[0], "stage1", "done", 2 * BUDGET, 0.1)])
    exp["stage1"]["warm_start"] = ["longer"]
    with pytest.raises(UserError, match=r"none of its 1 measured trials trained this run's stage-1 budget \(they "
                                        r"trained \[20\] iterations"):
        warm_results(exp, _space(exp), _iters)


def test_warm_start_is_a_list_of_runs_and_the_cli_sets_it(tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="stage1.warm_start is a list of run folders"):
        load_experiment(DATA / "tiny_search.yaml", ["stage1.warm_start", "[1]"])
    seen = {}

    def fake_search(experiment, overrides, **kwargs):
        seen["exp"] = load_experiment(experiment, overrides)
        raise UserError("stop here")

    monkeypatch.setattr("nars.search.driver.search", fake_search)
    assert main(["search", str(DATA / "tiny_search.yaml"), "--warm-start", "runs/a", "--warm-start", "runs/b"]) == 2
    assert seen["exp"]["stage1"]["warm_start"] == ["runs/a", "runs/b"]
    assert main(["search", "--resume", str(tmp_path), "--warm-start", "runs/a"]) == 2
    assert "give no EXPERIMENT, overrides or --warm-start" in capsys.readouterr().err


def test_round_0_with_warm_results_is_the_predictors_not_sobol(tmp_path):
    exp = _exp(tmp_path)
    space = _space(exp)
    encoder = pretrained_encoder(space, 256, seed=0)
    limits = {"max_mflops": 600.0, "max_params": 2_000_000}
    warm = [{"candidate": s.candidate, "candidate_id": s.id, "metrics": {"segm_AP": 0.01 * math.log(s.mflops)}}
            for s in sample(space, 12, method="uniform", seed=3, **limits)]
    tried = {r["candidate_id"] for r in warm}
    common = dict(constraints={**limits, "max_latency_ms": None}, seed=0, encoder=encoder, pool_size=64, explore=0.5)
    first = propose(space, 0, 4, results=warm, tried=tried, **common)
    assert len(first) == 4 and not {s.id for s in first} & tried
    assert {s.id for s in first} != {s.id for s in sample(space, 4, method="sobol", seed=0, **limits)}
    pool = [s for s in sample(space, 64, method="uniform", seed=0, **limits) if s.id not in tried]
    mean = np.ravel(fit_predictor(space, encoder, warm, seed=0).predict(space.encode([s.candidate for s in pool])))
    assert [s.id for s in first[:2]] == [pool[i].id for i in np.argsort(-mean, kind="stable")[:2]]
    assert [s.id for s in propose(space, 0, 4, results=warm, tried=tried, **common)] == [s.id for s in first]
