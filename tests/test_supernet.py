"""The weight-sharing supernet: sub-networks are exact slices, training resumes exactly,
zero-shot evaluation is deterministic and survives extraction, bad input is one line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nars.cli import main
from nars.config import load_config
from nars.engine.evaluator import evaluate_checkpoint
from nars.engine.events import read_metrics
from nars.model.elastic import ElasticFBNetV3IS
from nars.model.fbnetv3is import build_model
from nars.search.experiment import load_experiment
from nars.supernet import setup, train, zero_shot
from nars.supernet.subnets import arch_part, complete, largest, sample_archs, smallest, subnet_id
from search_spaces import load_space
from rounding import SAME_FUNCTION

DATA = Path(__file__).parent / "data"
# distillation is off by default; its code path runs in the tiny supernets
TINY = ["supernet.max_iter", "4", "supernet.checkpoint_period", "2", "supernet.sort_period", "2",
        "supernet.calibration_images", "4", "supernet.k", "1", "supernet.distill", "0.5"]


@pytest.fixture(scope="module")
def space_and_configs():
    base = load_config("search_shapes")
    space = load_space("fbnetv3is_finetune").bind(base)
    ref = space.references["FBNetV3_A_dsmask"]

    def cfg(arch):
        c = space.to_config(complete(space, arch, ref), base=base)
        c["INPUT"].update(MIN_SIZE_TEST=64, MAX_SIZE_TEST=64)
        return c
    return space, cfg


def _archs(space):
    return [largest(space), smallest(space)] + sample_archs(space, 3, seed=1)


def _randomized(model):
    """Batch norms with non-trivial statistics and affines, so slicing mistakes show."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen))
    return model


def test_every_subnet_is_an_exact_slice_and_extracts_to_the_same_function(space_and_configs):
    space, cfg = space_and_configs
    torch.manual_seed(0)
    supernet = ElasticFBNetV3IS(_randomized(build_model(cfg(largest(space))))).eval()
    image = [torch.rand(3, 64, 64) * 255]
    for arch in _archs(space):
        child = build_model(cfg(arch)).eval()
        with torch.no_grad():
            shared = supernet.forward_child(child, image)[0]
            alone = supernet.extract(build_model(cfg(arch)).eval())(image)[0]
        assert shared["boxes"].shape[0] > 0
        for key in ("boxes", "scores", "labels", "masks"):  # the same tensors, the same operations: bit for bit
            assert torch.equal(shared[key], alone[key]), key


def test_channel_sorting_keeps_the_function_and_moves_the_optimizer_state(space_and_configs):
    space, cfg = space_and_configs
    torch.manual_seed(0)
    model = _randomized(build_model(cfg(largest(space)))).double().eval()
    supernet = ElasticFBNetV3IS(model)
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        optimizer.state[p] = {"exp_avg": p.detach().clone()}  # state that must follow its weights
    image = [torch.rand(3, 64, 64, dtype=torch.float64) * 255]
    with torch.no_grad():
        before = model.backbone(image[0][None])["trunk3"]
        assert supernet.sort_channels(optimizer) > 0
        after = model.backbone(image[0][None])["trunk3"]
    scale = before.abs().max()
    assert (before - after).abs().max() <= 64 * SAME_FUNCTION * torch.finfo(torch.float32).eps * scale
    for p in model.parameters():
        assert torch.equal(optimizer.state[p]["exp_avg"], p.detach())
    assert supernet.sort_channels(optimizer) == 0  # sorted stays sorted


def test_a_subnet_trains_exactly_its_slice(space_and_configs, tiny_cfg):
    space, cfg = space_and_configs
    torch.manual_seed(0)
    supernet = ElasticFBNetV3IS(build_model(cfg(largest(space)))).train()
    child = build_model(cfg(smallest(space))).train()
    from conftest import make_target

    target = make_target(64, 64, [[8.0, 8.0, 40.0, 50.0]], [1])
    losses = supernet.forward_child(child, [torch.rand(3, 64, 64) * 255], [target])
    sum(losses.values()).backward()
    w = supernet.model.backbone.body.trunk3[0].pw.conv.weight  # expanded width 4 x 56 of 4 x 88 here
    used = child.backbone.body.trunk3[0].pw.conv.weight.shape
    touched = w.grad.abs().sum(dim=(2, 3)) > 0
    assert touched[: used[0], : used[1]].any()
    assert not touched[used[0]:].any() and not touched[:, used[1]:].any()


def _tiny_experiment(tmp_path: Path, *extra: str) -> dict:
    shutil.copy(DATA / "tiny_search.yaml", tmp_path / "tiny.yaml")
    exp = load_experiment(tmp_path / "tiny.yaml", [*TINY, *extra])
    exp["workdir"] = str(tmp_path)
    return exp


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("supernet")
    exp = _tiny_experiment(tmp)
    out = tmp / "sup"
    train.train_supernet(setup.build(exp, out, progress=False), out, progress=False)
    return exp, out


def test_the_anchor_trains_the_parents_architecture_every_step(tmp_path):
    net = setup.build(_tiny_experiment(tmp_path, "supernet.anchor", "true", "supernet.k", "1"), tmp_path / "sup",
                      progress=False)
    trainer = train.SupernetTrainer(net, tmp_path / "sup", resume=False, progress=False)
    parent = arch_part(net.space, net.base)
    assert parent not in (largest(net.space), smallest(net.space))
    for it in (0, 5):
        archs = trainer.sandwich(it)
        assert archs[:3] == [largest(net.space), smallest(net.space), parent] and len(archs) == 4
        assert trainer.sandwich(it) == archs  # every process and a resumed run draw the same
    trainer.anchor = None
    assert parent not in trainer.sandwich(0)[:2] and len(trainer.sandwich(0)) == 3
    net.base = complete(net.space, largest(net.space), net.base)  # a parent that is the largest: trained once
    archs = train.SupernetTrainer(net, tmp_path / "sup", resume=False, progress=False).sandwich(0)
    assert archs == trainer.sandwich(0) and archs.count(largest(net.space)) == 1


def test_an_interrupted_supernet_resumes_to_the_uninterrupted_weights(trained, tmp_path, monkeypatch):
    exp, reference = trained
    exp = {**exp, "workdir": exp["workdir"]}
    out = tmp_path / "sup"
    step = train.SupernetTrainer.step

    def interrupted(self, it, data):
        if it == 3:
            raise KeyboardInterrupt
        return step(self, it, data)

    monkeypatch.setattr(train.SupernetTrainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train_supernet(setup.build(exp, out, progress=False), out, progress=False)
    assert not (out / "model_final.pth").exists() and (out / "model_0000001.pth").exists()
    monkeypatch.setattr(train.SupernetTrainer, "step", step)
    with pytest.raises(Exception, match="not empty"):
        train.train_supernet(setup.build(exp, out, progress=False), out, progress=False)
    train.train_supernet(setup.build(exp, out, progress=False), out, resume=True, progress=False)
    ours, theirs = _weights(out / "model_final.pth"), _weights(reference / "model_final.pth")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    meta = json.loads((out / setup.META_FILE).read_text())
    assert meta["largest"] == largest(setup.build(exp, out, progress=False).space)
    assert [r["iteration"] for r in read_metrics(out)] == [3]  # the interrupted run's lines are not repeated


def test_zero_shot_is_deterministic_and_the_extracted_subnet_evaluates_to_it(trained, tmp_path):
    exp, net_dir = trained
    evaluator = zero_shot.Evaluator(net_dir)
    arch = sample_archs(evaluator.net.space, 1, seed=3)[0]
    first, second = evaluator.evaluate(arch), evaluator.evaluate(arch)
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}
    assert first["id"] == subnet_id(arch) and first["choices"] == arch
    zero_shot.Cache(net_dir).put(evaluator.key(arch), first)
    out = tmp_path / "subnet"
    assert zero_shot.extract(net_dir, first["id"], out) == first
    cfg = load_config(out / "config.yaml")
    metrics = evaluate_checkpoint(cfg, str(out / "model_final.pth")).metrics
    assert metrics["segm"]["AP"] is None or max(metrics["segm"]["AP"], 0.0) == first["segm_AP"]
    assert max(metrics["bbox"]["AP"] or 0.0, 0.0) == first["bbox_AP"]
    with pytest.raises(Exception, match="no evaluated sub-network"):
        zero_shot.extract(net_dir, "0" * 12, tmp_path / "other")


def test_recalibration_replaces_the_supernets_statistics(trained):
    _, net_dir = trained
    evaluator = zero_shot.Evaluator(net_dir)
    arch = smallest(evaluator.net.space)
    _, model = evaluator.subnet(arch)
    raw = evaluator.supernet.extract(build_model(evaluator.net.config(arch)))
    stat = "backbone.body.trunk0.fbnetv2_0_0.bn.running_mean"
    assert not torch.equal(model.state_dict()[stat], raw.state_dict()[stat])
    _, again = evaluator.subnet(arch)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def _one_line(capsys, code, *expected):
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("nars ")]  # dataset summaries aside
    assert code == 2 and len(said) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in said[0]
    return err


def test_bad_supernet_input_is_one_line(trained, tmp_path, capsys, monkeypatch):
    _, net_dir = trained
    monkeypatch.chdir(tmp_path)
    _one_line(capsys, main(["supernet", "eval", str(tmp_path)]), "not a supernet folder")
    _one_line(capsys, main(["supernet", "extract", str(net_dir), "--id", "nope", "--out", str(tmp_path / "x")]),
              "no evaluated sub-network")
    _one_line(capsys, main(["supernet", "train", str(DATA / "tiny_search.yaml")]), "--out")
    _one_line(capsys, main(["supernet", "train", str(DATA / "tiny_search.yaml"), "--out", str(net_dir)]), "not empty")
    _one_line(capsys, main(["supernet", "train", str(DATA / "tiny_search.yaml"), "--out", str(tmp_path / "n"),
                            "supernet.k", "-1"]), "supernet.k")
    _one_line(capsys, main(["supernet", "eval", str(net_dir), "--sample", "0"]), "--sample")
    assert not any(tmp_path.iterdir())  # refused before any data was made


def test_the_commands_train_interrupt_resume_evaluate_and_extract(tmp_path):
    """The CLI end to end: SIGINT stops training with the resume line; the resumed supernet's
    sub-networks are evaluated as Ray tasks into the JSON table; one is extracted and
    ``nars eval`` scores it."""
    shutil.copy(DATA / "tiny_search.yaml", tmp_path / "tiny.yaml")
    nars = [sys.executable, "-m", "nars.cli"]
    out = tmp_path / "sup"
    cmd = nars + ["supernet", "train", "tiny.yaml", "--out", str(out), "supernet.max_iter", "40",
                  "supernet.checkpoint_period", "1", "supernet.calibration_images", "4"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "model_0000000.pth").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"continue with: nars supernet train --out {out} --resume" in err.strip().splitlines()[-1]
    meta = json.loads((out / setup.META_FILE).read_text())
    meta["experiment"]["supernet"]["max_iter"] = 3  # a shorter supernet for the rest of the test
    (out / setup.META_FILE).write_text(json.dumps(meta))
    ckpts = sorted(out.glob("model_0*.pth"))
    assert ckpts
    done = subprocess.run(nars + ["supernet", "train", "--out", str(out), "--resume"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(nars + ["supernet", "eval", str(out), "--sample", "2", "--json", "--num-cpus", "2"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 2 and all(set(r) >= {"id", "choices", "mflops", "params", "bbox_AP", "segm_AP"} for r in rows)
    again = subprocess.run(nars + ["supernet", "eval", str(out), "--sample", "2", "--json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout) == rows and "Ray task" not in again.stderr  # from the cache
    sub = tmp_path / "subnet"
    got = subprocess.run(nars + ["supernet", "extract", str(out), "--id", rows[0]["id"], "--out", str(sub)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    scored = subprocess.run(nars + ["eval", str(sub / "config.yaml"), "--weights", str(sub / "model_final.pth"),
                                    "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    segm = json.loads(scored.stdout)["segm"]["AP"]
    # the Ray task ran with 1 thread, nars eval with its own: the same AP up to a detection
    # whose score rounds across a cut (tests/rounding.py's discrete flips)
    assert abs(max(segm or 0.0, 0.0) - rows[0]["segm_AP"]) <= 0.01


def test_a_search_with_the_supernet_fidelity(tmp_path):
    """stage1.fidelity supernet: the run trains its supernet, stores the zero-shot results of
    the sub-networks it measured (two rounds: random, then the predictor's) before using them, pretrains the predictor on them, and its
    stage-1 trials search recipes on the best zero-shot architectures from the supernet's
    weights; verification starts from the parent as before."""
    from nars.search.driver import search
    from nars.search.store import open_run

    shutil.copy(DATA / "tiny_search.yaml", tmp_path / "tiny.yaml")
    overrides = ["stage1.fidelity", "supernet", "stage1.rounds", "1", "supernet.samples", "4", "supernet.rounds", "2",
                 "stage1.local", "0", *TINY]  # every stage-1 trial from the zero-shot ranking (no local search)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run = search(str(tmp_path / "tiny.yaml"), overrides, out=str(tmp_path / "run"), progress=False)
    finally:
        os.chdir(cwd)
    store = open_run(run)
    try:
        zero, rounds = store.get_meta("zero_shot"), store.get_meta("zero_shot_rounds")
        trials = store.trials()
    finally:
        store.close()
    assert len(zero) == 4 and all(set(z) >= {"id", "choices", "mflops", "segm_AP"} for z in zero)
    assert [len(r) for r in rounds] == [2, 2] and rounds[0] + rounds[1] == zero  # random, then the predictor's picks
    assert (run / "supernet" / "model_final.pth").is_file()
    best = [z["choices"] for z in sorted(zero, key=lambda z: -z["segm_AP"])]
    stage1 = [t for t in trials if t["stage"] == "stage1"]
    space = load_space("fbnetv3is_quick")
    assert [{k: t["candidate"][k] for k in space.arch_names} for t in stage1] == best[: len(stage1)]
    for t in (t for t in stage1 if t["status"] == "done"):
        start = json.loads((run / "trials" / t["id"] / "start_weights.json").read_text())
        assert start["weights"] == str(run / "supernet" / "model_final.pth") and start["mode"] in ("inherit", "load")
    assert any(t["stage"] == "verify" and t["status"] == "done" for t in trials)
