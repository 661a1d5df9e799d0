"""detectron2/d2go semantics around the network: resize, padding, paste, empty boxes, losses,
mask targets, initialisation and which weights are evaluated.

Where torchvision's own function computes the same thing with other constants, it serves as
the reference (the only change must be the constant); elsewhere the expected values are
detectron2's rules worked out by hand.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.detection.roi_heads import fastrcnn_loss

from engine_helpers import data_overrides, make_shapes
from nars.engine.evaluator import evaluate_checkpoint, recipe_metrics, with_ema
from nars.model.fbnetv3is import build_model
from nars.model.rcnn import binary_mask_targets
from nars.model.transform import paste_masks, resize_uint8, resized_shape


def test_resized_shape_rounds_as_detectron2():
    assert resized_shape(97, 150, 128, 160) == (103, 160)  # 103.5 -> 103 via max size, int(x + 0.5)
    assert resized_shape(181, 97, 128, 160) == (160, 86)
    assert resized_shape(128, 128, 128, 160) == (128, 128)
    assert resized_shape(480, 640, 224, 320) == (224, 299)  # 298.67 rounds up (torchvision floors: 298)


def test_resize_is_pil_bilinear_on_uint8():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in ((20, 29), (80, 111)):  # down (antialiased) and up, on noise (rounding shows)
        pil = np.asarray(Image.fromarray(pixels).resize(size[::-1], Image.BILINEAR)).transpose(2, 0, 1)
        ours = resize_uint8(torch.from_numpy(pixels.transpose(2, 0, 1).copy()), size)
        assert ours.dtype == torch.uint8 and np.array_equal(ours.numpy(), pil)


def test_batches_are_padded_only_to_the_largest_image(tiny_cfg):
    model = build_model(tiny_cfg()).eval()
    batch, _ = model.transform([torch.rand(3, 50, 70), torch.rand(3, 64, 64)])
    assert batch.image_sizes == [(64, 90), (64, 64)]
    assert tuple(batch.tensors.shape[-2:]) == (64, 90)  # not 64 x 96
    assert (batch.tensors[1, :, :, 64:] == 0).all()
    # anchors sit on the stride-16 grid whatever the padded size (4 x 6 cells here)
    features = model.backbone(batch.tensors)
    anchors = model.rpn.anchor_generator(batch, list(features.values()))[0].reshape(4, 6, -1, 4)
    centres = (anchors[..., :2] + anchors[..., 2:]) / 2
    assert torch.allclose(centres[1, 2, 0], torch.tensor([32.0, 16.0]))


def test_training_resize_scales_boxes_and_masks(tiny_cfg):
    model = build_model(tiny_cfg("INPUT.MIN_SIZE_TRAIN", "[32]", "INPUT.MAX_SIZE_TRAIN", "1000")).train()
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:24, 16:48] = 1
    target = {"boxes": torch.tensor([[16.0, 8.0, 48.0, 24.0]]), "labels": torch.tensor([1]), "masks": masks}
    batch, (out,) = model.transform([torch.rand(3, 64, 64)], [target])
    assert batch.image_sizes == [(32, 32)]
    assert torch.equal(out["boxes"], torch.tensor([[8.0, 4.0, 24.0, 12.0]]))
    expected = torch.zeros(32, 32, dtype=torch.uint8)
    expected[4:12, 8:24] = 1
    assert out["masks"].dtype == torch.uint8 and torch.equal(out["masks"][0], expected)
    assert torch.equal(target["masks"], masks)  # the caller's target is left alone


def test_paste_samples_the_mask_into_the_box():
    mask = torch.zeros(1, 4, 4)
    mask[0, :, 2:] = 1.0  # right half of the box
    pasted = paste_masks(mask, torch.tensor([[10.0, 20.0, 18.0, 28.0]]), (40, 40))
    assert pasted.shape == (1, 1, 40, 40)
    binary = pasted[0, 0] >= 0.5
    assert binary.sum() == 8 * 4 and binary[20:28, 14:18].all()  # exactly the box's right half
    assert pasted[0, 0, :, :9].abs().max() == 0 and pasted[0, 0, :, 20:].abs().max() == 0  # beyond box +- 1 px
    # against the formula: pixel centres mapped into the mask's [-1, 1] grid, bilinear
    x = (torch.arange(9, 20) + 0.5 - 10) / 8 * 2 - 1
    row = F.grid_sample(mask[None], torch.stack([x, torch.zeros_like(x)], -1)[None, None], align_corners=False)
    assert torch.allclose(pasted[0, 0, 24, 9:20], row[0, 0, 0])


def test_tiny_detections_survive_until_empty(tiny_cfg):
    model = build_model(tiny_cfg()).eval()
    heads = model.roi_heads
    proposals = [torch.tensor([[10.0, 10.0, 10.001, 10.002], [5.0, 5.0, 5.0, 9.0]])]
    logits = torch.zeros(2, 4)
    logits[:, 1] = 5.0
    boxes, scores, labels = heads.postprocess_detections(logits, torch.zeros(2, 16), proposals, [(64, 64)])
    assert len(boxes[0]) == 2  # torchvision drops boxes under 1e-2 px; detectron2 keeps them here
    out = model.transform.postprocess([{"boxes": boxes[0], "scores": scores[0], "labels": labels[0],
                                        "masks": torch.ones(2, 1, 28, 28)}], [(64, 64)], [(128, 128)])[0]
    assert len(out["boxes"]) == 1 and torch.allclose(out["boxes"][0], torch.tensor([20.0, 20.0, 20.002, 20.004]))


def test_box_losses_are_l1_by_default_and_torchvision_at_its_beta(tiny_cfg):
    torch.manual_seed(0)
    logits, regression = torch.randn(6, 4), torch.randn(6, 16)
    labels, targets = [torch.tensor([0, 1, 3, 0, 2, 1])], [torch.randn(6, 4)]
    heads = build_model(tiny_cfg()).roi_heads
    losses = heads.box_loss(logits, regression, labels, targets)
    fg = labels[0] > 0
    l1 = (regression.reshape(6, 4, 4)[fg, labels[0][fg]] - targets[0][fg]).abs().sum() / 6
    assert torch.allclose(losses["loss_box_reg"], l1)
    heads.smooth_l1_beta = 1 / 9
    reference = fastrcnn_loss(logits, regression, labels, targets)
    assert torch.allclose(torch.stack(list(heads.box_loss(logits, regression, labels, targets).values())),
                          torch.stack(reference))


def test_rpn_loss_is_normalised_by_the_sampled_batch(tiny_cfg):
    rpn = build_model(tiny_cfg("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "8")).rpn
    labels = [torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0, 0.0])]  # 6 anchors can be sampled of 8
    objectness, deltas, targets = torch.randn(6, 1), torch.randn(6, 4), [torch.randn(6, 4)]
    cls, box = rpn.compute_loss(objectness, deltas, labels, targets)
    keep = labels[0] >= 0
    bce = F.binary_cross_entropy_with_logits(objectness[keep, 0], labels[0][keep], reduction="sum")
    assert torch.allclose(cls, bce / 8)  # detectron2: / (BATCH_SIZE_PER_IMAGE x images), not / 6
    assert torch.allclose(box, (deltas[:2] - targets[0][:2]).abs().sum() / 8)


def test_mask_targets_are_binary_and_aligned():
    gt = torch.zeros(2, 32, 32)
    gt[0, 8:16, 8:24] = 1
    gt[1, :, :] = 1
    boxes = torch.tensor([[8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 4.0, 4.0]])
    targets = binary_mask_targets(gt, boxes, torch.tensor([0, 1]), 4)
    assert set(targets.unique().tolist()) <= {0.0, 1.0}
    expected = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(targets[0], expected)  # top half of the box; aligned=False would smear it
    assert torch.equal(targets[1], torch.ones(4, 4))


def test_initialisation_follows_mobile_cv_and_detectron2(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    logits = model.roi_heads.mask_head.predictor.mask_fcn_logits
    fan_out = logits.out_channels  # 1x1 kernel
    assert abs(logits.weight.std().item() - (2.0 / fan_out) ** 0.5) < 0.15 * (2.0 / fan_out) ** 0.5
    assert (logits.bias == 0).all()
    predictor = model.roi_heads.box_predictor
    assert abs(predictor.cls_score.weight.std().item() - 0.01) < 0.002
    assert abs(predictor.bbox_pred.weight.std().item() - 0.001) < 0.0002


def test_evaluation_reads_the_weights_then_their_ema_copy(tiny_cfg, tmp_path):
    shapes = make_shapes(tmp_path / "data", train=2, val=2)
    cfg = tiny_cfg(*data_overrides(shapes), "MODEL.ROI_HEADS.NUM_CLASSES", "4", "DATALOADER.NUM_WORKERS", "0")
    torch.manual_seed(0)
    model = build_model(cfg)
    state = model.state_dict()
    ema = {k: (torch.zeros_like(v) if k.endswith("cls_score.bias") else v) for k, v in state.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state, "ema_state": ema}, path)
    cfg["MODEL_EMA"]["ENABLED"] = True
    metrics = evaluate_checkpoint(cfg, str(path)).metrics
    assert set(metrics) == {"bbox", "segm", "ema_bbox", "ema_segm"}
    assert recipe_metrics(metrics) == {"bbox": metrics["ema_bbox"], "segm": metrics["ema_segm"]}
    cfg["MODEL_EMA"]["ENABLED"] = False
    assert set(evaluate_checkpoint(cfg, str(path)).metrics) == {"bbox", "segm"}
    assert recipe_metrics(with_ema({"segm": {"AP": 0.1}}, {"segm": {"AP": 0.2}})) == {"segm": {"AP": 0.2}}
