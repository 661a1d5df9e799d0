"""FBNetV3IS for inference: batch norms folded into convolutions, upsampling blocks
computed at their input's resolution.

At test time a batch norm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with scaled weights and a bias (``torch.nn.utils.fusion``). Folding removes
one memory pass per norm (FBNetV3A has about 100) and is what an exported model should
carry. Only norms whose statistics are fixed fold: BatchNorm in eval mode (BN, SyncBN,
NaiveSyncBN) and FrozenBatchNorm2d; GroupNorm normalises by each input's own statistics
and stays. Blocks that upsample (the mask head's) become :class:`SubpixelUpsampleBlock`.
Outputs change only by float32 rounding (tests/test_fuse.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from nars.model.blocks import ConvNormAct, InvertedResidual

FOLDABLE = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def fold_norm(block: ConvNormAct) -> bool:
    """Fold ``block.bn`` into ``block.conv`` in place (the norm becomes an Identity);
    False when the block has no foldable norm."""
    bn = getattr(block, "bn", None)
    if not isinstance(bn, FOLDABLE):
        return False
    conv = block.conv
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    conv.weight, conv.bias = weight, bias
    block.bn = nn.Identity()
    return True


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every foldable norm folded (in place); returned for chaining.

    The model can no longer train: its norms are gone (fold a copy to keep the original)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            fold_norm(module)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, InvertedResidual) and child.upsample is not None and child.se is None:
                setattr(parent, name, SubpixelUpsampleBlock(child))
    return model


def _phase_taps(kernel: int) -> tuple[int, list[list[tuple[int, int]]]]:
    """For a ``kernel``-wide conv after 2x nearest upsampling: the half-width ``q`` of the
    equivalent kernel on the input, and for each output phase (0: even, 1: odd rows) the
    (input tap, original tap) pairs. Upsampled row ``2i + a + t`` is input row
    ``i + floor((a + t) / 2)``."""
    p = kernel // 2
    offsets = {a: [((a + t) // 2, t + p) for t in range(-p, p + 1)] for a in (0, 1)}
    q = max(abs(o) for pairs in offsets.values() for o, _ in pairs)
    return q, [[(o + q, k) for o, k in offsets[a]] for a in (0, 1)]


class SubpixelUpsampleBlock(nn.Module):
    """An inverted residual that upsamples (``pw -> 2x nearest -> dw -> pwl``), computed at
    its input's resolution: for each of the four output phases, a depthwise conv whose
    kernel sums the taps that land on the same input pixel, then ``pwl``; the phases are
    interleaved last, on ``pwl``'s narrower output. Equal to the block up to float rounding,
    without the upsampled ``mid``-channel tensors (d2go's mask head upsamples 768 and 384
    channels to 14x14 and 28x28: most of its memory traffic)."""

    def __init__(self, block: InvertedResidual):
        super().__init__()
        self.pw = block.pw
        dw = block.dw.conv
        channels, kernel = dw.weight.shape[0], dw.weight.shape[-1]
        q, taps = _phase_taps(kernel)
        weight = dw.weight.new_zeros(4, channels, 1, 2 * q + 1, 2 * q + 1)
        for a in (0, 1):
            for b in (0, 1):
                for u, ki in taps[a]:
                    for v, kj in taps[b]:
                        weight[2 * a + b, :, :, u, v] += dw.weight[:, :, ki, kj]
        self.phases = nn.ModuleList()
        for phase in weight:
            conv = nn.Conv2d(channels, channels, 2 * q + 1, padding=q, groups=channels, bias=False)
            conv.weight = nn.Parameter(phase)
            self.phases.append(conv)
        self.pwl = block.pwl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pw is not None:
            x = self.pw(x)
        y = torch.stack([self.pwl(conv(x)) for conv in self.phases])  # [4, N, O, H, W]
        _, n, o, h, w = y.shape
        return y.view(2, 2, n, o, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, o, 2 * h, 2 * w)
