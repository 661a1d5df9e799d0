"""The inference path (nars.model.fuse) and the sub-pixel upsampling blocks compute what
d2go's layers compute.

Folding uses random, non-trivial norm statistics; the whole-model check uses the d2go
golden checkpoint (trained weights, so no score ties reorder detections)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from nars.config import load_config
from nars.engine.distributed import to_device
from nars.engine.inference import image_tensor, read_rgb
from nars.model.arch import BlockSpec
from nars.model.blocks import ConvNormAct, InvertedResidual, use_d2go_upsampling
from nars.model.fbnetv3is import build_model
from nars.model.fuse import fuse_for_inference
from nars.model.norm import norm_factory
from nars.model.weights import load_weights
from rounding import assert_same_detections, assert_same_function, recording, rounding_scale

GOLDEN = Path(__file__).parent / "data" / "d2go_golden"


def _randomise_norms(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                if hasattr(m, "running_mean") and m.running_mean is not None:
                    m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _input(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# Blocks are compared in float64: they compute one function in two ways (tests/rounding.py's
# SAME_FUNCTION), where float32 would only add rounding (the whole float32 model is compared
# within its rounding bounds in the last test).
@pytest.mark.parametrize("norm", ["BN", "NaiveSyncBN", "FrozenBN", "GN"])
def test_norms_fold_into_convs_when_their_statistics_are_fixed(norm):
    block = _randomise_norms(ConvNormAct(16, 32, 3, norm=norm_factory(norm, 8))).double()
    x = _input(2, 16, 9, 11)
    with torch.no_grad():
        expected = block(x)
        fused = fuse_for_inference(copy.deepcopy(block))
        assert_same_function(fused(x), expected)
    assert isinstance(fused.bn, nn.GroupNorm if norm == "GN" else nn.Identity)


@pytest.mark.parametrize("kernel,expansion,in_channels,se", [(3, 3, 24, False), (5, 4, 24, False), (7, 1, 16, False),
                                                              (3, 1, 16, False), (5, 2, 16, True)])
def test_an_upsampling_block_computes_d2gos_function_at_input_resolution(kernel, expansion, in_channels, se):
    block = _randomise_norms(InvertedResidual(in_channels, BlockSpec("ir", kernel, se, 16, -2, 1, expansion),
                                              nn.BatchNorm2d)).double()
    x = _input(3, in_channels, 7, 5)
    d2go = use_d2go_upsampling(copy.deepcopy(block))
    with torch.no_grad():
        expected = d2go(x)
        assert block(x).shape == expected.shape == (3, 16, 14, 10)
        assert_same_function(block(x), expected)
        assert_same_function(fuse_for_inference(copy.deepcopy(block))(x), expected)
    # training: batch statistics over the whole upsampled map, and the same gradients
    ours, theirs = copy.deepcopy(block).train(), d2go.train()
    out, ref = ours(x), theirs(x)
    assert_same_function(out, ref)
    (out * ref.detach()).sum().backward()
    (ref * ref.detach()).sum().backward()
    assert_same_function(ours.dw.conv.weight.grad, theirs.dw.conv.weight.grad)
    assert_same_function(ours.pwl.bn.running_var, theirs.pwl.bn.running_var)


def test_the_fused_golden_model_gives_the_models_detections():
    cfg = load_config(GOLDEN / "nars_config.yaml")
    model = build_model(cfg)
    load_weights(model, str(GOLDEN / "golden_model.pth"))
    model = to_device(model, torch.device("cpu")).eval()
    fused = fuse_for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    for name in ("000000.png", "odd_150x97.png"):
        image = [image_tensor(read_rgb(GOLDEN / name))]
        with torch.no_grad(), recording(model) as record:
            expected = model(image)[0]
        with torch.no_grad():
            out = fused(image)[0]
        # folding rounds each folded weight once more: within the rounding bound of two float32
        # computations (tests/rounding.py)
        assert_same_detections(model, record, expected, out, rounding_scale(model, fused))
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # the original stays
