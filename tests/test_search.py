"""nars search end to end on Ray (tiny), resume after SIGKILL, failures, pareto, export.

The end-to-end search runs once per session (a subprocess, killed with SIGKILL mid stage 1
and resumed); the tests below read what it left.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import yaml

from engine_helpers import one_thread
from nars.cli import main
from nars.search.driver import Search, _picks
from nars.search.experiment import EXPERIMENT_DIR, load_experiment
from nars.search.pareto import hypervolume, pareto_mask
from nars.search.stage1 import by_measurement
from nars.search.store import RunStore, load_run
from search_spaces import sample
from search_spaces.sampling import Sample

DATA = Path(__file__).parent / "data"
NARS = [sys.executable, "-m", "nars.cli"]


def _experiment(tmp: Path, **changes: object) -> Path:
    exp = yaml.safe_load((DATA / "tiny_search.yaml").read_text())
    exp["dataset"]["shapes"]["out"] = str(tmp / "shapes")
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            exp[section][name] = value
        else:
            exp[section] = value
    path = tmp / "experiment.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _statuses(run: Path) -> dict[str, str]:
    with sqlite3.connect(run / "nars.sqlite") as db:
        return dict(db.execute("SELECT id, status FROM trials"))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A search killed (SIGKILL) in stage 1 once a trial has finished, then resumed."""
    tmp = tmp_path_factory.mktemp("search")
    exp = _experiment(tmp, **{"verify.rescore": 1, "verify.min_tau": 0.8})
    run = tmp / "run"
    proc = subprocess.Popen([*NARS, "search", str(exp), "--out", str(run)], cwd=tmp, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    before: dict[str, dict] = {}
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        if (run / "nars.sqlite").is_file():
            store = RunStore(run / "nars.sqlite")
            trials = store.trials()
            store.close()
            final = [t for t in trials if t["status"] in ("done", "failed", "pruned")]
            if final and any(t["status"] in ("running", "pending") for t in trials):
                before = {t["id"]: t for t in final}
                os.kill(proc.pid, signal.SIGKILL)  # the driver only, at an arbitrary moment
                break
    proc.wait(timeout=60)
    assert before, f"the search never had a finished trial to kill after: {proc.stderr.read()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # clean up what Ray left of the killed session
    resumed = subprocess.run([*NARS, "search", "--resume", str(run)], cwd=tmp, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"run": run, "tmp": tmp, "before": before, "stdout": resumed.stdout}


def test_resume_after_sigkill_loses_and_repeats_nothing(searched):
    store = RunStore(searched["run"] / "nars.sqlite")
    trials = store.trials()
    state = store.get_meta("state")
    store.close()
    assert state == "finished"
    for tid, old in searched["before"].items():  # finished trials were not trained again
        new = next(t for t in trials if t["id"] == tid)
        assert (new["status"], new["metrics"], new["wall_time"], new["updated"]) == (
            old["status"], old["metrics"], old["wall_time"], old["updated"])
    stage1 = [t for t in trials if t["stage"] == "stage1"]
    assert sorted((t["round"]) for t in stage1) == [0, 0, 1, 1]  # 2 rounds of 2, none duplicated
    assert len({t["candidate_id"] for t in stage1}) == 4
    assert all(t["status"] in ("done", "pruned", "failed") for t in trials)
    assert {t["stage"] for t in trials} == {"stage1", "verify", "reference", "rescore"}


def test_re_scoring_trains_every_finalist_again_with_the_next_seed(searched):
    """verify.rescore 1: the verified candidate and the reference, once more with seed + 1."""
    store = RunStore(searched["run"] / "nars.sqlite")
    trials = store.trials()
    store.close()
    finalists = {t["candidate_id"] for t in trials if t["stage"] in ("verify", "reference") and t["status"] == "done"}
    rescored = [t for t in trials if t["stage"] == "rescore"]
    assert {t["candidate_id"] for t in rescored} == finalists and {t["round"] for t in rescored} == {1}
    for t in rescored:
        assert t["status"] == "done"
        seed = yaml.safe_load((searched["run"] / "trials" / t["id"] / "config.yaml").read_text())["SEED"]
        first = next(f for f in trials if f["candidate_id"] == t["candidate_id"] and f["stage"] in ("verify", "reference"))
        assert seed == 1 and yaml.safe_load((searched["run"] / "trials" / first["id"] / "config.yaml").read_text())["SEED"] == 0
        assert t["max_iter"] == first["max_iter"]


def test_the_winner_is_the_best_mean_over_re_scored_seeds():
    from nars.search.export import pick
    from nars.search.fronts import seed_means

    def trial(cid: str, stage: str, ap: float, round_index: int = 0, status: str = "done") -> dict:
        return {"id": f"{cid}-{stage}-{round_index}", "candidate_id": cid, "stage": stage, "round": round_index,
                "status": status, "metrics": {"segm_AP": ap}, "mflops": 100.0}

    trials = [trial("a", "verify", 0.40), trial("b", "verify", 0.38), trial("r", "reference", 0.39),
              trial("a", "rescore", 0.30, 1), trial("b", "rescore", 0.37, 1), trial("r", "rescore", 0.41, 1),
              trial("b", "rescore", 0.90, 2, "failed"), trial("a", "stage1", 0.99)]
    assert {k: (round(ap, 9), n) for k, (ap, n) in seed_means(trials).items()} == {"a": (0.35, 2), "b": (0.375, 2),
                                                                                 "r": (0.4, 2)}
    assert pick(trials, None, None)["id"] == "b-verify-0"  # the better mean, though a's first seed was higher
    assert pick(trials[:3], None, None)["id"] == "a-verify-0"  # without re-scoring, the one seed decides


def test_every_re_scoring_round_is_stored_once_before_any_trains(tmp_path):
    """verify.rescore 3: three rounds of every finalist, each its own trial (the round is in its
    id; once it was not, and rounds 2 and 3 were dropped as known ids); adding again adds none."""
    exp = load_experiment(_experiment(tmp_path, **{"verify.rescore": 3}))
    exp["workdir"] = str(tmp_path)
    job = Search(exp, tmp_path / "run", progress=False, latency=False)
    (tmp_path / "run").mkdir()
    job.store = RunStore(tmp_path / "run" / "nars.sqlite")
    try:
        a, b = sample(job.space, 2, method="uniform", seed=0)
        job.add({"verify": [a], "reference": [b]}, 0)
        for t in job.store.trials():
            job.store.finish(t["id"], "done", {"segm_AP": 0.3})
        job.add_rescore_rounds()
        job.add_rescore_rounds()
        rescored = job.store.trials(stage="rescore")
    finally:
        job.store.close()
    assert sorted((t["candidate_id"], t["round"]) for t in rescored) == sorted(
        (s.id, j) for s in (a, b) for j in (1, 2, 3))
    assert {t["status"] for t in rescored} == {"pending"}


def test_the_reference_is_stored_first_and_trained_within_stage_1s_first_rung(searched):
    """The incumbent to beat is known before verification: stored before any candidate, done
    before stage 1's round 1 was proposed (it trains beside round 0's first rung)."""
    store = RunStore(searched["run"] / "nars.sqlite")
    trials = store.trials()
    store.close()
    reference = next(t for t in trials if t["stage"] == "reference")
    others = [t for t in trials if t["stage"] != "reference"]
    assert reference["status"] == "done" and reference["reached"] == reference["max_iter"]
    assert reference["created"] <= min(t["created"] for t in others)
    assert reference["updated"] <= min(t["created"] for t in others if t["stage"] == "stage1" and t["round"] == 1)


def test_a_rung_decides_only_once_earlier_rounds_measured_its_fidelity(searched):
    """tiny_search keeps the default gate (min_tau 0.8): round 0 has no earlier trial to measure
    rung 5 with, and round 1's two pairs are too few for a tau, so no rung decides and every
    stage-1 trial trains to its end; the gate is stored with the run and shown in the report."""
    store = RunStore(searched["run"] / "nars.sqlite")
    trials, gate, halving = store.trials(stage="stage1"), store.get_meta("rung_gate"), store.get_meta("halving")
    store.close()
    round0_ended = sum(t["status"] == "done" for t in trials if t["round"] == 0)
    assert gate == {"0": [{"iteration": 5, "pairs": 0, "tau": None, "used": False}],
                    "1": [{"iteration": 5, "pairs": round0_ended, "tau": None, "used": False}]}
    assert not halving
    assert all(t["reached"] == t["max_iter"] for t in trials if t["status"] == "done")
    assert not [t for t in trials if t["status"] == "pruned"]
    out = searched["tmp"] / "report.html"
    assert main(["report", str(searched["run"]), "--out", str(out)]) == 0
    assert "trained through" in out.read_text() and "stage1.early_stop.min_tau" in out.read_text()


def test_verification_trains_the_predictors_front_only_when_the_stored_gate_trusts_it(searched):
    """With verify.min_tau 0.8 (the default; tiny_search turns it off elsewhere) the gate, judged
    on stage 1's 4 results, is stored; what verification trained follows it, and the report says why."""
    store = RunStore(searched["run"] / "nars.sqlite")
    trials, gate, front = store.trials(), store.get_meta("verify_gate"), store.get_meta("stage2_front")
    store.close()
    assert gate["results"] == 4 and gate["min_tau"] == 0.8
    assert gate["trusted"] == (gate["tau"] is not None and gate["tau"] >= 0.8)
    verified = [t["candidate_id"] for t in trials if t["stage"] == "verify"]
    expected = front[0]["id"] if gate["trusted"] else by_measurement([t for t in trials if t["stage"] == "stage1"])[0].id
    assert verified == [expected]
    out = searched["tmp"] / "report-verify.html"
    assert main(["report", str(searched["run"]), "--out", str(out)]) == 0
    assert "verify.min_tau 0.8" in out.read_text()


def test_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, capsys):
    # seed 0's first Sobol pair takes both learning rates of this space: one trial diverges
    exp = _experiment(tmp_path, space=str(DATA / "diverging_space.yaml"), **{"stage1.rounds": 1})
    assert main(["search", str(exp), "--out", str(tmp_path / "run")]) == 0
    store = RunStore(tmp_path / "run" / "nars.sqlite")
    trials, state = store.trials(stage="stage1"), store.get_meta("state")
    store.close()
    assert state == "finished"
    failed = [t for t in trials if t["status"] == "failed"]
    assert [t["candidate"]["lr"] for t in failed] == [1000000.0]
    assert "the recipe diverged" in failed[0]["error"]
    assert any(t["status"] in ("done", "pruned") for t in trials)


def test_store_contents_as_dataframes(searched):
    run = load_run(searched["run"])
    trials, history, meta = run["trials"], run["history"], run["meta"]
    assert {"id", "stage", "round", "candidate", "status", "history", "metrics", "mflops", "params", "wall_time",
            "error", "segm_AP", "bbox_AP"} <= set(trials.columns)
    done = trials[trials.status == "done"]
    assert (done.segm_AP >= 0).all() and (done.mflops > 0).all() and (done.params > 0).all()
    assert set(history.id) <= set(trials.id) and (history.iteration > 0).all()
    assert {"experiment", "seed", "state", "stage2_front"} <= set(meta.key)
    with sqlite3.connect(searched["run"] / "nars.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stored_costs_are_those_of_each_trials_own_config(searched, capsys):
    """The experiment pins a 64 px input over the space's 128 px: the store must hold the cost
    `nars model info` reports for the config each trial trained, not the space template's."""
    store = RunStore(searched["run"] / "nars.sqlite")
    trials = store.trials()
    store.close()
    checked = 0
    for t in trials:
        config = searched["run"] / "trials" / t["id"] / "config.yaml"
        if not config.is_file():
            continue
        assert main(["model", "info", str(config), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["mflops"]["input_size"] == [64, 64]
        assert t["mflops"] == pytest.approx(info["mflops"]["total"], abs=1e-3)  # info rounds to 3 decimals
        assert t["params"] == info["params"]["total"]
        checked += 1
    assert checked >= 4


def test_a_search_from_a_parent_trains_it_once_and_every_trial_inherits(tmp_path, capsys):
    """parent.config trains the parent into parent.weights (cached); every trial starts from it:
    the reference and the recipe stage's trials (the parent's own arch) load it whole, the others
    inherit part of it. The recipe stage trains before stage 1, at the reference's budget, and
    its best (the tuned parent) is round 0's local-search incumbent. Stage 1's rung compares its
    two trials image by image (``wilcoxon_p``) before it decides."""
    from nars.config import dump, load_config
    from search_spaces import load_space

    config = tmp_path / "parent.yaml"
    config.write_text(dump(load_config("search_shapes", [
        "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "64", "INPUT.MAX_SIZE_TRAIN", "64",
        "DATASETS.TEST.JSON", "''"])))
    parent = {"weights": str(tmp_path / "parent"), "arch": "", "config": str(config),
              "shapes": {"out": str(tmp_path / "parent_shapes"), "train": 4, "val": 2, "size": 64, "seed": 1}}
    early_stop = {"grace_period": 5, "reduction_factor": 2, "min_tau": None, "wilcoxon_p": 0.5}
    exp = _experiment(tmp_path, parent=parent, recipe={"trials": 2},
                      **{"stage1.rounds": 1, "stage1.local": 0.5, "stage1.early_stop": early_stop})
    assert main(["search", str(exp), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "parent" / "model_final.pth").is_file()
    store = RunStore(tmp_path / "run" / "nars.sqlite")
    trials, halving, paired = store.trials(), store.get_meta("halving"), store.get_meta("halving_paired")
    store.close()
    stage1 = {t["id"] for t in trials if t["stage"] == "stage1"}
    kept, compared = halving["0"][0], paired["0"][0]  # round 0, its one deciding rung (5 of 10 iterations)
    assert len(stage1) == 2 and (stage1 - set(compared)) <= set(kept)  # the leader goes on
    for tid, d in compared.items():  # the other one, compared on the validation images at the rung
        assert d is not None and d["images"] >= 5
        assert (tid in kept) == (not (d["mean"] < 0 and d["p"] < early_stop["wilcoxon_p"]))
    assert {t["stage"] for t in trials} == {"stage1", "verify", "reference", "recipe"}
    parents = [t for t in trials if t["stage"] in ("reference", "recipe")]
    reference = parents[0]
    assert len(parents) == 3 and len({t["candidate_id"] for t in parents}) == 3
    arch = load_space("fbnetv3is_quick").arch_names
    for t in parents:  # the parent's architecture, other recipes, the reference's budget, before stage 1
        assert {k: v for k, v in t["candidate"].items() if k in arch} == \
            {k: v for k, v in reference["candidate"].items() if k in arch}
        assert t["max_iter"] == reference["max_iter"] and t["status"] == "done"
        both = set(t["candidate"]) & set(reference["candidate"])  # (a choice may switch a conditional one besides)
        assert len([k for k in both if t["candidate"][k] != reference["candidate"][k]]) <= 2
        assert t["updated"] <= min(s["created"] for s in trials if s["stage"] == "stage1")
    best = max(parents, key=lambda t: (t["metrics"]["segm_AP"], t["stage"] == "reference"))
    tuned = best["candidate"]
    from nars.search.fronts import fronts

    shown = fronts(tmp_path / "run")["tuned"]  # the tuned parent, when a recipe beat the reference's
    assert (shown and shown["trial"]) == (best["id"] if best["stage"] == "recipe" else None)
    first = next(t["candidate"] for t in trials if t["stage"] == "stage1")
    assert 1 <= sum(first[k] != v for k, v in tuned.items()) <= 2  # a neighbour of the tuned parent
    for t in trials:  # pruned trials' folders stay in Ray's storage (their checkpoint), done ones are in the run
        folder = tmp_path / "run" / "trials" / t["id"] if t["status"] == "done" else Path(t["checkpoint"])
        start = json.loads((folder / "start_weights.json").read_text())
        assert start["weights"] == str(tmp_path / "parent" / "model_final.pth")
        if t["stage"] == "reference" or (t["stage"] == "recipe" and t["candidate"]["norm"] == "BN"):
            assert start["mode"] == "load" and start["fraction"] == 1.0
        else:
            assert start["mode"] == "inherit" and 0 < start["fraction"] <= 1
        if t["status"] in ("done", "pruned"):
            assert t["metrics"]["inherited"] == start["fraction"]


def test_pareto_json_and_plot(searched, capsys):
    png = searched["tmp"] / "front.png"
    assert main(["pareto", str(searched["run"]), "--json", "--plot", str(png)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all({"id", "segm_AP", "bbox_AP", "mflops", "params"} <= set(r) for r in rows)
    assert all(r["latency_ms"] is None for r in rows)  # a search without latency predicts none
    assert main(["pareto", str(searched["run"]), "--x", "latency"]) == 2
    assert "the run has no latencies" in capsys.readouterr().err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_then_train_and_eval_the_export(searched, capsys):
    out = searched["tmp"] / "exported"
    assert main(["export", str(searched["run"]), "--best", "--out", str(out), "--onnx"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"metrics", "mflops", "params", "candidate", "provenance", "onnx"} <= set(summary)
    assert (out / "model.onnx").is_file() and {"detections", "labels_equal", "box_px", "mask_iou"} <= set(summary["onnx"])
    assert summary["stage"] == "verify"
    assert main(["export", str(searched["run"]), "--best", "--out", str(out)]) == 2  # never overwrites
    capsys.readouterr()
    # The trial evaluated these weights with Ray's thread count (OMP_NUM_THREADS, else its one
    # CPU); with the same count here it is the same computation, so the AP is equal, where
    # other kernels could move a near-tied detection (COCO AP is not continuous in scores).
    with nullcontext() if "OMP_NUM_THREADS" in os.environ else one_thread():
        assert main(["eval", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["segm"]["AP"] == summary["metrics"]["segm_AP"]
    retrain = searched["tmp"] / "retrain"
    assert main(["train", str(out / "config.yaml"), "--out", str(retrain), "SOLVER.MAX_ITER", "4"]) == 0
    assert (retrain / "model_final.pth").is_file()


def test_a_latency_search_stores_predicted_and_measured_latency_and_pareto_shows_them(tmp_path, capsys, monkeypatch):
    """max_latency_ms and stage2.objective latency, timed as an int8 deployment runs
    (latency.engine onnxruntime-int8): the predictor is fitted on measured candidates (cached
    per machine and engine, kept in the run), every trial stores its predicted latency,
    verified ones their measured latency too, and nars pareto shows both with the engine."""
    monkeypatch.setenv("NARS_CACHE", str(tmp_path / "cache"))
    limit = 1000.0
    exp = _experiment(tmp_path, constraints={"max_latency_ms": limit},
                      latency={"samples": 4, "threads": 1, "engine": "onnxruntime-int8"},
                      **{"stage1.rounds": 1, "stage2.objective": "latency"})
    run = tmp_path / "run"
    assert main(["search", str(exp), "--out", str(run)]) == 0
    measured = json.loads((run / "latency.json").read_text())
    assert len(measured) == 4 and {m["engine"] for m in measured} == {"onnxruntime-int8"}
    assert [p.name for p in (tmp_path / "cache" / "latency").glob("*.json")][0].count("-onnxruntime-int8-") == 1
    store = RunStore(run / "nars.sqlite")
    trials, front = store.trials(), store.get_meta("stage2_front")
    store.close()
    assert all(0 < t["latency_ms"] <= limit for t in trials if t["stage"] != "reference")
    assert all(0 < p["latency_ms"] <= limit for p in front)
    verified = [t for t in trials if t["stage"] in ("verify", "reference") and t["status"] == "done"]
    assert verified and all(t["measured_latency_ms"] > 0 for t in verified)
    capsys.readouterr()
    png = tmp_path / "front.png"
    assert main(["pareto", str(run), "--json", "--x", "latency", "--plot", str(png)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["latency_ms"] > 0 and r["measured_latency_ms"] > 0 for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["pareto", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "pred ms" in printed and "latencies: onnxruntime-int8 (latency.engine)" in printed


def test_every_trial_of_a_round_failing_stops_with_the_first_error(tmp_path, capsys):
    exp = _experiment(tmp_path, config={"MODEL.WEIGHTS": str(tmp_path / "missing.pth")},
                      **{"stage1.rounds": 1})
    code = main(["search", str(exp), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "every trial of stage 1 round 1 failed; the first error:" in err and "missing.pth" in err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"stage1": {"roundz": 2}}, "unknown experiment key stage1.roundz; did you mean stage1.rounds?"),
        ({"space": "no_such_space"}, "space no_such_space: no such file"),
        ({"constraints": {"max_mflops": 1.0}}, "drawn candidates meet MFLOPs <= 1 "),
        ({"constraints": {"max_latency_ms": -5.0}}, "constraints.max_latency_ms must be > 0 (milliseconds), got -5.0"),
        ({"constraints": {"max_latency_ms": "fast"}}, "constraints.max_latency_ms expects number or NoneType"),
        ({"stage1": {"early_stop": {"grace_period": 5, "reduction_factor": 2, "min_tau": 1.5}}},
         "stage1.early_stop.min_tau must be in [-1, 1] (a Kendall tau) or null, got 1.5"),
        ({"verify": {"min_tau": -2}}, "verify.min_tau must be in [-1, 1] (a Kendall tau) or null, got -2"),
        ({"stage1": {"early_stop": {"grace_period": 5, "reduction_factor": 2, "wilcoxon_p": 0.0}}},
         "stage1.early_stop.wilcoxon_p must be in (0, 1] (a p-value) or null, got 0.0"),
        ({"stage2": {"objective": "speed"}}, "stage2.objective must be one of mflops, latency, got 'speed'"),
        ({"latency": {"engine": "tvm"}},
         "latency.engine must be one of torch, onnxruntime, onnxruntime-int8, got 'tvm'"),
        ({"dataset": {"shapes": {"out": ""}, "train": {"json": "/nope/train.json", "images": "/nope"},
                      "val": {"json": "/nope/val.json", "images": "/nope"}}}, "dataset.train.json: /nope/train.json does not exist"),
        ({"ray": {"address": "127.0.0.1:9"}}, "ray.address 127.0.0.1:9: nothing answers there"),
        ({"parent": {"weights": "/nope/parent"}}, "parent.weights: MODEL.WEIGHTS: checkpoint file /nope/parent"),
        ({"parent": {"weights": str(DATA / "tiny_search.yaml")}}, "tiny_search.yaml: not a readable PyTorch checkpoint"),
    ],
)
def test_bad_experiments_give_one_line_and_write_nothing(tmp_path, capsys, change, message):
    exp = yaml.safe_load((DATA / "tiny_search.yaml").read_text())
    exp["dataset"]["shapes"]["out"] = str(tmp_path / "shapes")
    for section, value in change.items():
        exp[section] = {**exp[section], **value} if isinstance(value, dict) and isinstance(exp.get(section), dict) else value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(exp))
    code = main(["search", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_a_parent_of_unknown_architecture_is_refused(tmp_path, capsys):
    import torch

    torch.save({"model": {"backbone.body.trunk0.fbnetv2_0_0.conv.weight": torch.zeros(16, 3, 3, 3)}}, tmp_path / "p.pth")
    exp = _experiment(tmp_path, parent={"weights": str(tmp_path / "p.pth")})
    assert main(["search", str(exp), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not say which architecture it is of; set parent.arch" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml")))
def test_shipped_experiments_load_with_feasible_constraints(name):
    from nars.config import load_config
    from search_spaces import load_space

    exp = load_experiment(name)
    space = load_space(exp["space"]).bind(load_config(exp["base_config"]), exp["config"])
    assert len(sample(space, 4, **exp["constraints"])) == 4
    if exp["parent"]["config"]:
        assert load_config(exp["parent"]["config"])["MODEL"]["FBNET_V2"]["ARCH"] == exp["verify"]["reference"]


def test_a_non_empty_out_folder_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("precious")
    code = main(["search", str(DATA / "tiny_search.yaml"), "--out", str(tmp_path / "run")])
    assert code == 2 and "is not empty" in capsys.readouterr().err
    assert (tmp_path / "run" / "keep.txt").read_text() == "precious"


def test_pareto_mask_and_hypervolume():
    assert pareto_mask([0.5, 0.4, 0.6, 0.3], [100, 50, 200, 60]).tolist() == [True, True, True, False]
    assert hypervolume([0.5, 0.4, 0.6], [100, 50, 200], ref_cost=300) == pytest.approx(130.0)
    assert hypervolume([0.5], [400], ref_cost=300) == 0.0


def test_store_requeues_interrupted_trials(tmp_path):
    store = RunStore(tmp_path / "nars.sqlite")
    store.add_trials([{"id": f"t{i}", "candidate_id": f"c{i}", "stage": "stage1", "round": 0, "candidate": {"a": i}}
                      for i in range(3)])
    store.add_trials([{"id": "t0", "candidate_id": "c0", "stage": "stage1", "round": 0, "candidate": {"a": 9}}])
    store.append_history("t0", {"iteration": 5, "segm_AP": 0.1})
    store.finish("t0", "done", {"segm_AP": 0.2}, wall_time=3.0)
    store.append_history("t1", {"iteration": 5, "segm_AP": 0.1})
    assert store.requeue_interrupted() == 1
    rows = {t["id"]: t for t in store.trials()}
    assert rows["t0"]["candidate"] == {"a": 0} and rows["t0"]["status"] == "done"
    assert rows["t1"]["status"] == "pending" and rows["t1"]["history"] == []
    with pytest.raises(ValueError):
        store.finish("t2", "running")
    store.close()


def test_trials_stretch_the_recipe_schedule_to_their_budget(tmp_path):
    """Warmup and the EMA's horizon keep their share of training at every budget; the pick and
    the reference train the same number of iterations."""
    exp = load_experiment(_experiment(tmp_path, **{"stage1.max_iter": 10, "verify.max_iter": 40}))
    job = Search({**exp, "workdir": str(tmp_path)}, tmp_path / "run", progress=False)
    candidate = {**sample(job.space, 1, seed=0)[0].candidate, "warmup_iters": 100, "ema": True, "ema_decay": 0.99}
    recipe = job.space.to_config(candidate, base=job.base)
    assert (recipe["SOLVER"]["MAX_ITER"], recipe["MODEL_EMA"]["DECAY"]) == (400, 0.99)
    for stage, iters, warmup in (("stage1", 10, 2), ("verify", 40, 10)):
        cfg = job.trial_config(candidate, stage)
        assert (cfg["SOLVER"]["MAX_ITER"], cfg["SOLVER"]["WARMUP_ITERS"]) == (iters, warmup)
        assert cfg["MODEL_EMA"]["DECAY"] ** iters == pytest.approx(0.99**400)  # initial weights' final share
    reference = job.space.references[exp["verify"]["reference"]]
    assert job.trial_config(reference, "reference")["SOLVER"]["MAX_ITER"] == 40


def test_verification_picks_the_best_predicted_the_incumbent_then_a_spread():
    front = [Sample({}, f"f{i}", m, 1) for i, m in enumerate([90, 50, 70, 60, 80])]  # best predicted first
    incumbent = Sample({}, "s1", 230, 1)
    assert [p.id for p in _picks(front, incumbent, 1)] == ["f0"]
    assert [p.id for p in _picks(front, incumbent, 2)] == ["f0", "s1"]
    assert [p.id for p in _picks(front, incumbent, 4)] == ["f0", "s1", "f1", "f2"]  # MFLOPs 50, then 70
    assert [p.id for p in _picks(front, None, 3)] == ["f0", "f1", "f2"]
    assert [p.id for p in _picks(front, front[0], 2)] == ["f0", "f1"]  # the incumbent is on the front already
    assert len(_picks(front, incumbent, 9)) == 6


def test_a_runs_measured_trials_are_a_predictor_table(searched):
    """``nars predictor eval RUN`` reads a run through the store (predictor/ never imports
    nars.search): every measured trial becomes a row, and the canonical candidates are the
    stored ones."""
    from nars.search.store import measured_trials
    from predictor import read_table
    from search_spaces import load_space

    trials = load_run(searched["run"])["trials"]
    measured = trials[trials["status"].isin(["done", "pruned"]) & trials["segm_AP"].notna() & trials["bbox_AP"].notna()]
    candidates, metrics = read_table(measured_trials(searched["run"]), load_space("fbnetv3is_quick"), name="run")
    assert len(candidates) == len(measured) > 0 and metrics.shape == (len(measured), 2)
    assert metrics[:, 0].tolist() == pytest.approx(measured["segm_AP"].tolist())


def test_a_warm_started_search_starts_from_an_earlier_runs_trials(searched, tmp_path):
    """``--warm-start RUN``: the earlier run's measured stage-1 trials (same space, same shapes
    data at another path) feed the predictor from round 0, which proposes none of them again."""
    exp = _experiment(tmp_path, **{"stage1.rounds": 1})
    run = tmp_path / "warm"
    assert main(["search", str(exp), "--out", str(run), "--warm-start", str(searched["run"])]) == 0
    store = RunStore(run / "nars.sqlite")
    warm, trials = store.get_meta("warm_results"), store.trials(stage="stage1")
    store.close()
    earlier = {t["candidate_id"] for t in load_run(searched["run"])["trials"].to_dict("records") if t["stage"] == "stage1"}
    assert warm and {w["candidate_id"] for w in warm} <= earlier
    assert trials and not {t["candidate_id"] for t in trials} & earlier
