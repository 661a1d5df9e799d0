"""The one builder: stages of block specs to modules named as d2go names them.

Stage ``s`` becomes an ``nn.Sequential`` whose blocks are ``fbnetv2_{s}_{b}``, so
state dicts line up with d2go checkpoints key for key.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from nars.model.arch import BlockSpec, Stage, blocks
from nars.model.blocks import ConvNormAct, InvertedResidual, NormFactory


def build_block(
    spec: BlockSpec, in_channels: int, norm: NormFactory, divisor: int, drop_connect_rate: float = 0.0
) -> tuple[nn.Module, int]:
    """One single (non-repeated) block and its output channels.

    out_channels are taken as written, as mobile_cv does at width_ratio 1; ``divisor``
    rounds only an inverted residual's inner (mid, SE) widths; ``drop_connect_rate`` reaches
    every inverted residual unchanged, as mobile_cv's builder passes it.
    """
    out = spec.out_channels
    if spec.kind == "conv":
        return ConvNormAct(in_channels, out, spec.kernel, spec.stride, bias=True, norm=norm), out
    return InvertedResidual(in_channels, spec, norm, divisor, drop_connect_rate), out


def build_stages(
    stages: Sequence[Stage], in_channels: int, norm: NormFactory, divisor: int = 8, drop_connect_rate: float = 0.0
) -> tuple[list[nn.Sequential], int]:
    """Build every stage; returns the stage modules and the final channel count."""
    modules = []
    channels = in_channels
    for s, stage in enumerate(blocks(stages)):
        seq = nn.Sequential()
        for b, spec in enumerate(stage):
            block, channels = build_block(spec, channels, norm, divisor, drop_connect_rate)
            seq.add_module(f"fbnetv2_{s}_{b}", block)
        modules.append(seq)
    return modules, channels
