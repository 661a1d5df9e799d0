"""FBNetV3IS against d2go's own outputs (``tests/data/d2go_golden``: a copy of the reference
folder of the same name; its README in ``manifest.json``'s provenance, tolerances below).

The golden data was computed by d2go + detectron2 + mobile_cv (DefaultPredictor path) for a
FBNetV3_A_dsmask checkpoint with d2go key names. Here the checkpoint is loaded and the
images run exactly as ``nars predict`` does (``load_predictor``, ``read_rgb``,
``run_image``), and every stored field is matched within the reference's tolerances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nars.config import load_config
from nars.engine.inference import load_predictor, read_rgb, run_image
from nars.model.transform import binary_masks

GOLDEN = Path(__file__).parent / "data" / "d2go_golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
IMAGES = [item["file"] for item in MANIFEST["images"]]

SCORE_TOL, BOX_TOL, MASK_IOU_MIN = 1e-3, 0.5, 0.98


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return (inter / (area(a)[:, None] + area(b)[None] - inter).clamp(min=1e-12)).numpy()


def _match(g_boxes, g_classes, boxes, classes) -> dict[int, int]:
    """Golden index -> NARS index: same class, best unused box IoU >= 0.5, in golden order."""
    iou, used, pairs = _iou(g_boxes, boxes), set(), {}
    for i in range(len(g_boxes)):
        candidates = [j for j in range(len(boxes)) if j not in used and classes[j] == g_classes[i] and iou[i, j] >= 0.5]
        if candidates:
            pairs[i] = max(candidates, key=lambda j: iou[i, j])
            used.add(pairs[i])
    return pairs


@pytest.fixture(scope="module")
def predictor():
    cfg = load_config(GOLDEN / "nars_config.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as d2go's outputs were made; given back after the module
    model, device = load_predictor(cfg, str(GOLDEN / "golden_model.pth"))
    rec: dict[str, object] = {}
    model.transform.register_forward_hook(lambda m, a, o: rec.update(batch=o[0]))
    model.backbone.register_forward_hook(lambda m, a, o: rec.update(trunk3=o["trunk3"].contiguous()))
    model.roi_heads.register_forward_hook(lambda m, a, o: rec.update(rois=o[0][0]))
    filter_proposals = model.rpn.filter_proposals

    def recording_filter(*args, **kwargs):
        boxes, scores = filter_proposals(*args, **kwargs)
        rec.update(proposals=boxes[0], proposal_scores=scores[0])
        return boxes, scores

    model.rpn.filter_proposals = recording_filter
    yield cfg, model, device, rec
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", IMAGES)
def test_predict_path_matches_d2go(predictor, name):
    cfg, model, device, rec = predictor
    g = dict(np.load(GOLDEN / name.replace(".png", ".npz")))
    out = run_image(model, read_rgb(GOLDEN / name), device)

    # input: d2go's size (int(x + 0.5)), no padding, PIL's pixels
    batch = rec["batch"]
    assert list(batch.image_sizes[0]) == g["resized_hw"].tolist()
    assert list(batch.tensors.shape[-2:]) == g["batched_hw"].tolist()
    mean = torch.tensor(cfg["MODEL"]["PIXEL_MEAN"])[:, None, None]
    pixels = (batch.tensors[0].cpu() * torch.tensor(cfg["MODEL"]["PIXEL_STD"])[:, None, None] + mean).numpy()
    assert np.abs(pixels - g["resized_image"]).max() <= 1.0

    # trunk features, on that input
    assert rec["trunk3"].shape == g["trunk3"].shape
    assert np.abs(rec["trunk3"].cpu().numpy() - g["trunk3"]).max() <= 1e-4

    # proposals, as sets: every d2go proposal has one within 0.01 px and 1e-4 in logit
    props, probs = rec["proposals"].cpu().numpy(), rec["proposal_scores"].cpu().numpy()
    assert len(props) == len(g["proposal_boxes"])
    g_probs = 1 / (1 + np.exp(-g["proposal_logits"].astype(np.float64)))
    for box, prob in zip(g["proposal_boxes"], g_probs):
        close = np.abs(props - box).max(1) <= 0.01
        assert close.any() and np.abs(probs[close] - prob).min() <= 1e-4 / 4  # sigmoid' <= 1/4

    # detections: as many; matched by class and box; the last ones may swap at a score tie
    n = len(g["scores"])
    assert len(out["scores"]) == n
    classes = (out["labels"] - 1).numpy()
    pairs = _match(g["pred_boxes"], g["pred_classes"], out["boxes"].numpy(), classes)
    tie = g["scores"][-1] - g["score_after_cap"] < SCORE_TOL
    unmatched = [i for i in range(n) if i not in pairs]
    assert not unmatched or (tie and all(g["scores"][i] - g["score_after_cap"] < SCORE_TOL for i in unmatched))
    masks = binary_masks(out["masks"]).numpy()
    rois = rec["rois"]
    for i, j in pairs.items():
        assert np.abs(out["boxes"][j].numpy() - g["pred_boxes"][i]).max() <= BOX_TOL
        assert abs(out["scores"][j].item() - g["scores"][i]) <= SCORE_TOL
        union = (masks[j] | g["pred_masks"][i].astype(bool)).sum()
        assert union == 0 or (masks[j] & g["pred_masks"][i].astype(bool)).sum() / union >= MASK_IOU_MIN
        # before the paste: boxes in resized pixels and 28x28 probabilities
        assert np.abs(rois["boxes"][j].cpu().numpy() - g["roi_boxes"][i]).max() <= BOX_TOL
        assert np.abs(rois["masks"][j, 0].cpu().numpy() - g["mask_probs"][i]).max() <= 1e-3
