"""Architecture specs: parsing, validation errors that name the block, round trips."""

import pytest

from nars.errors import UserError
from nars.model.arch import REFERENCE_ARCHS, BlockSpec, get_divisible_by, ir_widths, parse_arch, resolve_arch


def _arch_with(block, part="box_head"):
    data = {k: [list(stage) for stage in v] for k, v in REFERENCE_ARCHS["FBNetV3_A_dsmask"].items()}
    data[part] = [[block]]
    return data


def test_references_round_trip_through_data():
    for name in REFERENCE_ARCHS:
        spec = resolve_arch(name)
        assert parse_arch(spec.to_data(), name) == spec


def test_resolve_is_case_insensitive_and_rejects_unknown_names():
    assert resolve_arch("fbnetv3_a_DSMASK").name == "FBNetV3_A_dsmask"
    with pytest.raises(UserError, match="unknown architecture 'FBNetV9'"):
        resolve_arch("FBNetV9")


def test_dict_form_and_defaults():
    spec = parse_arch(_arch_with({"op": "ir_k5_se", "c": 96, "s": 2, "n": 2, "e": 3}), "x")
    block = spec.box_head[0][0]
    assert (block.kind, block.kernel, block.se, block.out_channels, block.stride, block.repeats, block.expansion) == (
        "ir", 5, True, 96, 2, 2, 3.0
    )
    assert [b.stride for b in block.expanded()] == [2, 1]


@pytest.mark.parametrize(
    "block, message",
    [
        (["ir_k4", 32, 1, 1], "box_head stage 0 block 0: op 'ir_k4' needs an odd kernel"),
        (["dw_k3", 32, 1, 1], "box_head stage 0 block 0: unknown op 'dw_k3'"),
        (["ir_k3", 0, 1, 1], "box_head stage 0 block 0: out_channels must be a positive integer"),
        (["ir_k3", -8, 1, 1], "out_channels must be a positive integer"),
        (["ir_k3", 32, 3, 1], "box_head stage 0 block 0: stride must be one of"),
        (["ir_k3", 32, 1, 0], "repeats must be an integer >= 1"),
        (["ir_k3", 32, 1, 1, {"e": 0}], "expansion 'e' must be a positive number"),
        (["ir_k3", 32, 1, 1, {"x": 2}], "options dict takes only 'e'"),
        ({"op": "ir_k3", "c": 8, "k": 3}, "unknown block field"),
    ],
)
def test_invalid_blocks_name_the_block(block, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_arch(_arch_with(block), "bad")


def test_layout_rules():
    data = _arch_with(["ir_k3", 32, 1, 1], part="trunk")
    with pytest.raises(UserError, match="trunk must have 4 stages"):
        parse_arch(data, "bad")
    data = {k: list(v) for k, v in REFERENCE_ARCHS["FBNetV3_A_dsmask"].items()}
    data["trunk"] = data["trunk"][:3] + [[["ir_k3", 64, 1, 1]]]
    with pytest.raises(UserError, match="output stride is 8, C4 needs 16"):
        parse_arch(data, "bad")
    with pytest.raises(UserError, match="rpn blocks must keep stride 1"):
        parse_arch(_arch_with(["ir_k3", 112, 2, 1], part="rpn"), "bad")
    with pytest.raises(UserError, match="missing part"):
        parse_arch({"trunk": []}, "bad")


@pytest.mark.parametrize(
    "num, expected",
    [
        (18, 24),  # 16 is below 95% of 18: one divisor more (the SE width on mid 72)
        (72 * 0.25, 24),
        (35, 40),  # 32 < 0.95 * 35
        (20, 24),  # 2.5 rounds half away from zero, to 3
        (12, 16),
        (28, 32),
        (84, 88),
        (83.9, 80),  # 80 >= 0.95 * 83.9
        (16, 16),  # an exact multiple is kept
        (112, 112),
        (4, 8),  # 0.5 rounds up to one divisor
        (3, 8),  # rounds to 0, which becomes one divisor
        (0, 8),  # min_val defaults to the divisor
    ],
)
def test_get_divisible_by_is_mobile_cvs(num, expected):
    assert get_divisible_by(num, 8) == expected


def test_get_divisible_by_min_val_and_no_divisor():
    assert get_divisible_by(16, 8, min_val=32) == 32
    assert get_divisible_by(0, 8, min_val=1) == 1
    assert get_divisible_by(4, 8, min_val=4) == 8  # rounding comes first
    assert get_divisible_by(19.7, 0) == 19  # no divisor: int(num), as mobile_cv
    assert get_divisible_by(20, 16) == 32 and get_divisible_by(22, 4) == 24


def _ir(c: int, e: float, se: bool = False) -> BlockSpec:
    return BlockSpec("ir", 3, se, c, 1, 1, float(e))


@pytest.mark.parametrize(
    "cin, block, mid, se_mid, has_pw",
    [
        (24, _ir(24, 3, se=True), 72, 24, True),  # d2go: 24; make_divisible(0.25 * 72) gave 16
        (20, _ir(20, 1), 24, None, True),  # e == 1, but 20 rounds to 24: the pw conv exists
        (16, _ir(16, 1), 16, None, False),  # e == 1 on a multiple of 8: no pw conv
        (36, _ir(36, 1.5), 56, None, True),
        (52, _ir(28, 2, se=True), 104, 32, True),  # int(26) -> 24 < 0.95 * 26 -> 32
        (112, _ir(112, 3, se=True), 336, 88, True),
    ],
)
def test_ir_widths(cin, block, mid, se_mid, has_pw):
    widths = ir_widths(cin, block, 8)
    assert (widths.mid, widths.se_mid, widths.has_pw) == (mid, se_mid, has_pw)
