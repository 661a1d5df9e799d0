"""FBNetV3IS: d2go's parameter counts, forward in both modes for every NORM, every knob."""

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from conftest import make_target
from nars.config import load_config
from nars.engine import distributed as comm
from nars.errors import UserError
from nars.model.fbnetv3is import build_model
from nars.model.norm import NaiveSyncBatchNorm, SyncBatchNorm
from rounding import assert_same_function

# d2go's builder, 80 classes (reference table): trunk0..3, rpn, box head, box predictor, mask head, total.
D2GO_PARAMS = {
    "FBNetV3_A": [1344, 20680, 48736, 902200, 729075, 3524072, 80601, 811920, 6118628],
    "FBNetV3_A_dsmask": [912, 10752, 45752, 522264, 346491, 753280, 64561, 811920, 2555932],
}
PREFIXES = [f"backbone.body.trunk{i}." for i in range(4)] + [
    "rpn.head.", "roi_heads.box_head.", "roi_heads.box_predictor.", "roi_heads.mask_head."
]


@pytest.mark.parametrize("arch", D2GO_PARAMS)
def test_parameter_counts_match_d2go(arch):
    model = build_model(load_config(None, ["MODEL.FBNET_V2.ARCH", arch]))
    named = dict(model.named_parameters())
    counts = [sum(p.numel() for n, p in named.items() if n.startswith(prefix)) for prefix in PREFIXES]
    assert counts + [sum(p.numel() for p in named.values())] == D2GO_PARAMS[arch]


def _images():
    torch.manual_seed(0)
    return [torch.rand(3, 60, 80), torch.rand(3, 72, 56)]


@pytest.mark.parametrize("norm", ["BN", "sync_bn", "naiveSyncBN", "gn", "FrozenBN"])
def test_forward_train_and_eval_for_each_norm(tiny_cfg, norm):
    model = build_model(tiny_cfg("MODEL.FBNET_V2.NORM", norm, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"))
    images = _images()
    targets = [make_target(60, 80, [[5, 5, 40, 50], [30, 10, 75, 55]], [1, 3]), make_target(72, 56, [], [])]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for image, out in zip(images, outputs):
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        assert len(out["boxes"]) > 0  # random weights, score threshold 0: there are detections
        assert out["masks"].shape[1:] == (1, *image.shape[1:])  # masks at the input image's size
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
        assert (out["boxes"][:, 2] <= image.shape[2]).all() and (out["boxes"][:, 3] <= image.shape[1]).all()


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_cpu_placement_goes_channels_last_and_changes_no_result(tiny_cfg, norm):
    """Channels-last is the same function in another memory layout: compared in float64
    (tests/rounding.py's SAME_FUNCTION). Training through batch statistics of a tiny random
    model is ill-conditioned: float32 rounding reaches ~1% of the gradient there (0.03-1.2%
    measured, by kernel and thread count), where no rounding-derived float32 bound is useful;
    float64 keeps the layouts ~1e-13 apart (measured), a layout bug O(1)."""
    model = build_model(tiny_cfg("MODEL.FBNET_V2.NORM", norm, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"))
    weights = [m.weight for m in comm.to_device(copy.deepcopy(model), torch.device("cpu")).modules()
               if isinstance(m, nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not weights[0].is_contiguous()  # the stem's 3x3 over RGB: its layout did change
    exact = copy.deepcopy(model).double()
    placed = comm.to_device(copy.deepcopy(model).double(), torch.device("cpu"))
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in placed.modules() if isinstance(m, nn.Conv2d))
    images = [image.double() for image in _images()]
    targets = [make_target(60, 80, [[5, 5, 40, 50], [30, 10, 75, 55]], [1, 3]), make_target(72, 56, [], [])]
    targets = [{k: v.double() if v.is_floating_point() else v for k, v in t.items()} for t in targets]
    losses, grads = [], []
    for m in (exact, placed):
        torch.manual_seed(1)  # the same sampled anchors and RoIs
        m.train()
        loss = m(images, targets)
        sum(loss.values()).backward()
        losses.append(torch.stack(list(loss.values())).detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert_same_function(losses[1], losses[0])
    assert_same_function(grads[1], grads[0])
    # Eval: the same features and RoI-head outputs. (Whole detections of a random model are
    # near-tied scores, whose NMS order is decided by float rounding.)
    rois = [torch.tensor([[4.0, 4.0, 40.0, 44.0], [10.0, 2.0, 60.0, 30.0]], dtype=torch.float64)] * len(images)
    outputs = []
    for m in (exact, placed):
        m.eval()
        with torch.no_grad():
            batch, _ = m.transform(images)
            features = m.backbone(batch.tensors)
            heads = m.roi_heads
            pooled = heads.box_roi_pool(features, rois, batch.image_sizes)
            outputs.append([features["trunk3"], *heads.box_predictor(heads.box_head(pooled)),
                            heads.mask_head(heads.mask_roi_pool(features, rois, batch.image_sizes))])
    for after, before in zip(*outputs):
        assert_same_function(after, before)


def test_norm_classes(tiny_cfg):
    types = {
        "BN": torch.nn.BatchNorm2d, "SyncBN": SyncBatchNorm, "NaiveSyncBN": NaiveSyncBatchNorm,
        "GN": torch.nn.GroupNorm, "FrozenBN": FrozenBatchNorm2d,
    }
    for name, cls in types.items():
        model = build_model(tiny_cfg("MODEL.FBNET_V2.NORM", name))
        assert type(model.backbone.body.trunk1.fbnetv2_1_0.pw.bn) is cls
    gn = build_model(tiny_cfg("MODEL.FBNET_V2.NORM", "GN", "MODEL.FBNET_V2.NORM_GROUPS", "32"))
    assert gn.backbone.body.trunk2.fbnetv2_2_0.pwl.bn.num_groups == 8  # gcd(32, 40 channels)
    assert gn.backbone.body.trunk1.fbnetv2_1_0.pw.bn.num_groups == 32  # 128 channels
    with pytest.raises(UserError, match="MODEL.FBNET_V2.NORM: unknown normalization 'LN'"):
        build_model(tiny_cfg("MODEL.FBNET_V2.NORM", "LN"))


def test_knobs_reach_torchvision(tiny_cfg):
    model = build_model(tiny_cfg(
        "MODEL.RPN.IOU_THRESHOLDS", "[0.25, 0.65]", "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.4, 0.6]",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "1500", "MODEL.RPN.PRE_NMS_TOPK_TEST", "700",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "900", "MODEL.RPN.POST_NMS_TOPK_TEST", "25",
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "8", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "12",
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "128", "MODEL.RPN.POSITIVE_FRACTION", "0.4",
        "MODEL.ROI_HEADS.POSITIVE_FRACTION", "0.3", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32]]",
    ))
    rpn, roi = model.rpn, model.roi_heads
    assert (rpn.proposal_matcher.low_threshold, rpn.proposal_matcher.high_threshold) == (0.25, 0.65)
    assert (roi.proposal_matcher.low_threshold, roi.proposal_matcher.high_threshold) == (0.4, 0.6)
    assert rpn._pre_nms_top_n == {"training": 1500, "testing": 700}
    assert rpn._post_nms_top_n == {"training": 900, "testing": 25}
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (128, 0.4)
    assert (roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction) == (32, 0.3)
    assert roi.box_roi_pool.output_size == (8, 8) and roi.mask_roi_pool.output_size == (12, 12)
    assert rpn.head.rpn_regressor.cls_logits.out_channels == 6  # 2 sizes x 3 ratios
    # between the bounds is ignored (-2), below is background (-1), above is matched
    labels = rpn.proposal_matcher(torch.tensor([[0.2, 0.5, 0.7]]))  # 1 gt x 3 anchors
    assert labels.tolist() == [-1, -2, 0]
    single = build_model(tiny_cfg("MODEL.ROI_HEADS.IOU_THRESHOLDS", "0.55")).roi_heads.proposal_matcher
    assert single.low_threshold == single.high_threshold == 0.55


def test_pooled_rois_flow_through_heads(tiny_cfg):
    model = build_model(tiny_cfg("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "14")).eval()
    feats = model.backbone(torch.rand(1, 3, 64, 96))
    assert feats["trunk3"].shape[-2:] == (4, 6)  # C4: output stride 16
    boxes = [torch.tensor([[0.0, 0.0, 48.0, 32.0], [10.0, 20.0, 60.0, 60.0]])]
    pooled = model.roi_heads.mask_roi_pool(feats, boxes, [(64, 96)])
    assert pooled.shape == (2, 112, 14, 14)
    logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(pooled))
    assert logits.shape == (2, 4, 28, 28)  # background slot + 3 classes, upsampled twice from 7x7
    assert logits[:, 0].abs().sum() == 0
    box_feat = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, boxes, [(64, 96)]))
    scores, deltas = model.roi_heads.box_predictor(box_feat)
    assert scores.shape == (2, 4) and deltas.shape == (2, 16) and deltas[:, :4].abs().sum() == 0
    raw = model.roi_heads.box_predictor.cls_score(box_feat)
    assert torch.equal(scores[:, 0], raw[:, -1])  # d2go keeps background last


def test_anchors_follow_detectron2_order(tiny_cfg):
    gen = build_model(tiny_cfg()).rpn.anchor_generator
    base = gen.cell_anchors[0] if gen.cell_anchors else gen.generate_anchors((32, 64, 96, 128, 160), (0.5, 1.0, 2.0))
    widths, heights = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    assert torch.allclose(widths[:3] * heights[:3], torch.full((3,), 32.0 * 32.0))  # size-major
    assert torch.allclose(heights[:3] / widths[:3], torch.tensor([0.5, 1.0, 2.0]))


def test_train_and_test_sizes_are_separate(tiny_cfg):
    model = build_model(tiny_cfg("INPUT.MIN_SIZE_TRAIN", "[48, 80]", "INPUT.MIN_SIZE_TEST", "64"))
    t = model.transform
    assert t.min_size == (48, 80) and t.max_size == 96
    model.eval()
    assert t.min_size == (64,) and t.max_size == 96
    batch, _ = t([torch.rand(3, 32, 32)])
    assert batch.image_sizes == [(64, 64)]


def test_input_format_and_pixel_normalization(tiny_cfg):
    t = build_model(tiny_cfg()).transform
    image = torch.zeros(3, 2, 2)
    image[0] = 1.0  # pure red in RGB [0, 1]
    batch, _ = t([image])
    out = batch.tensors[0]
    assert torch.allclose(out[:, 0, 0], torch.tensor([-103.53, -116.28, 255.0 - 123.675]))  # BGR, 0-255


@pytest.mark.parametrize("freeze_at", [0, 2, 4])
def test_freeze_at_leaves_frozen_stages_bit_identical(tiny_cfg, freeze_at):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.BACKBONE.FREEZE_AT", str(freeze_at), "MODEL.FBNET_V2.NORM", "BN"))
    model.train()
    body = model.backbone.body
    before = [{k: v.clone() for k, v in stage.state_dict().items()} for stage in body]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = _images()
    targets = [make_target(60, 80, [[5, 5, 40, 50]], [2]), make_target(72, 56, [[0, 0, 30, 30]], [1])]
    for _ in range(2):
        opt.zero_grad()
        sum(model(images, targets).values()).backward()
        opt.step()
    for i, stage in enumerate(body):
        after = stage.state_dict()
        same = all(torch.equal(before[i][k], after[k]) for k in after)
        frozen = i < freeze_at
        assert same == frozen, f"trunk{i}"
        assert all(not p.requires_grad for p in stage.parameters()) == frozen
        norms = [m for m in stage.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert all(isinstance(m, FrozenBatchNorm2d) for m in norms) == frozen
    with pytest.raises(UserError, match="FREEZE_AT must be in"):
        build_model(tiny_cfg("MODEL.BACKBONE.FREEZE_AT", "5"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["MODEL.RPN.IOU_THRESHOLDS", "[0.8, 0.3]"], "MODEL.RPN.IOU_THRESHOLDS needs 0 <= lower <= upper <= 1"),
        (["MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.1, 0.2, 0.3]"], "must be \\[lower, upper\\]"),
        (["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool"], "MODEL.ROI_BOX_HEAD.POOLER_TYPE: unknown pooler"),
        (["MODEL.ROI_HEADS.NUM_CLASSES", "0"], "NUM_CLASSES must be >= 1"),
        (["INPUT.FORMAT", "YUV"], "INPUT.FORMAT must be RGB or BGR"),
        (["MODEL.FBNET_V2.WIDTH_DIVISOR", "0"], "WIDTH_DIVISOR must be >= 1"),
        (["MODEL.RPN.SMOOTH_L1_BETA", "-0.1"], "MODEL.RPN.SMOOTH_L1_BETA must be >= 0"),
    ],
)
def test_bad_knob_values(tiny_cfg, overrides, message):
    with pytest.raises(UserError, match=message):
        build_model(tiny_cfg(*overrides))
