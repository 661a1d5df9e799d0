"""The training recipe's optimizer, learning-rate schedule and gradient clipping (``SOLVER.*``).

Semantics are detectron2's, so that d2go recipes mean the same here:

- Parameters of normalization layers get ``WEIGHT_DECAY_NORM``, all others ``WEIGHT_DECAY``.
- ``OPTIMIZER``: ``sgd`` (``MOMENTUM``), ``adamw`` (``MOMENTUM`` is beta1, beta2 = 0.999,
  decoupled weight decay) or ``rmsprop`` (``MOMENTUM``; smoothing 0.9 and eps 1e-3 as in
  the TensorFlow-style RMSProp recipes of EfficientNet and FBNetV3, not torch's 0.99 / 1e-8).
- The learning rate at iteration i is ``BASE_LR * warmup(i) * decay(i)``. ``warmup`` rises
  linearly from ``WARMUP_FACTOR`` at 0 to 1 at ``WARMUP_ITERS``; ``decay`` is
  ``0.5 * (1 + cos(pi * i / MAX_ITER))`` for ``WarmupCosineLR`` and ``GAMMA ** (number of
  STEPS <= i)`` for ``WarmupMultiStepLR``. Both are closed forms of i, so a resumed run
  only needs the iteration; and a resumed run with a longer ``MAX_ITER`` follows the new one.
- ``CLIP_GRADIENTS`` (detectron2's sub-config, off by default): ``CLIP_TYPE`` ``value``
  clamps every gradient element to +-``CLIP_VALUE``; ``norm`` scales each parameter's
  gradient to ``NORM_TYPE``-norm at most ``CLIP_VALUE``; ``full_model`` does so for all
  gradients together.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from nars.errors import UserError

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
SCHEDULERS = ("WarmupCosineLR", "WarmupMultiStepLR")
CLIP_TYPES = ("value", "norm", "full_model")
RMSPROP_ALPHA, RMSPROP_EPS, ADAMW_BETA2 = 0.9, 1e-3, 0.999

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: those of normalization layers, and the rest."""
    norm, other, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm if isinstance(module, _NORM_TYPES) else other).append(p)
    groups = [{"params": other, "weight_decay": weight_decay}, {"params": norm, "weight_decay": weight_decay_norm}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, solver: Mapping[str, Any]) -> Optimizer:
    """``SOLVER.OPTIMIZER`` over ``model``'s trainable parameters."""
    name = str(solver["OPTIMIZER"]).lower()
    lr, momentum = solver["BASE_LR"], solver["MOMENTUM"]
    _require(name in OPTIMIZERS, f"SOLVER.OPTIMIZER: unknown optimizer {solver['OPTIMIZER']!r}; "
             f"expected one of {', '.join(OPTIMIZERS)}")
    _require(lr > 0, f"SOLVER.BASE_LR must be > 0, got {lr}")
    _require(0 <= momentum < 1, f"SOLVER.MOMENTUM must be in [0, 1), got {momentum}")
    for key in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM"):
        _require(solver[key] >= 0, f"SOLVER.{key} must be >= 0, got {solver[key]}")
    groups = param_groups(model, solver["WEIGHT_DECAY"], solver["WEIGHT_DECAY_NORM"])
    _require(bool(groups), "the model has no trainable parameters (check MODEL.BACKBONE.FREEZE_AT)")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, ADAMW_BETA2))
    return torch.optim.RMSprop(groups, lr=lr, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS, momentum=momentum)


class WarmupLR(LRScheduler):
    """``base_lr * warmup(i) * decay(i)``, stepped once per iteration; subclasses give ``decay``.

    ``state_dict`` keeps only the iteration and base learning rates (as detectron2's
    LRMultiplier does): the schedule's shape comes from the config, also on resume.
    """

    def __init__(self, optimizer: Optimizer, max_iter: int, warmup_iters: int, warmup_factor: float):
        self.max_iter, self.warmup_iters, self.warmup_factor = max_iter, warmup_iters, warmup_factor
        super().__init__(optimizer)

    def warmup(self, it: int) -> float:
        if it >= self.warmup_iters:
            return 1.0
        alpha = it / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def decay(self, it: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:  # type: ignore[override]
        factor = self.warmup(self.last_epoch) * self.decay(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the iteration and set the optimizer's learning rates for it (call after
        the optimizer's own ``load_state_dict``)."""
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class WarmupCosineLR(WarmupLR):
    """Half a cosine from 1 at iteration 0 to 0 at ``max_iter``."""

    def decay(self, it: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * it / self.max_iter))


class WarmupMultiStepLR(WarmupLR):
    """Multiplied by ``gamma`` at each of ``steps``."""

    def __init__(self, optimizer: Optimizer, max_iter: int, warmup_iters: int, warmup_factor: float,
                 steps: list[int], gamma: float):
        self.steps, self.gamma = list(steps), gamma
        super().__init__(optimizer, max_iter, warmup_iters, warmup_factor)

    def decay(self, it: int) -> float:
        return self.gamma ** bisect.bisect_right(self.steps, it)


def build_lr_scheduler(optimizer: Optimizer, solver: Mapping[str, Any]) -> WarmupLR:
    """``SOLVER.LR_SCHEDULER_NAME`` with its warmup; validates the schedule keys."""
    name, max_iter = solver["LR_SCHEDULER_NAME"], solver["MAX_ITER"]
    warmup_iters, warmup_factor = solver["WARMUP_ITERS"], solver["WARMUP_FACTOR"]
    _require(name in SCHEDULERS, f"SOLVER.LR_SCHEDULER_NAME: unknown scheduler {name!r}; "
             f"expected one of {', '.join(SCHEDULERS)}")
    _require(max_iter >= 1, f"SOLVER.MAX_ITER must be >= 1, got {max_iter}")
    _require(warmup_iters >= 0, f"SOLVER.WARMUP_ITERS must be >= 0, got {warmup_iters}")
    _require(0 <= warmup_factor <= 1, f"SOLVER.WARMUP_FACTOR must be in [0, 1], got {warmup_factor}")
    if name == "WarmupCosineLR":
        return WarmupCosineLR(optimizer, max_iter, warmup_iters, warmup_factor)
    steps, gamma = solver["STEPS"], solver["GAMMA"]
    _require(all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps)
             and list(steps) == sorted(steps), f"SOLVER.STEPS must be increasing positive integers, got {steps}")
    _require(gamma > 0, f"SOLVER.GAMMA must be > 0, got {gamma}")
    if any(s >= max_iter for s in steps):
        logger.warning("SOLVER.STEPS %s: steps at or after SOLVER.MAX_ITER %d never happen", steps, max_iter)
    return WarmupMultiStepLR(optimizer, max_iter, warmup_iters, warmup_factor, steps, gamma)


GradientClipper = Callable[[Iterable[torch.Tensor]], None]


def build_gradient_clipper(solver: Mapping[str, Any]) -> GradientClipper | None:
    """``SOLVER.CLIP_GRADIENTS`` as a function of the parameters, or None when disabled."""
    clip = solver["CLIP_GRADIENTS"]
    if not clip["ENABLED"]:
        return None
    kind, value, norm_type = clip["CLIP_TYPE"], clip["CLIP_VALUE"], clip["NORM_TYPE"]
    _require(kind in CLIP_TYPES, f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE: unknown {kind!r}; expected one of "
             f"{', '.join(CLIP_TYPES)}")
    _require(value > 0, f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0, got {value}")
    _require(norm_type > 0, f"SOLVER.CLIP_GRADIENTS.NORM_TYPE must be > 0, got {norm_type}")

    def clip_gradients(params: Iterable[torch.Tensor]) -> None:
        with_grad = [p for p in params if p.grad is not None]
        if kind == "value":
            torch.nn.utils.clip_grad_value_(with_grad, value)
        elif kind == "norm":
            for p in with_grad:
                torch.nn.utils.clip_grad_norm_(p, value, norm_type)
        else:
            torch.nn.utils.clip_grad_norm_(with_grad, value, norm_type)

    return clip_gradients
