"""Architecture specs: parsing, validation errors that name the block, round trips."""

import pytest

from nars.errors import UserError
from nars.model.arch import REFERENCE_ARCHS, parse_arch, resolve_arch, round_channels


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


def test_round_channels():
    assert [round_channels(v, 8) for v in (84, 83.9, 4, 20, 28, 112)] == [88, 80, 8, 24, 32, 112]
