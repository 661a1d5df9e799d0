"""The elastic FBNetV3IS: one set of weights, the space's largest architecture, serving every
architecture of the space as a slice of it (once-for-all, BigNAS).

What a sub-network takes is ``nars.model.inherit``'s mapping with first channels: the first
n blocks of each spec group (depth), the first c channels of every width (the residual
stream, the expanded and the SE widths, kept consistent across every tensor sharing them),
centre-cropped kernels, no SE where the sub-network has none, the RPN and RoI heads sliced
the same way. Pooler resolutions and proposal counts need no weights of their own. So a
sub-network extracted into a plain FBNetV3IS (``extract``) computes exactly what the
supernet computes for it (``forward_child``), and loads like any checkpoint.

Why first channels need an order: a narrower sub-network should keep the channels that
matter. ``sort_channels`` re-sorts each block's expanded and SE channels by importance (the
L1 norm of the weights reading them, as once-for-all ranks them) between training phases,
moving every tensor that shares them and the optimizer's state with them. The residual
stream's channels are not re-sorted (they run through whole stages and into every head); the
sandwich rule's smallest network trains their first channels every step.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch
from torch import nn
from torch.func import functional_call

from nars.model.fbnetv3is import FBNetV3IS
from nars.model.inherit import channel_importance, slices, tensor_roles

_BLOCK = re.compile(r"^(?P<prefix>.*\.fbnetv2_\d+_\d+\.)pw\.conv\.weight$")
_READERS = {"mid": "pwl.conv.weight", "se": "se.se.1.weight"}  # the weights that read each inner width


class ElasticFBNetV3IS(nn.Module):
    """The supernet: ``model`` (an FBNetV3IS of the largest architecture) and the plain
    FBNetV3IS modules of the sub-networks run on its slices (built by ``build`` from a key,
    kept for the ``cache_size`` most recent keys)."""

    def __init__(self, model: FBNetV3IS, cache_size: int = 8):
        super().__init__()
        self.model = model
        self.cache_size = cache_size
        self._children: OrderedDict[Hashable, FBNetV3IS] = OrderedDict()

    def child(self, key: Hashable, build: Callable[[], FBNetV3IS]) -> FBNetV3IS:
        """The sub-network module for ``key`` (its own weights are never used: see ``forward_child``).
        ``build`` runs on a forked random stream: whether a child was cached never changes
        what a training draws next (a resumed run rebuilds them)."""
        if key in self._children:
            self._children.move_to_end(key)
        else:
            with torch.random.fork_rng(devices=[]):
                self._children[key] = build()
            if len(self._children) > self.cache_size:
                self._children.popitem(last=False)
        module = self._children[key]
        module.train(self.training)
        return module

    def state_for(self, child: FBNetV3IS) -> dict[str, torch.Tensor]:
        """The child's parameters as differentiable slices of the supernet's, and its buffers
        as copies (batch norm updates them in place during training: the supernet's running
        statistics are not a sub-network's; zero-shot evaluation recalibrates them)."""
        state = slices(child, self.model)
        buffers = {k for k, _ in child.named_buffers()}
        return {k: (v.detach().clone() if k in buffers else v) for k, v in state.items()}

    def forward_child(self, child: FBNetV3IS, *args: Any) -> Any:
        """``child(*args)`` computed with the supernet's weights: gradients reach the supernet."""
        return functional_call(child, self.state_for(child), args)  # non-persistent buffers (pixel mean, std) stay the child's

    @torch.no_grad()
    def extract(self, child: FBNetV3IS) -> FBNetV3IS:
        """``child`` (in place) holding its slices of the supernet: a standalone FBNetV3IS."""
        child.load_state_dict({k: v.detach().clone() for k, v in slices(child, self.model).items()})
        return child

    @torch.no_grad()
    def sort_channels(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Re-sort every block's expanded and SE channels by importance, most important
        first, in every tensor sharing them (and ``optimizer``'s state of those tensors). The
        supernet computes the same function after it (a permutation). Returns the number of
        blocks whose order changed."""
        tensors = dict(self.model.named_parameters())
        tensors.update(self.model.named_buffers())
        changed = 0
        for key in list(tensors):
            match = _BLOCK.match(key)
            if match is None:  # blocks without pw: their expanded channels are the block's input
                continue
            prefix = match["prefix"]
            for role in ("mid", "se"):
                reader = tensors.get(prefix + _READERS[role])
                if reader is None:
                    continue
                order = torch.argsort(channel_importance(reader), descending=True, stable=True)
                if bool((order == torch.arange(len(order))).all()):
                    continue
                changed += 1
                for name, tensor in tensors.items():
                    if not name.startswith(prefix):
                        continue
                    roles = tensor_roles(name[len(prefix):])
                    if roles is None or name.endswith("num_batches_tracked"):
                        continue
                    for dim in (d for d, r in enumerate(roles) if r == role):
                        _permute(tensor, dim, order, optimizer)
        return changed


def _permute(tensor: torch.Tensor, dim: int, order: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    tensor.copy_(tensor.index_select(dim, order.to(tensor.device)))
    if optimizer is None or not isinstance(tensor, nn.Parameter):
        return
    for value in optimizer.state.get(tensor, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == tensor.shape:
            value.copy_(value.index_select(dim, order.to(value.device)))
