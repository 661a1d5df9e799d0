"""Weight inheritance (nars.model.inherit): exact slices, identities for new blocks, the same
architecture reproducing the parent, and the start of a training from another architecture."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nars.config import load_config
from nars.data.shapes import generate_shapes
from nars.engine.trainer import START_WEIGHTS_FILE, train
from nars.model.arch import REFERENCE_ARCHS, parse_arch, resolve_arch
from nars.model.fbnetv3is import FBNetV3IS
from nars.model.inherit import inherit
from rounding import assert_same_detections, recording, rounding_scale

SIZE = 96
PARENT = "FBNetV3_A_dsmask"
STEM = "backbone.body.trunk0.fbnetv2_0_0."
T2 = "backbone.body.trunk2.fbnetv2_2_"  # stage 2: [ir_k5 40 s2 e4] + [ir_k3 40 x3 e3]


def _model(arch: Any, classes: int = 4, seed: int = 1, norm: str = "BN") -> FBNetV3IS:
    torch.manual_seed(seed)
    spec = resolve_arch(arch) if isinstance(arch, str) else parse_arch(arch, "child")
    return FBNetV3IS(spec, classes, norm=norm, min_size_test=SIZE, max_size_test=SIZE).eval()


@pytest.fixture(scope="module")
def parent() -> FBNetV3IS:
    """The parent, with non-trivial norms (fresh ones would hide errors in their mapping)."""
    model = _model(PARENT, seed=0)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _arch(**edits: Any) -> dict[str, Any]:
    """The parent's arch data with ``part=[(stage, group, field, value), ...]`` edits."""
    data = copy.deepcopy(REFERENCE_ARCHS[PARENT])
    for part, changes in edits.items():
        for stage, group, index, value in changes:
            data[part][stage][group][index] = value
    return data


def _outputs(model: FBNetV3IS, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model([torch.rand(3, SIZE, SIZE) * 255])[0]


def test_the_same_architecture_gets_the_parent_exactly(parent):
    child = _model(PARENT, seed=5)
    report = inherit(child, parent.state_dict(), parent.arch)
    assert report.fraction == 1.0 and not report.fresh and not report.new_blocks
    for key, value in parent.state_dict().items():
        assert torch.equal(child.state_dict()[key], value), key
    a, b = _outputs(parent), _outputs(child)
    assert len(a["boxes"]) > 0
    for field in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(a[field], b[field]), field


def test_added_blocks_are_identities_when_only_depth_grew(parent):
    deeper = _arch(trunk=[(2, 1, 3, 5)], box_head=[(0, 1, 3, 3)], rpn=[(0, 0, 3, 4)])
    child = _model(deeper)
    report = inherit(child, parent.state_dict(), parent.arch)
    assert report.identity_blocks == [f"{T2}4.", f"{T2}5.", "rpn.head.rpn_feature.0.fbnetv2_0_3.",
                                      "roi_heads.box_head.roi_box_conv.0.fbnetv2_0_3."]
    assert 0.8 < report.fraction < 1.0
    a, b = _outputs(parent), _outputs(child)
    for field in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(a[field], b[field]), field


def test_an_added_squeeze_excite_keeps_the_parent_function(parent):
    """A 0.5 gate (expand conv at 0) and a doubled projection: the parent's outputs, exactly."""
    child = _model(_arch(trunk=[(2, 1, 0, "ir_k3_se")], mask_head=[(0, 1, 0, "ir_k3_se")]))
    report = inherit(child, parent.state_dict(), parent.arch)
    assert f"{T2}1.se.se.0.conv.weight" in report.fresh
    assert torch.equal(child.state_dict()[f"{T2}1.pwl.conv.weight"], 2 * parent.state_dict()[f"{T2}1.pwl.conv.weight"])
    a, b = _outputs(parent), _outputs(child)
    for field in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(a[field], b[field]), field


def test_a_child_that_contains_the_parent_starts_as_the_parent(parent):
    """Wider outputs and inner widths, a larger kernel: new channels are not read (their
    readers start at 0) and kernels are zero-padded, so the outputs stay the parent's."""
    wide = _arch(trunk=[(1, 0, 1, 40), (1, 1, 1, 40), (2, 1, 0, "ir_k5"), (2, 1, 4, {"e": 4})],
                 mask_head=[(0, 0, 1, 144), (0, 1, 1, 144), (0, 2, 1, 144)])
    child = _model(wide)
    inherit(child, parent.state_dict(), parent.arch)
    with recording(parent) as record:
        a = _outputs(parent)
    # the same function, with other accumulation lengths: equal up to float32 rounding
    assert_same_detections(parent, record, a, _outputs(child), rounding_scale(parent, child))


def test_narrower_blocks_take_exact_slices(parent):
    """Output widths take the first channels; a narrower inner width the most important ones
    (L1 of the projection's weights that read them), the same ones in pw, its norm, dw and pwl;
    a smaller kernel the parent's centre."""
    narrow = _arch(trunk=[(2, 1, 0, "ir_k3"), (2, 0, 0, "ir_k3"), (2, 0, 1, 32), (2, 1, 1, 32), (2, 1, 4, {"e": 2})])
    child = _model(narrow)
    report = inherit(child, parent.state_dict(), parent.arch)
    p, c = parent.state_dict(), child.state_dict()
    first = f"{T2}0."  # ir_k5 40 s2 e4 -> ir_k3 32 s2 e4: in 32 -> mid 128 (parent 128), out 40 -> 32
    assert torch.equal(c[first + "dw.conv.weight"], p[first + "dw.conv.weight"][:, :, 1:4, 1:4])
    assert torch.equal(c[first + "pwl.conv.weight"], p[first + "pwl.conv.weight"][:32])
    assert torch.equal(c[first + "pwl.bn.running_var"], p[first + "pwl.bn.running_var"][:32])
    block = f"{T2}1."  # ir_k3 40 e3 (mid 120) -> ir_k3 32 e2 (mid 64)
    keep = p[block + "pwl.conv.weight"].abs().sum(dim=(0, 2, 3)).topk(64).indices.sort().values
    assert torch.equal(c[block + "pw.conv.weight"], p[block + "pw.conv.weight"][keep][:, :32])
    assert torch.equal(c[block + "pw.bn.weight"], p[block + "pw.bn.weight"][keep])
    assert torch.equal(c[block + "dw.conv.weight"], p[block + "dw.conv.weight"][keep])
    assert torch.equal(c[block + "pwl.conv.weight"], p[block + "pwl.conv.weight"][:32, keep])
    assert torch.equal(c[STEM + "conv.weight"], p[STEM + "conv.weight"])  # untouched parts are copied
    assert report.fraction == 1.0  # every weight of a narrower child comes from the parent


def test_predictors_follow_the_class_count_and_norms_their_kind(parent):
    other = _model(PARENT, classes=2)
    fresh = other.state_dict()["roi_heads.box_predictor.cls_score.weight"].clone()
    report = inherit(other, parent.state_dict(), parent.arch)
    assert torch.equal(other.state_dict()["roi_heads.box_predictor.cls_score.weight"], fresh)
    assert "roi_heads.mask_head.predictor.mask_fcn_logits.weight" in report.fresh
    assert torch.equal(other.state_dict()["rpn.head.rpn_regressor.cls_logits.weight"],
                       parent.state_dict()["rpn.head.rpn_regressor.cls_logits.weight"])
    gn = _model(PARENT, norm="GN")
    report = inherit(gn, parent.state_dict(), parent.arch)
    assert STEM + "bn.weight" in report.fresh
    assert torch.equal(gn.state_dict()[STEM + "conv.weight"], parent.state_dict()[STEM + "conv.weight"])


def test_a_training_inherits_a_checkpoint_of_another_architecture(tmp_path: Path):
    """A NARS run folder as MODEL.WEIGHTS: its checkpoint records its arch, a child of another
    architecture inherits it and says how much in start_weights.json; the same arch loads."""
    data = tmp_path / "shapes"
    generate_shapes(data, train=4, val=2, size=64, seed=0)
    base = ["DATASETS.TRAIN.JSON", str(data / "train.json"), "DATASETS.TRAIN.IMAGES", str(data / "train"),
            "DATASETS.TEST.JSON", "''", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SEED", "0",
            "INPUT.MIN_SIZE_TRAIN", "64", "INPUT.MAX_SIZE_TRAIN", "64", "DATALOADER.NUM_WORKERS", "0"]
    train(load_config("search_shapes", base), tmp_path / "parent", progress=False)
    recorded = torch.load(tmp_path / "parent" / "model_final.pth", weights_only=True)["arch"]
    assert parse_arch(recorded).to_data() == resolve_arch(PARENT).to_data()
    deeper = json.dumps(_arch(trunk=[(2, 1, 3, 4)]))
    train(load_config("search_shapes", base + ["MODEL.WEIGHTS", str(tmp_path / "parent"), "MODEL.FBNET_V2.ARCH", deeper]),
          tmp_path / "child", progress=False)
    start = json.loads((tmp_path / "child" / START_WEIGHTS_FILE).read_text())
    assert start["mode"] == "inherit" and start["identity_blocks"] == [f"{T2}4."] and 0.9 < start["fraction"] < 1
    train(load_config("search_shapes", base + ["MODEL.WEIGHTS", str(tmp_path / "parent")]), tmp_path / "same",
          progress=False)
    same = json.loads((tmp_path / "same" / START_WEIGHTS_FILE).read_text())
    assert same["mode"] == "load" and same["fraction"] == 1.0
    train(load_config("search_shapes", base + ["MODEL.WEIGHTS", str(tmp_path / "parent"), "MODEL.FBNET_V2.NORM", "GN"]),
          tmp_path / "gn", progress=False)  # the same arch with GN: the batch-norm statistics have no place
    gn = json.loads((tmp_path / "gn" / START_WEIGHTS_FILE).read_text())
    assert gn["mode"] == "inherit" and 0.9 < gn["fraction"] < 1
