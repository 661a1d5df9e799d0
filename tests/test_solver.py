"""The recipe's pieces on their own: optimizers, LR schedules, clipping, EMA, checkpoints."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from nars.config import load_config
from nars.engine.checkpoint import Checkpointer, capture_rng, periodic_name, restore_rng
from nars.engine.ema import ModelEMA
from nars.engine.solver import build_gradient_clipper, build_lr_scheduler, build_optimizer
from nars.errors import UserError


def solver(*overrides: str) -> dict:
    return load_config(None, list(overrides))["SOLVER"]


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def lrs(scheduler, optimizer, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_cosine_follows_detectron2s_formula():
    s = solver("SOLVER.BASE_LR", "0.1", "SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.001")
    opt = build_optimizer(small_model(), s)
    values = lrs(build_lr_scheduler(opt, s), opt, 100)
    for i, lr in enumerate(values):
        warm = 1.0 if i >= 10 else 0.001 * (1 - i / 10) + i / 10
        assert lr == pytest.approx(0.1 * warm * 0.5 * (1 + math.cos(math.pi * i / 100)))
    assert values[0] == pytest.approx(1e-4)


def test_warmup_multistep_decays_at_steps():
    s = solver("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.BASE_LR", "1.0", "SOLVER.MAX_ITER", "30",
               "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "[10, 20]", "SOLVER.GAMMA", "0.5")
    opt = build_optimizer(small_model(), s)
    values = lrs(build_lr_scheduler(opt, s), opt, 30)
    assert values[9] == 1.0 and values[10] == 0.5 and values[19] == 0.5 and values[20] == 0.25


def test_scheduler_state_restores_the_iteration_and_follows_a_new_max_iter():
    s = solver("SOLVER.BASE_LR", "0.1", "SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "0")
    opt = build_optimizer(small_model(), s)
    sched = build_lr_scheduler(opt, s)
    lrs(sched, opt, 40)
    state = sched.state_dict()
    assert set(state) == {"base_lrs", "last_epoch"}

    longer = {**s, "MAX_ITER": 200}
    opt2 = build_optimizer(small_model(), longer)
    sched2 = build_lr_scheduler(opt2, longer)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 40 / 200)))


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW),
                                       ("rmsprop", torch.optim.RMSprop)])
def test_optimizers_and_norm_weight_decay(name, cls):
    s = solver("SOLVER.OPTIMIZER", name, "SOLVER.MOMENTUM", "0.8", "SOLVER.WEIGHT_DECAY", "0.01",
               "SOLVER.WEIGHT_DECAY_NORM", "0.0")
    model = small_model()
    opt = build_optimizer(model, s)
    assert isinstance(opt, cls)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model[1].weight)] == 0.0 and decay[id(model[0].weight)] == 0.01
    assert len(decay) == sum(1 for _ in model.parameters())
    group = opt.param_groups[0]
    assert group.get("momentum", group.get("betas", (None,))[0]) == 0.8


def test_bad_recipe_values_are_user_errors():
    with pytest.raises(UserError, match="SOLVER.OPTIMIZER: unknown optimizer 'lamb'"):
        build_optimizer(small_model(), solver("SOLVER.OPTIMIZER", "lamb"))
    with pytest.raises(UserError, match="SOLVER.LR_SCHEDULER_NAME"):
        build_lr_scheduler(build_optimizer(small_model(), solver()), solver("SOLVER.LR_SCHEDULER_NAME", "Poly"))
    s = solver("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "[20, 10]")
    with pytest.raises(UserError, match="SOLVER.STEPS must be increasing"):
        build_lr_scheduler(build_optimizer(small_model(), s), s)
    with pytest.raises(UserError, match="CLIP_TYPE"):
        build_gradient_clipper(solver("SOLVER.CLIP_GRADIENTS.ENABLED", "true", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "x"))


@pytest.mark.parametrize("kind", ["value", "norm", "full_model"])
def test_gradient_clipping(kind):
    clip = build_gradient_clipper(solver("SOLVER.CLIP_GRADIENTS.ENABLED", "true", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                                         kind, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.5"))
    a, b = nn.Parameter(torch.zeros(4)), nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((4,), 3.0), torch.full((4,), -2.0)
    clip([a, b])
    if kind == "value":
        assert a.grad.abs().max() == 0.5 and b.grad.abs().max() == 0.5
    elif kind == "norm":
        assert a.grad.norm() == pytest.approx(0.5, rel=1e-4) and b.grad.norm() == pytest.approx(0.5, rel=1e-4)
    else:
        assert torch.cat([a.grad, b.grad]).norm() == pytest.approx(0.5, rel=1e-4)
    assert build_gradient_clipper(solver()) is None


def test_ema_averages_weights_and_swaps_them_in_for_a_block():
    model = small_model()
    ema = ModelEMA(model, decay=0.9)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 3
    ema.update(model)
    torch.testing.assert_close(ema.state["0.weight"], before + 0.1)
    assert ema.state["1.num_batches_tracked"] == 3  # integers are copied
    with ema.applied_to(model):
        torch.testing.assert_close(model[0].weight, before + 0.1)
    torch.testing.assert_close(model[0].weight, before + 1.0)
    other = ModelEMA(small_model(), 0.9)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.state["0.weight"], before + 0.1)
    with pytest.raises(UserError, match="MODEL_EMA.DECAY"):
        ModelEMA(model, 1.0)


def test_checkpointer_keeps_the_last_n_atomically(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    assert ckpt.last() is None
    for it in (9, 19, 29):
        ckpt.save(periodic_name(it), {"iteration": it, "w": torch.ones(2) * it})
    ckpt.save("model_final.pth", {"iteration": 39})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last_checkpoint", "model_0000019.pth", "model_0000029.pth", "model_final.pth"]
    assert ckpt.last() == tmp_path / "model_final.pth"
    assert torch.load(tmp_path / "model_0000029.pth", weights_only=True)["w"][0] == 29
    (tmp_path / "model_final.pth").unlink()
    with pytest.raises(UserError, match="names model_final.pth, which does not exist"):
        ckpt.last()


def test_random_state_round_trip(tmp_path):
    state = capture_rng(torch.device("cpu"))
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    again = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2] == again[2]
