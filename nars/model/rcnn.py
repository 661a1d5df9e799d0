"""detectron2's R-CNN semantics on torchvision's RPN and RoI heads.

torchvision's classes fit FBNetV3IS except where detectron2 (and so d2go) computes
something else; exactly those parts are replaced here:

- anchors sit on the feature map's known stride (16), not on padded size / grid size, which
  is wrong for unpadded batches; their order is detectron2's (size-major, then ratio);
- proposals drop only empty boxes (``nonempty()``: width and height > 0) and detections
  none before they are rescaled, where torchvision drops boxes under 1e-3 / 1e-2 px;
- box regression losses are smooth L1 with ``SMOOTH_L1_BETA`` (detectron2's default 0.0:
  plain L1; torchvision hard-codes 1/9); the RPN's losses are normalised by
  ``BATCH_SIZE_PER_IMAGE x images`` as detectron2's are;
- mask targets are binary: each matched ground-truth bitmask RoIAligned (aligned) into the
  proposal at the mask head's resolution and thresholded at 0.5 (detectron2's
  ``BitMasks.crop_and_resize``), where torchvision regresses soft, unaligned targets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

# remove_small_boxes keeps w >= min_size; the smallest positive float32 makes that w > 0.
_POSITIVE = float(np.nextafter(np.float32(0), np.float32(1)))


class SizeMajorAnchorGenerator(AnchorGenerator):
    """detectron2's anchors on one feature map of a known ``stride``: cell anchors in
    size-major order (then aspect ratio, no rounding), so the RPN regressor's channels mean
    what they mean in d2go checkpoints, shifted by ``stride`` per cell (offset 0)."""

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]], stride: int):
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        self.stride = stride

    def generate_anchors(
        self,
        scales: Sequence[int],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        scales_t = torch.as_tensor(scales, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h = (scales_t[:, None] * torch.sqrt(ratios)[None, :]).reshape(-1)
        w = (scales_t[:, None] / torch.sqrt(ratios)[None, :]).reshape(-1)
        return torch.stack([-w, -h, w, h], dim=1) / 2

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        device = feature_maps[0].device
        stride = torch.tensor(self.stride, dtype=torch.int64, device=device)
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, [[stride, stride]] * len(grid_sizes)))
        return [anchors] * len(image_list.image_sizes)


class FBNetRPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's box loss, loss normaliser and empty-box rule."""

    def __init__(self, *args, smooth_l1_beta: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.min_size = _POSITIVE

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos_inds = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos_inds, torch.where(torch.cat(neg))[0]])
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[pos_inds], torch.cat(regression_targets)[pos_inds], beta=self.smooth_l1_beta,
            reduction="sum",
        )
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels)[sampled], reduction="sum"
        )
        return objectness_loss / normalizer, box_loss / normalizer


def binary_mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """detectron2's ``BitMasks.crop_and_resize``: ``[N, size, size]`` float 0/1 targets."""
    rois = torch.cat([matched_idxs.to(boxes)[:, None], boxes], dim=1)
    crops = roi_align(gt_masks[:, None].to(boxes), rois, (size, size), 1.0, 0, aligned=True)[:, 0]
    return (crops >= 0.5).to(boxes.dtype)


class FBNetRoIHeads(RoIHeads):
    """torchvision's box and mask RoI heads with detectron2's losses and post-processing."""

    def __init__(self, *args, smooth_l1_beta: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta

    def box_loss(
        self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> dict[str, Tensor]:
        """Cross-entropy over every sampled RoI; class-specific regression of the foreground
        ones, summed and divided by the number of sampled RoIs (detectron2's FastRCNN)."""
        labels_t, targets = torch.cat(labels), torch.cat(regression_targets)
        fg = torch.where(labels_t > 0)[0]
        deltas = box_regression.reshape(len(class_logits), -1, 4)[fg, labels_t[fg]]
        box = F.smooth_l1_loss(deltas, targets[fg], beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_classifier": F.cross_entropy(class_logits, labels_t),
                "loss_box_reg": box / max(labels_t.numel(), 1)}

    def mask_loss(self, mask_logits: Tensor, proposals: list[Tensor], targets: list[dict[str, Tensor]],
                  matched_idxs: list[Tensor]) -> Tensor:
        """Per-pixel binary cross-entropy of each foreground RoI's own class mask."""
        size = mask_logits.shape[-1]
        labels = torch.cat([t["labels"][i] for t, i in zip(targets, matched_idxs)])
        mask_targets = torch.cat([binary_mask_targets(t["masks"], p, i, size)
                                  for t, p, i in zip(targets, proposals, matched_idxs)])
        if mask_targets.numel() == 0:
            return mask_logits.sum() * 0
        logits = mask_logits[torch.arange(len(labels), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(logits, mask_targets)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if self.training:
            losses = self.box_loss(class_logits, box_regression, labels, regression_targets)
            fg = [torch.where(lab > 0)[0] for lab in labels]
            mask_boxes = [p[i] for p, i in zip(proposals, fg)]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes)))
            losses["loss_mask"] = self.mask_loss(mask_logits, mask_boxes, targets,
                                                 [m[i] for m, i in zip(matched_idxs, fg)])
            return [], losses
        boxes, scores, classes = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))
        results = [{"boxes": b, "labels": c, "scores": s, "masks": m}
                   for b, s, c, m in zip(boxes, scores, classes, maskrcnn_inference(mask_logits, classes))]
        return results, {}

    def postprocess_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """detectron2's ``fast_rcnn_inference``: rows with non-finite outputs dropped,
        per-class boxes clipped, scores above the threshold, per-class NMS, the top
        detections kept; boxes of any size stay (``detector_postprocess`` drops empty ones)."""
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]  # shape, not len(): an ONNX trace keeps it dynamic
        all_boxes = self.box_coder.decode(box_regression, proposals).split(counts)
        all_scores = F.softmax(class_logits, -1).split(counts)
        out_boxes, out_scores, out_labels = [], [], []
        for boxes, scores, shape in zip(all_boxes, all_scores, image_shapes):
            finite = torch.isfinite(boxes).flatten(1).all(1) & torch.isfinite(scores).all(1)
            boxes, scores = boxes[finite], scores[finite]
            boxes = box_ops.clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)
            labels = torch.arange(1, num_classes, device=scores.device).expand(scores.shape[0], -1).reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
        return out_boxes, out_scores, out_labels
