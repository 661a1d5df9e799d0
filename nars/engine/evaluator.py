"""COCO box and mask AP of FBNetV3IS detections, with pycocotools' COCOeval.

- Detections become COCO results: boxes as ``[x, y, w, h]``, masks thresholded as detectron2 does
  (``>= 0.5``) and RLE-encoded, contiguous labels mapped back to the dataset's category ids.
- Each process evaluates its shard of the images; results are gathered to the main
  process, which runs COCOeval, and the metrics are broadcast back to every process.
- An image seen twice (the dataset replaces an unreadable image by the next one) counts
  once; images that were never seen are left out of the evaluation.
- Metrics are fractions in [0, 1]: ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``, ``APm``,
  ``APl``. No detections at all give 0. A size range without ground truth in the evaluated
  images (COCOeval's -1, e.g. ``APl`` on small images) is ``None`` (JSON null): undefined,
  not a failure.
- Like detectron2, the box of a mask result is not passed to the ``segm`` evaluation, so
  the mask's own area decides its size range.
- As d2go's ``do_test``: a checkpoint's own (``"model"``) weights are evaluated, and with
  ``MODEL_EMA.ENABLED`` its EMA copy too, reported as the kinds ``ema_bbox`` / ``ema_segm``.
  A recipe with EMA delivers the averaged weights: :func:`recipe_metrics` picks them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from nars.data.coco import CocoInstances, dataset_from_config
from nars.data.loader import build_test_loader
from nars.engine import distributed as comm
from nars.engine.loading import checkpoint_has_ema, load_run_weights
from nars.errors import UserError
from nars.model.fbnetv3is import build_model
from nars.model.fuse import fuse_for_inference
from nars.model.transform import binary_masks

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

Metrics = dict[str, dict[str, float | None]]
EMA_PREFIX = "ema_"


def with_ema(metrics: Metrics, ema: Metrics) -> Metrics:
    """The model's metrics and its EMA copy's, as one dict (``segm`` and ``ema_segm`` ...)."""
    return {**metrics, **{EMA_PREFIX + kind: values for kind, values in ema.items()}}


def recipe_metrics(metrics: Metrics) -> Metrics:
    """``bbox``/``segm`` of the weights a recipe delivers: the EMA copy's when it was evaluated."""
    return {kind: metrics.get(EMA_PREFIX + kind, metrics[kind]) for kind in IOU_TYPES if kind in metrics}


def load_coco_gt(json_path: str | Path) -> COCO:
    """The ground truth as COCOeval reads it; a missing ``area`` is the mask's (or the box's)
    area and a missing ``iscrowd`` is 0, so hand-written files evaluate too."""
    try:
        data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{json_path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{json_path}: malformed JSON ({e})") from None
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    for ann in gt.dataset.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            has_mask = bool(ann.get("segmentation")) and ann["image_id"] in gt.imgs
            ann["area"] = float(mask_util.area(gt.annToRLE(ann))) if has_mask else float(ann["bbox"][2] * ann["bbox"][3])
    return gt


def instances_to_coco(output: Mapping[str, torch.Tensor], image_id: int,
                      label_to_category_id: Mapping[int, int]) -> list[dict[str, Any]]:
    """One image's detections (torchvision's output dict) as COCO result entries."""
    boxes = output["boxes"].detach().cpu().double()
    if len(boxes) == 0:
        return []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores, labels = output["scores"].detach().cpu().tolist(), output["labels"].detach().cpu().tolist()
    rles: list[dict[str, Any] | None] = [None] * len(scores)
    if "masks" in output:
        binary = binary_masks(output["masks"].detach()).cpu().numpy().astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    for box, score, label, rle in zip(xywh, scores, labels, rles):
        entry = {"image_id": int(image_id), "category_id": label_to_category_id[int(label)],
                 "bbox": [round(v, 2) for v in box], "score": round(float(score), 5)}
        if rle is not None:
            entry["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        results.append(entry)
    return results


def _results_for(gt: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """COCO's ``loadRes``, which cannot take an empty list; the box stays out of ``segm``."""
    if not results:
        empty = COCO()
        empty.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
        with contextlib.redirect_stdout(io.StringIO()):
            empty.createIndex()
        return empty
    key = "segmentation" if iou_type == "segm" else "bbox"
    drop = "bbox" if iou_type == "segm" else "segmentation"
    if any(key not in r for r in results):
        raise ValueError(f"{iou_type} evaluation needs '{key}' in every result")
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])


def coco_metrics(gt: COCO, results: list[dict[str, Any]], iou_type: str,
                 image_ids: Iterable[int] | None = None) -> dict[str, float | None]:
    """COCOeval's six AP numbers for ``iou_type`` over ``image_ids`` (all images by default)."""
    evaluator = COCOeval(gt, _results_for(gt, results, iou_type), iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(set(image_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (None if value < 0 else float(value)) for name, value in zip(METRICS, evaluator.stats[:6])}


def per_image_ap(gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: Iterable[int]) -> dict[int, float]:
    """Each image's own AP (IoU .50:.95, all areas, 100 detections, over the categories it has):
    two models scored on the same images pair up image by image, which separates them with far
    fewer images than their two dataset APs can. Images without ground truth are left out (AP
    undefined there). COCOeval runs per image: its ``accumulate`` mis-indexes a subset of the
    evaluated images."""
    evaluator = COCOeval(gt, _results_for(gt, results, iou_type), iou_type)
    out = {}
    for image_id in sorted(set(image_ids)):
        evaluator.params.imgIds = [image_id]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"][:, :, :, 0, -1]  # all areas, the most detections
        if (precision > -1).any():
            out[image_id] = float(precision[precision > -1].mean())
    return out


class CocoEvaluator:
    """Collects a dataset's detections (``process``), then scores them (``evaluate``)."""

    def __init__(self, json_path: str | Path, label_to_category_id: Mapping[int, int]):
        self.gt = load_coco_gt(json_path)
        self.label_to_category_id = dict(label_to_category_id)
        self.reset()

    def reset(self) -> None:
        self._results: dict[int, list[dict[str, Any]]] = {}
        self.merged: dict[int, list[dict[str, Any]]] = {}  # every process's results, on the main process

    def process(self, targets: list[Mapping[str, Any]], outputs: list[Mapping[str, torch.Tensor]]) -> None:
        for target, output in zip(targets, outputs):
            image_id = int(target["image_id"])
            if image_id not in self._results:
                self._results[image_id] = instances_to_coco(output, image_id, self.label_to_category_id)

    def evaluate(self) -> Metrics:
        """Metrics per IoU type, the same on every process."""
        metrics = None
        gathered = comm.all_gather_object(self._results)
        if comm.is_main_process():
            merged: dict[int, list[dict[str, Any]]] = {}
            for part in gathered:
                for image_id, results in part.items():
                    merged.setdefault(image_id, results)
            flat = [r for results in merged.values() for r in results]
            metrics = {t: coco_metrics(self.gt, flat, t, merged) for t in IOU_TYPES}
            self.merged = merged
        return comm.broadcast_object(metrics)

    def per_image(self, iou_type: str) -> dict[int, float]:
        """``per_image_ap`` of the last ``evaluate``'s images (main process; {} elsewhere)."""
        flat = [r for results in self.merged.values() for r in results]
        return per_image_ap(self.gt, flat, iou_type, self.merged) if self.merged else {}

    def predictions(self) -> list[dict[str, Any]]:
        """This process's COCO results, in image order."""
        return [r for image_id in sorted(self._results) for r in self._results[image_id]]


@dataclass
class Evaluation:
    metrics: Metrics
    images: int  # over all processes
    seconds: float  # model time, the slowest process

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


Detector = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


@torch.no_grad()
def run_on_dataset(detector: Detector, loader: Iterable[Any], evaluator: CocoEvaluator,
                   device: torch.device) -> Evaluation:
    """Score ``detector`` (images in, output dicts out: the model, or an exported graph) on
    ``loader``. Randomness is forked, so evaluating never changes a training run's RNG stream."""
    evaluator.reset()
    images, seconds = 0, 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch, targets in loader:
            start = time.perf_counter()
            outputs = detector([image.to(device) for image in batch])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            images += len(batch)
            evaluator.process(targets, outputs)
    metrics = evaluator.evaluate()
    counts = comm.all_gather_object((images, seconds))
    return Evaluation(metrics, sum(c[0] for c in counts), max(c[1] for c in counts))


def inference_on_dataset(model: nn.Module, loader: Iterable[Any], evaluator: CocoEvaluator,
                         device: torch.device) -> Evaluation:
    """Score ``model`` on ``loader``: a copy of it, fused for inference (nars.model.fuse), runs,
    so ``model`` itself is left as it was."""
    return run_on_dataset(fuse_for_inference(copy.deepcopy(model)), loader, evaluator, device)


def check_classes(cfg: Mapping[str, Any], dataset: CocoInstances) -> None:
    """The config's class count must be the dataset's."""
    classes = cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"]
    if dataset.num_classes != classes:
        raise UserError(f"MODEL.ROI_HEADS.NUM_CLASSES is {classes} but {dataset.json_path} has {dataset.num_classes} "
                        f"categories; set MODEL.ROI_HEADS.NUM_CLASSES {dataset.num_classes}")


def evaluation_setup(cfg: Mapping[str, Any]) -> tuple[Iterable[Any], CocoEvaluator]:
    """``DATASETS.TEST``'s loader (this process's shard) and an evaluator for it."""
    dataset = dataset_from_config(cfg, "TEST", train=False)
    check_classes(cfg, dataset)
    loader = build_test_loader(dataset, 1, cfg["DATALOADER"]["NUM_WORKERS"], distributed=comm.get_world_size() > 1)
    return loader, CocoEvaluator(dataset.json_path, dataset.label_to_category_id)


def evaluate_checkpoint(cfg: Mapping[str, Any], weights: str) -> Evaluation:
    """COCO AP of ``weights`` on ``DATASETS.TEST``: its ``"model"`` weights (the EMA copy
    instead when ``MODEL.WEIGHTS_EMA``), and its EMA copy as well when ``MODEL_EMA.ENABLED``
    and it has one; each process of a distributed launch takes its shard."""
    device = comm.device_for(cfg["MODEL"]["DEVICE"])
    model = build_model(cfg)
    use_ema = cfg["MODEL"]["WEIGHTS_EMA"]
    load_run_weights(model, weights, use_ema, complete=True)
    loader, evaluator = evaluation_setup(cfg)
    model = comm.to_device(model, device)
    result = inference_on_dataset(model, loader, evaluator, device)
    if cfg["MODEL_EMA"]["ENABLED"] and not use_ema and checkpoint_has_ema(weights):
        load_run_weights(model, weights, True, complete=True)
        ema = inference_on_dataset(model, loader, evaluator, device)
        result = Evaluation(with_ema(result.metrics, ema.metrics), result.images, result.seconds)
    return result


def evaluate_onnx(cfg: Mapping[str, Any], path: str | Path, threads: int | None = None,
                  progress: bool = False) -> Evaluation:
    """COCO AP on ``DATASETS.TEST`` of an exported graph (``nars deploy``, fp32 or int8) in
    onnxruntime, in this process; ``threads``: onnxruntime's intra-op threads (default: one
    per core). The graph keeps the score threshold it was exported with."""
    from nars.deploy.onnx import OnnxDetector  # onnxruntime loads only for this engine

    detector = OnnxDetector(path, threads)
    wanted = cfg["MODEL"]["ROI_HEADS"]["SCORE_THRESH_TEST"]
    if detector.score_threshold is not None and detector.score_threshold != wanted:
        logger.warning("%s was exported with score threshold %g, not the config's %g: its AP is for %g", path,
                       detector.score_threshold, wanted, detector.score_threshold)
    loader, evaluator = evaluation_setup(cfg)
    images = tqdm(loader, desc=f"eval {Path(path).name}", unit="image", disable=not progress, dynamic_ncols=True)
    return run_on_dataset(detector, images, evaluator, torch.device("cpu"))
