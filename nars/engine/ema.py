"""``MODEL_EMA``: an exponential moving average of the weights, which evaluation uses.

As d2go's ModelEMA: after every optimizer step each floating-point tensor of the model's
state dict (parameters and BN statistics) moves to ``decay * ema + (1 - decay) * value``;
integer buffers (``num_batches_tracked``) are copied. The flat ``{name: tensor}`` dict is what
checkpoints store under ``"ema_state"``, as d2go's do, so ``nars.model.weights`` loads it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from nars.errors import UserError


class ModelEMA:
    """The averaged copy of ``model``'s state dict (the model itself, not a DDP wrapper)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise UserError(f"MODEL_EMA.DECAY must be in [0, 1), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            ema = self.state[key]
            if ema.is_floating_point():
                ema.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                ema.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self.state):
            raise UserError("ema_state of the checkpoint does not match the model's keys")
        for key, value in state.items():
            self.state[key].copy_(value)

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` carries the averaged weights inside the block, its own ones after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(own)
