"""FBNetV3IS: d2go's "Mask R-CNN FBNetV3A C4" assembled on torchvision's detection models.

C4 layout: the trunk (4 stages, stride 16) feeds the RPN and both RoI heads from one
feature map. Module names follow d2go's state dicts (``backbone.body.trunkN``,
``roi_heads.box_head.roi_box_conv``, ``roi_heads.mask_head.feature_extractor`` ...); only
the RPN lives under torchvision's ``rpn.head`` instead of ``proposal_generator.rpn_head``.

``build_model(cfg)`` is where every config key meets its constructor argument.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops import MultiScaleRoIAlign, roi_align

from nars.errors import UserError
from nars.model.arch import TRUNK_OUTPUT_STRIDE, ArchSpec, Stage, resolve_arch
from nars.model.blocks import NormFactory
from nars.model.builder import build_stages
from nars.model.norm import canonical_norm, freeze_norms, norm_factory
from nars.model.rcnn import FBNetRoIHeads, FBNetRPN, SizeMajorAnchorGenerator
from nars.model.transform import FBNetTransform

FEATURE = "trunk3"


class FBNetC4Backbone(nn.Module):
    """The trunk: ``body.trunk0..3``; returns its stride-16 map as ``{"trunk3": x}``.

    Its strided convs pad, so any input size works: batches are not padded to a multiple
    of the stride (detectron2's ``size_divisibility`` 0 for d2go's C4 backbone)."""

    size_divisibility = 0

    def __init__(self, trunk: Sequence[Stage], norm: NormFactory, divisor: int = 8, drop_connect_rate: float = 0.0):
        super().__init__()
        stages, self.out_channels = build_stages(trunk, 3, norm, divisor, drop_connect_rate)
        self.body = nn.Sequential(OrderedDict((f"trunk{i}", s) for i, s in enumerate(stages)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {FEATURE: self.body(x)}

    def freeze(self, stages: int) -> None:
        """Freeze the first ``stages`` trunk stages: no gradients, frozen batch norms."""
        if not 0 <= stages <= len(self.body):
            raise UserError(f"MODEL.BACKBONE.FREEZE_AT must be in [0, {len(self.body)}], got {stages}")
        for i in range(stages):
            stage = freeze_norms(self.body[i])
            for p in stage.parameters():
                p.requires_grad_(False)


class RPNRegressor(nn.Module):
    """1x1 convs to objectness (A) and box deltas (4A) per location."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for conv in (self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_logits(x), self.bbox_pred(x)


class FBNetRPNHead(nn.Module):
    """FBNet stages on the trunk output, then the regressor (torchvision's RPN head API)."""

    def __init__(self, stages: Sequence[Stage], in_channels: int, num_anchors: int, norm: NormFactory, divisor: int,
                 drop_connect_rate: float = 0.0):
        super().__init__()
        modules, channels = build_stages(stages, in_channels, norm, divisor, drop_connect_rate)
        self.rpn_feature = nn.Sequential(*modules)
        self.rpn_regressor = RPNRegressor(channels, num_anchors)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = zip(*(self.rpn_regressor(self.rpn_feature(f)) for f in features))
        return list(logits), list(deltas)


class FBNetBoxHead(nn.Module):
    """FBNet stages on pooled RoIs, then global average pooling to a vector."""

    def __init__(self, stages: Sequence[Stage], in_channels: int, norm: NormFactory, divisor: int,
                 drop_connect_rate: float = 0.0):
        super().__init__()
        modules, self.out_channels = build_stages(stages, in_channels, norm, divisor, drop_connect_rate)
        self.roi_box_conv = nn.Sequential(*modules)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.roi_box_conv(x)).flatten(1)


class FBNetBoxPredictor(nn.Module):
    """d2go's predictor: ``cls_score`` (classes + background, background last) and
    class-specific ``bbox_pred`` without a background slot.

    torchvision's RoIHeads wants background first and a 4-wide background slot, so the
    outputs are rearranged here while the parameters keep d2go's layout.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.cls_score(x)
        scores = torch.cat([scores[:, -1:], scores[:, :-1]], dim=1)
        deltas = self.bbox_pred(x)
        return scores, torch.cat([deltas.new_zeros(deltas.shape[0], 4), deltas], dim=1)


class MaskLogits(nn.Module):
    """1x1 conv to one mask per class (no background channel), d2go's ``mask_fcn_logits``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.mask_fcn_logits = nn.Conv2d(in_channels, num_classes, 1)
        # d2go's MaskRCNNConv1x1Predictor: MSRAFill (kaiming normal, fan_out), zero bias
        nn.init.kaiming_normal_(self.mask_fcn_logits.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.mask_fcn_logits.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_fcn_logits(x)


class FBNetMaskHead(nn.Module):
    """FBNet stages on pooled RoIs (upsampling via stride -2), then the mask logits."""

    def __init__(self, stages: Sequence[Stage], in_channels: int, num_classes: int, norm: NormFactory, divisor: int,
                 drop_connect_rate: float = 0.0):
        super().__init__()
        modules, channels = build_stages(stages, in_channels, norm, divisor, drop_connect_rate)
        self.feature_extractor = nn.Sequential(*modules)
        self.predictor = MaskLogits(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.feature_extractor(x))


class BackgroundMaskSlot(nn.Module):
    """Prepends an empty background channel: torchvision indexes mask logits by label (1..C)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([logits.new_zeros(logits.shape[0], 1, *logits.shape[2:]), logits], dim=1)


class RoIPool(MultiScaleRoIAlign):
    """RoIAlign on the single C4 map at its known stride; ``aligned`` is detectron2's ROIAlignV2."""

    def __init__(self, output_size: int, sampling_ratio: int, aligned: bool, stride: int = TRUNK_OUTPUT_STRIDE):
        super().__init__([FEATURE], output_size, sampling_ratio)
        self.spatial_scale = 1.0 / stride
        self.aligned = aligned

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: Any = None) -> torch.Tensor:
        return roi_align(x[FEATURE], boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)


def iou_bounds(value: float | Sequence[float], key: str) -> tuple[float, float]:
    """``[lower, upper]`` (or one value for both): above upper is object, below lower is
    background, in between is ignored."""
    values = [value] if isinstance(value, (int, float)) else list(value)
    if not 1 <= len(values) <= 2 or not all(isinstance(v, (int, float)) for v in values):
        raise UserError(f"{key} must be [lower, upper] or a single threshold, got {value!r}")
    lower, upper = float(values[0]), float(values[-1])
    if not 0.0 <= lower <= upper <= 1.0:
        raise UserError(f"{key} needs 0 <= lower <= upper <= 1, got {value!r}")
    return lower, upper


class FBNetV3IS(GeneralizedRCNN):
    """Mask R-CNN with FBNet C4 trunk and heads. Every knob is an explicit argument."""

    def __init__(
        self,
        arch: ArchSpec,
        num_classes: int,
        *,
        norm: str = "BN",
        norm_groups: int = 32,
        width_divisor: int = 8,
        drop_connect_rate: float = 0.0,
        freeze_at: int = 0,
        anchor_sizes: Sequence[Sequence[int]] = ((32, 64, 96, 128, 160),),
        aspect_ratios: Sequence[Sequence[float]] = ((0.5, 1.0, 2.0),),
        rpn_iou_thresholds: Sequence[float] = (0.3, 0.7),
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_pre_nms_topk: tuple[int, int] = (2000, 1000),
        rpn_post_nms_topk: tuple[int, int] = (2000, 30),
        rpn_nms_thresh: float = 0.7,
        rpn_smooth_l1_beta: float = 0.0,
        roi_iou_thresholds: Sequence[float] = (0.5,),
        roi_batch_size_per_image: int = 512,
        roi_positive_fraction: float = 0.25,
        box_smooth_l1_beta: float = 0.0,
        box_pooler_resolution: int = 6,
        mask_pooler_resolution: int = 14,
        pooler_sampling_ratio: tuple[int, int] = (0, 0),
        pooler_aligned: tuple[bool, bool] = (True, True),
        score_thresh_test: float = 0.05,
        nms_thresh_test: float = 0.5,
        detections_per_image: int = 100,
        min_size_train: Sequence[int] = (224,),
        max_size_train: int = 320,
        min_size_test: int = 224,
        max_size_test: int = 320,
        pixel_mean: Sequence[float] = (103.53, 116.28, 123.675),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        input_format: str = "BGR",
    ):
        if num_classes < 1:
            raise UserError(f"MODEL.ROI_HEADS.NUM_CLASSES must be >= 1, got {num_classes}")
        if len(anchor_sizes) != 1 or len(aspect_ratios) != 1:
            raise UserError("MODEL.ANCHOR_GENERATOR: C4 has one feature map, so SIZES and ASPECT_RATIOS take one list each")
        if width_divisor < 1:
            raise UserError(f"MODEL.FBNET_V2.WIDTH_DIVISOR must be >= 1 (1: no rounding), got {width_divisor}")
        if not 0.0 <= drop_connect_rate < 1.0:
            raise UserError(f"MODEL.FBNET_V2.DROP_CONNECT_RATE must be in [0, 1), got {drop_connect_rate}")
        for key, beta in (("MODEL.RPN", rpn_smooth_l1_beta), ("MODEL.ROI_BOX_HEAD", box_smooth_l1_beta)):
            if beta < 0:
                raise UserError(f"{key}.SMOOTH_L1_BETA must be >= 0 (0: L1 loss), got {beta}")
        make_norm = norm_factory(norm, norm_groups)
        # mobile_cv's builder gives every part's blocks the same arguments (d2go's basic_args)
        blocks = (make_norm, width_divisor, drop_connect_rate)
        backbone = FBNetC4Backbone(arch.trunk, *blocks)
        anchors = SizeMajorAnchorGenerator(anchor_sizes, aspect_ratios, TRUNK_OUTPUT_STRIDE)
        rpn_head = FBNetRPNHead(arch.rpn, backbone.out_channels, anchors.num_anchors_per_location()[0], *blocks)
        rpn_low, rpn_high = iou_bounds(rpn_iou_thresholds, "MODEL.RPN.IOU_THRESHOLDS")
        rpn = FBNetRPN(
            anchors, rpn_head, rpn_high, rpn_low, rpn_batch_size_per_image, rpn_positive_fraction,
            dict(training=rpn_pre_nms_topk[0], testing=rpn_pre_nms_topk[1]),
            dict(training=rpn_post_nms_topk[0], testing=rpn_post_nms_topk[1]),
            rpn_nms_thresh, smooth_l1_beta=rpn_smooth_l1_beta,
        )
        box_head = FBNetBoxHead(arch.box_head, backbone.out_channels, *blocks)
        roi_low, roi_high = iou_bounds(roi_iou_thresholds, "MODEL.ROI_HEADS.IOU_THRESHOLDS")
        roi_heads = FBNetRoIHeads(
            RoIPool(box_pooler_resolution, pooler_sampling_ratio[0], pooler_aligned[0]),
            box_head,
            FBNetBoxPredictor(box_head.out_channels, num_classes),
            roi_high, roi_low, roi_batch_size_per_image, roi_positive_fraction,
            None,  # box regression weights: detectron2's (10, 10, 5, 5)
            score_thresh_test, nms_thresh_test, detections_per_image,
            mask_roi_pool=RoIPool(mask_pooler_resolution, pooler_sampling_ratio[1], pooler_aligned[1]),
            mask_head=FBNetMaskHead(arch.mask_head, backbone.out_channels, num_classes, *blocks),
            mask_predictor=BackgroundMaskSlot(),
            smooth_l1_beta=box_smooth_l1_beta,
        )
        transform = FBNetTransform(
            min_size_train, max_size_train, min_size_test, max_size_test, pixel_mean, pixel_std, input_format,
            size_divisibility=backbone.size_divisibility,
        )
        super().__init__(backbone, rpn, roi_heads, transform)
        self.arch = arch
        self.num_classes = num_classes
        backbone.freeze(freeze_at)


_POOLER_TYPES = {"roialignv2": True, "roialign": False}


def _pooler_aligned(cfg: Mapping[str, Any], head: str) -> bool:
    kind = str(cfg["MODEL"][head]["POOLER_TYPE"])
    if kind.lower() not in _POOLER_TYPES:
        raise UserError(f"MODEL.{head}.POOLER_TYPE: unknown pooler {kind!r}; expected ROIAlignV2 or ROIAlign")
    return _POOLER_TYPES[kind.lower()]


def build_model(cfg: Mapping[str, Any]) -> FBNetV3IS:
    """The FBNetV3IS a config describes (weights are loaded separately: nars.model.weights)."""
    m, inp = cfg["MODEL"], cfg["INPUT"]
    fb, rpn, roi = m["FBNET_V2"], m["RPN"], m["ROI_HEADS"]
    min_train = inp["MIN_SIZE_TRAIN"]
    return FBNetV3IS(
        resolve_arch(fb["ARCH"]),
        roi["NUM_CLASSES"],
        norm=canonical_norm(fb["NORM"]),
        norm_groups=fb["NORM_GROUPS"],
        width_divisor=fb["WIDTH_DIVISOR"],
        drop_connect_rate=fb["DROP_CONNECT_RATE"],
        freeze_at=m["BACKBONE"]["FREEZE_AT"],
        anchor_sizes=m["ANCHOR_GENERATOR"]["SIZES"],
        aspect_ratios=m["ANCHOR_GENERATOR"]["ASPECT_RATIOS"],
        rpn_iou_thresholds=rpn["IOU_THRESHOLDS"],
        rpn_batch_size_per_image=rpn["BATCH_SIZE_PER_IMAGE"],
        rpn_positive_fraction=rpn["POSITIVE_FRACTION"],
        rpn_pre_nms_topk=(rpn["PRE_NMS_TOPK_TRAIN"], rpn["PRE_NMS_TOPK_TEST"]),
        rpn_post_nms_topk=(rpn["POST_NMS_TOPK_TRAIN"], rpn["POST_NMS_TOPK_TEST"]),
        rpn_nms_thresh=rpn["NMS_THRESH"],
        rpn_smooth_l1_beta=rpn["SMOOTH_L1_BETA"],
        roi_iou_thresholds=roi["IOU_THRESHOLDS"],
        roi_batch_size_per_image=roi["BATCH_SIZE_PER_IMAGE"],
        roi_positive_fraction=roi["POSITIVE_FRACTION"],
        box_smooth_l1_beta=m["ROI_BOX_HEAD"]["SMOOTH_L1_BETA"],
        box_pooler_resolution=m["ROI_BOX_HEAD"]["POOLER_RESOLUTION"],
        mask_pooler_resolution=m["ROI_MASK_HEAD"]["POOLER_RESOLUTION"],
        pooler_sampling_ratio=(m["ROI_BOX_HEAD"]["POOLER_SAMPLING_RATIO"], m["ROI_MASK_HEAD"]["POOLER_SAMPLING_RATIO"]),
        pooler_aligned=(_pooler_aligned(cfg, "ROI_BOX_HEAD"), _pooler_aligned(cfg, "ROI_MASK_HEAD")),
        score_thresh_test=roi["SCORE_THRESH_TEST"],
        nms_thresh_test=roi["NMS_THRESH_TEST"],
        detections_per_image=cfg["TEST"]["DETECTIONS_PER_IMAGE"],
        min_size_train=[min_train] if isinstance(min_train, int) else min_train,
        max_size_train=inp["MAX_SIZE_TRAIN"],
        min_size_test=inp["MIN_SIZE_TEST"],
        max_size_test=inp["MAX_SIZE_TEST"],
        pixel_mean=m["PIXEL_MEAN"],
        pixel_std=m["PIXEL_STD"],
        input_format=inp["FORMAT"],
    )
