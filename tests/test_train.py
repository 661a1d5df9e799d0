"""Training: the loss goes down, a resumed run equals an uninterrupted one, 2 gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from engine_helpers import TINY_TRAIN, data_overrides, make_shapes, one_thread, train_losses
from nars.cli import build_parser, main
from nars.commands.config_args import parse_late_options
from nars.config import load_config
from nars.engine import distributed as comm
from nars.engine.events import EventWriter, read_metrics
from nars.engine.trainer import Trainer, prepare, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", train=4, val=2)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_a_few_iterations_lower_the_loss(shapes, tmp_path):
    cfg = load_config(None, TINY_TRAIN + data_overrides(shapes, test=False) +
                      ["SOLVER.MAX_ITER", "24", "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "4"])
    losses = train_losses(cfg, tmp_path)
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])


def _tensors(obj, prefix=""):
    """Every tensor in a nested checkpoint, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def test_resume_reaches_the_state_of_an_uninterrupted_run(shapes, tmp_path, monkeypatch, capsys):
    args = ["quick_shapes", *TINY_TRAIN, *data_overrides(shapes), "SOLVER.MAX_ITER", "8",
            "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.MAX_TO_KEEP", "1", "MODEL_EMA.ENABLED", "true",
            "MODEL_EMA.DECAY", "0.9", "INPUT.MIN_SIZE_TRAIN", "[56, 64]", "SEED", "-1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", *args, "--out", str(whole)]) == 0

    files = sorted(p.name for p in whole.iterdir() if not p.name.startswith("events."))
    assert files == ["config.yaml", "eval.json", "last_checkpoint", "metrics.jsonl", "model_0000003.pth",
                     "model_final.pth", "per_image.json"]
    val_ids = {str(a["image_id"]) for a in json.loads((shapes / "val.json").read_text())["annotations"]}
    per_image = json.loads((whole / "per_image.json").read_text())["segm_AP"]  # the EMA copy's: what the recipe delivers
    assert set(per_image) == val_ids and all(0.0 <= v <= 1.0 for v in per_image.values())
    assert any(p.name.startswith("events.out.tfevents") for p in whole.iterdir())
    resolved = yaml.safe_load((whole / "config.yaml").read_text())
    assert resolved["SEED"] >= 0 and resolved["SOLVER"]["MAX_ITER"] == 8 and resolved["OUTPUT_DIR"] == str(whole)
    # MODEL_EMA is on (the default): d2go evaluates the weights and their EMA copy
    assert set(json.loads((whole / "eval.json").read_text())) == {"bbox", "segm", "ema_bbox", "ema_segm"}
    assert "segm AP" in capsys.readouterr().out

    step = Trainer.step

    def crash_after_the_checkpoint(self, it, data):
        if it == 6:
            raise KeyboardInterrupt
        return step(self, it, data)

    monkeypatch.setattr(Trainer, "step", crash_after_the_checkpoint)
    pinned = [*args[:-2], "SEED", str(resolved["SEED"])]  # -1 would draw another seed
    capsys.readouterr()
    assert main(["train", *pinned, "--out", str(parts)]) == 130
    assert not (parts / "model_final.pth").exists() and (parts / "model_0000003.pth").exists()
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said == f"nars train: interrupted (SIGINT); continue with: nars train {parts / 'config.yaml'} --out {parts} --resume"
    monkeypatch.setattr(Trainer, "step", step)
    assert main(said.split("continue with: nars ")[1].split()) == 0  # the command it names (the saved config's seed)

    a = torch.load(whole / "model_final.pth", weights_only=True)
    b = torch.load(parts / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 7
    ta, tb = dict(_tensors({k: a[k] for k in ("model", "ema_state", "optimizer")})), \
        dict(_tensors({k: b[k] for k in ("model", "ema_state", "optimizer")}))
    assert ta.keys() == tb.keys() and len(ta) > 100
    assert all(torch.equal(ta[k], tb[k]) for k in ta), [k for k in ta if not torch.equal(ta[k], tb[k])][:5]
    for name in ("eval.json", "per_image.json"):
        assert json.loads((whole / name).read_text()) == json.loads((parts / name).read_text())
    # the resumed run's history continues the interrupted one's (losses average other windows)
    assert [r["iteration"] for r in read_metrics(parts)] == [r["iteration"] for r in read_metrics(whole)]


def test_stopping_at_a_rung_then_resuming_equals_one_run(shapes, tmp_path):
    """Successive halving's rungs: stop_at keeps MAX_ITER's schedule, checkpoints and evaluates
    there, and a resumed run ends where an uninterrupted one does."""
    cfg = load_config("quick_shapes", TINY_TRAIN + data_overrides(shapes) +
                      ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "7", "SEED", "3"])
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    final = train(cfg, whole, progress=False)
    seen: list[int] = []
    rung = train(cfg, parts, progress=False, stop_at=4, on_eval=lambda it, m: seen.append(it))
    assert seen == [3] and rung is not None and (parts / "model_0000003.pth").is_file()
    assert not (parts / "model_final.pth").exists()
    at_rung = json.loads((parts / "per_image.json").read_text())  # what a rung's paired comparison reads
    assert at_rung["iteration"] == 4 and len(at_rung["segm_AP"]) > 0
    assert torch.load(parts / "model_0000003.pth", weights_only=True)["scheduler"]["last_epoch"] == 4
    assert train(cfg, parts, resume=True, progress=False) == final
    assert json.loads((parts / "per_image.json").read_text()) == json.loads((whole / "per_image.json").read_text())
    assert json.loads((whole / "per_image.json").read_text())["iteration"] == 6
    a = torch.load(whole / "model_final.pth", weights_only=True)["model"]
    b = torch.load(parts / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _train_and_dump(cfg: dict, out: str, dump_dir: str) -> None:
    """What ``train`` does in each process, then each process saves its own weights."""
    run = prepare(cfg, out, resume=False, world_size=comm.get_world_size())
    comm.barrier()
    writer = None
    if comm.is_main_process():
        run.out_dir.mkdir()
        writer = EventWriter(run.out_dir)
    Trainer(run, writer, progress=False).train()
    torch.save(run.model.state_dict(), f"{dump_dir}/rank{comm.get_rank()}.pt")


def test_two_gloo_processes_train_with_naive_sync_bn(shapes, tmp_path):
    cfg = load_config("quick_shapes", TINY_TRAIN + data_overrides(shapes) +
                      ["MODEL.FBNET_V2.NORM", "NaiveSyncBN", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4"])
    comm.launch(_train_and_dump, (cfg, str(tmp_path / "run"), str(tmp_path)), 2, torch.device("cpu"))
    final = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)
    assert final["iteration"] == 1 and len(final["rng"]) == 2
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # DDP keeps the weights equal; NaiveSyncBN makes the BN statistics equal although every
    # process saw other images (plain BN, with buffers not broadcast, would differ)
    bn = [k for k in ranks[0] if k.endswith("running_mean")]
    assert bn and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    assert all(torch.equal(ranks[0][k], final["model"][k]) for k in ranks[0])
    assert (tmp_path / "run" / "eval.json").is_file()


@pytest.mark.parametrize("argv", [
    ["train", "--out", "d", "--resume", "cfg", "A.B", "-1"],
    ["train", "cfg", "--out", "d", "--resume", "A.B", "-1"],
    ["train", "cfg", "A.B", "-1", "--resume", "--out", "d"],
])
def test_options_may_come_before_or_after_config(argv):
    args = parse_late_options(build_parser().parse_args(argv))
    assert (args.config, args.out, args.resume, args.num_workers, args.overrides) == ("cfg", "d", True, 1, ["A.B", "-1"])
