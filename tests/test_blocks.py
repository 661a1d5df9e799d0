"""FBNet blocks as mobile_cv builds them: widths (out as written, pw iff mid != in) and init."""

import math

import pytest
import torch
from torch import nn

from nars.model.arch import parse_block
from nars.model.blocks import ConvNormAct, InvertedResidual
from nars.model.builder import build_stages


def _stage(*blocks):
    return (tuple(parse_block(b, "test") for b in blocks),)


def test_out_channels_are_not_rounded_and_pw_exists_iff_mid_differs():
    (stage,), out = build_stages(_stage(["conv_k3", 20, 2, 1], ["ir_k3", 20, 1, 2, {"e": 1}]), 3, nn.BatchNorm2d)
    assert out == 20  # d2go keeps 20; rounding it gave 24
    stem, first, second = stage
    assert stem.conv.out_channels == 20
    for block in (first, second):  # in 20, e 1: mid rounds to 24, so the pw conv exists
        assert (block.pw.conv.in_channels, block.pw.conv.out_channels) == (20, 24)
        assert block.dw.conv.groups == 24 and block.pwl.conv.out_channels == 20 and block.use_residual
    assert stage(torch.rand(1, 3, 16, 16)).shape == (1, 20, 8, 8)
    (stage,), _ = build_stages(_stage(["ir_k3", 16, 1, 1, {"e": 1}]), 16, nn.BatchNorm2d)
    assert stage[0].pw is None and stage[0].dw.conv.in_channels == 16  # in 16, e 1: mid 16, no pw


def test_se_width_is_mobile_cvs():
    (stage,), _ = build_stages(_stage(["ir_k3_se", 24, 1, 1, {"e": 3}]), 24, nn.BatchNorm2d)
    squeeze, excite = stage[0].se.se[0].conv, stage[0].se.se[1]
    assert (squeeze.in_channels, squeeze.out_channels, excite.out_channels) == (72, 24, 72)  # d2go: 24, not 16


def _std_ok(weight: torch.Tensor, expected: float) -> bool:
    return abs(weight.std().item() / expected - 1) < 0.1


def test_init_is_mobile_cvs():
    torch.manual_seed(0)
    block = InvertedResidual(256, parse_block(["ir_k3_se", 256, 1, 1, {"e": 4}], "test"), nn.BatchNorm2d)
    convs = {"pw": block.pw.conv, "dw": block.dw.conv, "pwl": block.pwl.conv, "se": block.se.se[0].conv}
    for name, conv in convs.items():  # kaiming_normal_(mode="fan_out", nonlinearity="relu")
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        assert _std_ok(conv.weight, math.sqrt(2 / fan_out)), name
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_out), name
        assert conv.bias is None or not conv.bias.any(), name
    excite = block.se.se[1]  # weight_init=None in mobile_cv: PyTorch's default (bound 1/sqrt(fan_in))
    fan_in = excite.weight.shape[1]
    assert _std_ok(excite.weight, 1 / math.sqrt(3 * fan_in))
    assert excite.bias.any() and excite.bias.abs().max() <= 1 / math.sqrt(fan_in)
    for bn in (block.pw.bn, block.pwl.bn):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()


@pytest.mark.parametrize("bias", [True, False])
def test_conv_norm_act_bias_starts_at_zero(bias):
    layer = ConvNormAct(3, 64, 3, 2, bias=bias, norm=nn.BatchNorm2d)
    assert (layer.conv.bias is not None) == bias
    assert not bias or not layer.conv.bias.any()
    assert _std_ok(layer.conv.weight, math.sqrt(2 / (64 * 9)))
