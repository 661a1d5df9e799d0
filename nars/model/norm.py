"""Normalization layers by their detectron2/d2go names (``MODEL.FBNET_V2.NORM``).

- ``BN``: ``nn.BatchNorm2d``.
- ``NaiveSyncBN``: detectron2's NaiveSyncBatchNorm, one differentiable all-reduce of
  (mean, mean of squares) across workers; works on CPU (gloo) and CUDA.
- ``SyncBN``: ``nn.SyncBatchNorm`` on CUDA inside a process group; on CPU inside a group
  torch's raises, so it falls back to the NaiveSyncBN computation; plain BN outside one.
- ``GN``: ``nn.GroupNorm``; the group count is ``gcd(NORM_GROUPS, channels)``, so that
  searched widths (multiples of 8) never fail: 32 groups on 64 channels, 8 on 40.
- ``FrozenBN``: torchvision's ``FrozenBatchNorm2d`` (fixed statistics and affine).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from nars.errors import UserError

_ALIASES = {
    "bn": "BN",
    "syncbn": "SyncBN",
    "sync_bn": "SyncBN",
    "naivesyncbn": "NaiveSyncBN",
    "naive_sync_bn": "NaiveSyncBN",
    "gn": "GN",
    "frozenbn": "FrozenBN",
    "frozen_bn": "FrozenBN",
}
NORMS = ("BN", "SyncBN", "NaiveSyncBN", "GN", "FrozenBN")


def canonical_norm(name: str) -> str:
    """``naiveSyncBN`` -> ``NaiveSyncBN``; unknown names are a user error."""
    key = str(name).lower()
    if key not in _ALIASES:
        raise UserError(f"MODEL.FBNET_V2.NORM: unknown normalization {name!r}; expected one of {', '.join(NORMS)}")
    return _ALIASES[key]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) whose backward is again an all-reduce sum (gradients of every rank)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def naive_sync_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """detectron2's NaiveSyncBatchNorm forward in training mode inside a process group.

    Every worker with a non-empty batch weighs the same: exact when all workers see the
    same N, H, W; empty workers (no RoIs) still join the all-reduce. The running variance is updated with the biased variance, as detectron2 does.
    """
    channels = x.shape[1]
    if x.shape[0] > 0:
        vec = torch.cat([x.mean(dim=(0, 2, 3)), (x * x).mean(dim=(0, 2, 3)), x.new_ones(1)])
    else:  # an empty worker (no RoIs) adds nothing but must join the all-reduce and the graph
        vec = x.new_zeros(2 * channels + 1) + x.sum() * 0
    vec = _AllReduceSum.apply(vec)
    workers = vec[-1].clamp(min=1)
    mean, meansqr = vec[:channels] / workers, vec[channels:-1] / workers
    var = meansqr - mean * mean
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean += momentum * (mean.detach() - bn.running_mean)
            bn.running_var += momentum * (var.detach() - bn.running_var)
    invstd = torch.rsqrt(var + bn.eps)
    scale = invstd if bn.weight is None else bn.weight * invstd
    shift = -mean * scale if bn.bias is None else bn.bias - mean * scale
    return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are averaged over all workers (detectron2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        return naive_sync_batch_norm(self, x)


class SyncBatchNorm(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` on CUDA; NaiveSyncBN's all-reduce on CPU, where torch's raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _world_size() > 1 and not x.is_cuda:
            return naive_sync_batch_norm(self, x)
        return super().forward(x)


def group_count(channels: int, groups: int) -> int:
    """GN's documented rule: gcd(NORM_GROUPS, channels) groups, so every width divides."""
    return math.gcd(int(groups), int(channels))


def norm_factory(name: str, groups: int = 32) -> Callable[[int], nn.Module]:
    """A ``channels -> module`` constructor for the named normalization."""
    norm = canonical_norm(name)
    if norm == "GN":
        if groups < 1:
            raise UserError(f"MODEL.FBNET_V2.NORM_GROUPS must be >= 1, got {groups}")
        return lambda c: nn.GroupNorm(group_count(c, groups), c)
    return {
        "BN": nn.BatchNorm2d,
        "SyncBN": SyncBatchNorm,
        "NaiveSyncBN": NaiveSyncBatchNorm,
        "FrozenBN": FrozenBatchNorm2d,
    }[norm]


def freeze_norms(module: nn.Module) -> nn.Module:
    """Replace every batch norm under ``module`` by a FrozenBatchNorm2d with its statistics.

    GroupNorm has no statistics to freeze; its affine parameters just stop learning.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module
