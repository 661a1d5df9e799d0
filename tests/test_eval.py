"""COCO evaluation: ground truth as predictions scores 1.0, nothing scores 0, ids map back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from nars.data.coco import CocoInstances
from nars.engine.evaluator import CocoEvaluator, coco_metrics, instances_to_coco, load_coco_gt


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """Two images, non-contiguous category ids (5, 9), polygon / RLE / uncompressed-RLE masks,
    a crowd region, and annotations without ``area``."""
    sizes = {1: (40, 40), 2: (30, 50)}
    (tmp_path / "images").mkdir()
    for image_id, (h, w) in sizes.items():
        Image.fromarray(np.full((h, w, 3), 90 * image_id, np.uint8)).save(tmp_path / "images" / f"{image_id}.png")
    square = np.zeros((40, 40), np.uint8)
    square[5:15, 20:32] = 1
    blob = np.zeros((30, 50), np.uint8)
    blob[10:25, 30:45] = 1
    uncompressed = mask_util.decode(mask_util.encode(np.asfortranarray(blob)))
    counts, value, run = [], 0, 0
    for pixel in uncompressed.flatten(order="F"):  # column-major runs, starting with zeros
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 10], "iscrowd": 0,
         "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [20, 5, 12, 10], "segmentation": _rle(square)},
        {"id": 3, "image_id": 2, "category_id": 9, "bbox": [30, 10, 15, 15], "iscrowd": 0,
         "segmentation": {"size": [30, 50], "counts": counts}},
        {"id": 4, "image_id": 2, "category_id": 5, "bbox": [0, 0, 20, 8], "iscrowd": 1, "area": 160,
         "segmentation": _rle(np.pad(np.ones((8, 20), np.uint8), ((0, 22), (0, 30))))},
    ]
    data = {"images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in sizes.items()],
            "annotations": annotations, "categories": [{"id": 9, "name": "b"}, {"id": 5, "name": "a"}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    return tmp_path


def _perfect_outputs(dataset: CocoInstances) -> tuple[list[dict], list[dict]]:
    """Detections equal to the ground truth, as the model returns them."""
    targets, outputs = [], []
    for i in range(len(dataset)):
        _, target = dataset[i]
        n = len(target["labels"])
        targets.append(target)
        outputs.append({"boxes": target["boxes"], "labels": target["labels"], "scores": torch.linspace(1.0, 0.9, n),
                        "masks": target["masks"][:, None].float()})
    return targets, outputs


def test_ground_truth_as_predictions_scores_one(coco_dir):
    dataset = CocoInstances(coco_dir / "gt.json", coco_dir / "images")
    assert dataset.label_to_category_id == {1: 5, 2: 9}
    evaluator = CocoEvaluator(dataset.json_path, dataset.label_to_category_id)
    targets, outputs = _perfect_outputs(dataset)
    evaluator.process(targets, outputs)
    evaluator.process(targets, outputs)  # an image seen twice counts once
    metrics = evaluator.evaluate()
    for kind in ("bbox", "segm"):
        assert metrics[kind]["AP"] == pytest.approx(1.0)
        assert metrics[kind]["AP50"] == pytest.approx(1.0) and metrics[kind]["AP75"] == pytest.approx(1.0)
        assert metrics[kind]["APs"] == pytest.approx(1.0)
        assert metrics[kind]["APm"] is None and metrics[kind]["APl"] is None  # no such ground truth: undefined
    assert {r["category_id"] for r in evaluator.predictions()} == {5, 9}


def test_no_predictions_score_zero(coco_dir):
    gt = load_coco_gt(coco_dir / "gt.json")
    for kind in ("bbox", "segm"):
        metrics = coco_metrics(gt, [], kind)
        assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["APs"] == 0.0
        assert metrics["APl"] is None
    evaluator = CocoEvaluator(coco_dir / "gt.json", {1: 5, 2: 9})
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
             "masks": torch.zeros(0, 1, 40, 40)}
    evaluator.process([{"image_id": 1}, {"image_id": 2}], [empty, empty])
    assert evaluator.evaluate()["segm"]["AP"] == 0.0


def test_missing_area_and_iscrowd_are_filled_from_the_masks(coco_dir):
    gt = load_coco_gt(coco_dir / "gt.json")
    anns = gt.loadAnns([1, 2, 3])
    assert [a["iscrowd"] for a in anns] == [0, 0, 0]
    assert anns[1]["area"] == 120.0 and anns[2]["area"] == 225.0


def test_results_are_coco_format():
    masks = torch.zeros(2, 1, 8, 10)
    masks[0, 0, 1:4, 2:6] = 0.9
    masks[1, 0, 5:7, :] = 0.4  # below the 0.5 threshold: an empty mask
    output = {"boxes": torch.tensor([[2.0, 1.0, 6.0, 4.0], [0.0, 5.0, 10.0, 7.0]]), "labels": torch.tensor([2, 1]),
              "scores": torch.tensor([0.8, 0.3]), "masks": masks}
    results = instances_to_coco(output, 7, {1: 11, 2: 22})
    assert [r["category_id"] for r in results] == [22, 11]
    assert results[0]["bbox"] == [2.0, 1.0, 4.0, 3.0] and results[0]["image_id"] == 7
    assert mask_util.area(results[0]["segmentation"]) == 12 and mask_util.area(results[1]["segmentation"]) == 0
    json.dumps(results)


def test_per_image_ap_scores_each_image_on_its_own(coco_dir):
    """Image 1 detected perfectly, image 2's one object missed: 1 and 0, each on its own image
    (COCOeval's accumulate over a subset of images would score image 1 for image 2)."""
    from nars.engine.evaluator import per_image_ap

    dataset = CocoInstances(coco_dir / "gt.json", coco_dir / "images")
    evaluator = CocoEvaluator(dataset.json_path, dataset.label_to_category_id)
    targets, outputs = _perfect_outputs(dataset)
    evaluator.process(targets[:1], outputs[:1])
    evaluator.process(targets[1:], [{k: v[:0] for k, v in outputs[1].items()}])
    evaluator.evaluate()
    for kind in ("bbox", "segm"):
        assert evaluator.per_image(kind) == pytest.approx({1: 1.0, 2: 0.0})
    gt = load_coco_gt(coco_dir / "gt.json")
    assert per_image_ap(gt, evaluator.predictions(), "segm", [2, 1]) == pytest.approx({1: 1.0, 2: 0.0})
