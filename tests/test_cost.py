"""The analytic cost model against the built modules and torch's FlopCounterMode."""

import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nars.model.arch import parse_arch, resolve_arch
from nars.model.blocks import use_d2go_upsampling
from nars.model.builder import build_stages
from nars.model.cost import model_cost, stages_cost
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


def _ir(k: int, c: int, s: int, n: int, e: float, se: bool = False) -> list:
    return [f"ir_k{k}" + ("_se" if se else ""), c, s, n, {"e": e}]


# Widths off the divisor's grid, e == 1 on them (pw present), fractional e, and SE widths
# that the 95% rule bumps (int(72 / 4) = 18 -> 24, int(104 / 4) = 26 -> 32).
ODD_ARCH = parse_arch(
    {
        "trunk": [
            [["conv_k3", 20, 2, 1], _ir(3, 20, 1, 1, 1)],
            [_ir(5, 36, 2, 1, 3, se=True), _ir(3, 36, 1, 2, 2, se=True)],
            [_ir(3, 44, 2, 1, 1.5), _ir(5, 44, 1, 1, 1, se=True)],
            [_ir(3, 76, 2, 1, 4, se=True), _ir(3, 76, 1, 2, 1)],
        ],
        "rpn": [[_ir(3, 76, 1, 1, 2.5, se=True)]],
        "box_head": [[_ir(3, 100, 2, 1, 1), _ir(5, 130, 1, 1, 3, se=True)]],
        "mask_head": [[_ir(3, 52, 1, 1, 1), _ir(3, 28, -2, 1, 2, se=True)]],
    },
    "odd",
)


def random_odd_arch(seed: int):
    """Any widths from 12 to 120 and fractional expansions: the cost model must follow the builder."""
    rng = random.Random(seed)

    def block(s):
        return _ir(rng.choice([3, 5]), rng.randint(12, 120), s, rng.randint(1, 2), rng.choice([1, 1.5, 2, 2.5, 3, 4]),
                   se=rng.random() < 0.5)

    trunk = [[["conv_k3", rng.randint(12, 24), 2, 1], block(1)]] + [[block(2), block(1)] for _ in range(3)]
    return parse_arch(
        {"trunk": trunk, "rpn": [[block(1)]], "box_head": [[block(2), block(1)]], "mask_head": [[block(1), block(-2)]]},
        f"random_odd{seed}",
    )


ARCHS = (
    [resolve_arch("FBNetV3_A"), resolve_arch("FBNetV3_A_dsmask")]
    + [random_arch(s) for s in range(4)]
    + [ODD_ARCH]
    + [random_odd_arch(s) for s in range(2)]
)


def _flops(module, *inputs) -> float:
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 2 / 1e6  # FlopCounterMode counts 2 per multiply-add


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_cost_matches_flop_counter_and_parameters(arch):
    model = FBNetV3IS(arch, num_classes=7, norm="BN", box_pooler_resolution=6, mask_pooler_resolution=14).eval()
    use_d2go_upsampling(model)  # d2go's MACs: the sub-pixel path skips repeated taps
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


@pytest.mark.parametrize("divisor", [4, 8, 16])
@pytest.mark.parametrize("arch", [ODD_ARCH, random_odd_arch(0)], ids=lambda a: a.name)
def test_stage_costs_equal_the_builders_exactly_for_any_divisor(arch, divisor):
    """Builder and cost model read one width rule (arch.ir_widths), whatever the divisor:
    parameters and multiply-adds agree to the unit."""
    feat = None
    for part, size in (("trunk", (64, 96)), ("box_head", (6, 6)), ("mask_head", (14, 14))):
        stages, cin = arch.part(part), feat or 3  # the heads run on pooled RoIs of the trunk's output
        modules, cout = build_stages(stages, cin, nn.BatchNorm2d, divisor)
        cost, cost_out, _, _ = stages_cost(stages, cin, *size, divisor)
        model = use_d2go_upsampling(nn.Sequential(*modules).eval())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.rand(1, cin, *size))
        assert cost_out == cout, part
        assert cost.params == sum(p.numel() for p in model.parameters()), part
        assert 2 * cost.macs == counter.get_total_flops(), part
        feat = feat or cout
