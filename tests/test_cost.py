"""The analytic cost model against the built modules and torch's FlopCounterMode."""

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nars.model.arch import parse_arch, resolve_arch
from nars.model.cost import model_cost
from nars.model.fbnetv3is import FBNetV3IS


def random_arch(seed: int):
    rng = random.Random(seed)

    def block(c, s):
        op = f"ir_k{rng.choice([3, 5, 7])}" + ("_se" if rng.random() < 0.4 else "")
        return [op, c, s, rng.randint(1, 3), {"e": rng.choice([1, 2, 3, 4, 6])}]

    widths = [rng.choice([16, 24, 32]), rng.choice([24, 32, 40]), rng.choice([40, 48, 64]), rng.choice([72, 96, 112])]
    trunk = [[["conv_k3", 16, 2, 1], block(widths[0], 1)]] + [[block(w, 2), block(w, 1)] for w in widths[1:]]
    return parse_arch(
        {
            "trunk": trunk,
            "rpn": [[block(widths[-1], 1)]],
            "box_head": [[block(rng.choice([64, 128]), 2), block(rng.choice([96, 160]), 1)]],
            "mask_head": [[block(64, 1), block(rng.choice([32, 64]), -2)]],
        },
        f"random{seed}",
    )


ARCHS = [resolve_arch("FBNetV3_A"), resolve_arch("FBNetV3_A_dsmask")] + [random_arch(s) for s in range(4)]


def _flops(module, *inputs) -> float:
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 2 / 1e6  # FlopCounterMode counts 2 per multiply-add


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_cost_matches_flop_counter_and_parameters(arch):
    model = FBNetV3IS(arch, num_classes=7, norm="BN", box_pooler_resolution=6, mask_pooler_resolution=14).eval()
    size = (160, 224)
    cost = model_cost(arch, 7, size, num_anchors=15, box_resolution=6, mask_resolution=14)
    with torch.no_grad():
        trunk = _flops(model.backbone, torch.rand(1, 3, *size))
        feat = model.backbone(torch.rand(1, 3, *size))["trunk3"]
        rpn = _flops(model.rpn.head, [feat])
        box = _flops(lambda x: model.roi_heads.box_predictor(model.roi_heads.box_head(x)), torch.rand(1, feat.shape[1], 6, 6))
        mask = _flops(model.roi_heads.mask_head, torch.rand(1, feat.shape[1], 14, 14))
    assert cost.mflops["trunk"] == pytest.approx(trunk, rel=0.01)
    assert cost.mflops["rpn"] == pytest.approx(rpn, rel=0.01)
    assert cost.mflops["box_head_per_roi"] == pytest.approx(box, rel=0.01)
    assert cost.mflops["mask_head_per_roi"] == pytest.approx(mask, rel=0.01)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert cost.params["trunk"] == count(model.backbone)
    assert [cost.params[f"trunk{i}"] for i in range(4)] == [count(s) for s in model.backbone.body]
    assert cost.params["rpn"] == count(model.rpn.head)
    assert cost.params["box_head"] == count(model.roi_heads.box_head)
    assert cost.params["box_predictor"] == count(model.roi_heads.box_predictor)
    assert cost.params["mask_head"] == count(model.roi_heads.mask_head)
    assert cost.params["total"] == count(model)


def test_total_counts_rois():
    arch = resolve_arch("FBNetV3_A_dsmask")
    one = model_cost(arch, rois=1, mask_rois=1).mflops
    many = model_cost(arch, rois=30, mask_rois=10).mflops
    assert many["total"] - one["total"] == pytest.approx(29 * one["box_head_per_roi"] + 9 * one["mask_head_per_roi"])
