"""``nars predict``: run a trained FBNetV3IS on image files; overlays and COCO results.

For each input image ``OUT/<name>.png`` shows the detections above the score threshold
(translucent masks, boxes, class names and scores), and ``OUT/predictions.json`` lists them
in COCO results format (``image_id`` is the image's 1-based position among the inputs, and
``file_name`` says which file it is). Class names and category ids come from the
checkpoint (NARS stores its training set's categories there) or the exported ONNX file
(``nars deploy`` copies them into its metadata), else from the config's dataset JSON when
that file exists, else they are ``class 1..C`` with ids 1..C.

Engines: ``torch`` runs a checkpoint in PyTorch; ``onnxruntime`` runs a ``nars deploy``
file (fp32 or int8), so what is deployed is what is looked at.

Inputs are files, or folders whose image files (by suffix, not recursive) are taken in
name order. A missing input is an error before anything is written; an image that cannot
be decoded is skipped with a warning and counted. Images are read as training reads them
(``nars.data.images.read_rgb``: images over 8 bits scaled by their own range).
"""

from __future__ import annotations

import colorsys
import copy
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from nars.data.images import UnreadableImage, read_rgb
from nars.engine.distributed import device_for, to_device
from nars.engine.evaluator import instances_to_coco
from nars.engine.loading import checkpoint_categories, load_run_weights
from nars.errors import UserError
from nars.fileio import atomic_write_bytes, atomic_write_text, make_dirs
from nars.model.fbnetv3is import FBNetV3IS, build_model
from nars.model.fuse import fuse_for_inference
from nars.model.transform import binary_masks

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
PREDICTIONS_FILE = "predictions.json"
MASK_ALPHA = 0.45


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders of images)."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            images += found
        elif item.is_file():
            images.append(item)
        else:
            raise UserError(f"{item}: no such image file or folder")
    return images


def read_categories(cfg: Mapping[str, Any], stored: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """``[{"id", "name"}]`` in label order: ``stored`` (a checkpoint's or an ONNX file's) when
    given, else as the module docstring says."""
    classes = cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"]
    categories = list(stored) if stored else None
    for split in ("TEST", "TRAIN"):
        json_path = cfg["DATASETS"][split]["JSON"]
        if categories is None and json_path and Path(json_path).is_file():
            try:
                categories = sorted(json.loads(Path(json_path).read_text(encoding="utf-8"))["categories"],
                                    key=lambda c: c["id"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{json_path}: cannot read its categories ({e})") from None
    if categories is None:
        categories = [{"id": label, "name": f"class {label}"} for label in range(1, classes + 1)]
    if len(categories) != classes:
        raise UserError(f"MODEL.ROI_HEADS.NUM_CLASSES is {classes} but the categories found name {len(categories)}")
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]


def _colour(label: int) -> tuple[int, int, int]:
    """A distinct, bright colour per class (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_overlay(image: Image.Image, output: Mapping[str, torch.Tensor], names: Sequence[str]) -> Image.Image:
    """``image`` with each detection's mask, box, class name and score (best drawn last)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    order = output["scores"].argsort().tolist()
    labels = output["labels"].tolist()
    if "masks" in output:
        masks = binary_masks(output["masks"]).cpu().numpy()
        for i in order:
            pixels[masks[i]] = (1 - MASK_ALPHA) * pixels[masks[i]] + MASK_ALPHA * np.array(_colour(labels[i]))
    canvas = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i in order:
        x0, y0, x1, y1 = output["boxes"][i].tolist()
        colour = _colour(labels[i])
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        text = f"{names[labels[i] - 1]} {output['scores'][i].item():.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        top_y = max(0.0, y0 - (bottom - top) - 2)
        draw.rectangle((x0, top_y, x0 + right - left + 2, top_y + bottom - top + 2), fill=colour)
        draw.text((x0 + 1, top_y + 1 - (top - y0)), text, fill=(0, 0, 0), font=font)
    return canvas


_read_rgb = read_rgb  # the name the d2go golden folder's compare_nars.py imports


def _overlay_name(path: Path, used: set[str]) -> str:
    name, n = f"{path.stem}.png", 1
    while name in used:
        name, n = f"{path.stem}_{n}.png", n + 1
    used.add(name)
    return name


@dataclass
class PredictionSummary:
    images: int
    skipped: int
    detections: int
    seconds: float  # model time

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def load_predictor(cfg: Mapping[str, Any], weights: str) -> tuple[FBNetV3IS, torch.device]:
    """The config's model with every tensor of ``weights``, on its device, fused for
    inference (nars.model.fuse)."""
    device = device_for(cfg["MODEL"]["DEVICE"])
    model = build_model(cfg)
    load_run_weights(model, weights, cfg["MODEL"]["WEIGHTS_EMA"], complete=True)
    return fuse_for_inference(to_device(model, device)), device


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as the model takes it: float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()).float().div_(255)


@torch.no_grad()
def run_image(model: FBNetV3IS, image: Image.Image, device: torch.device) -> dict[str, torch.Tensor]:
    """One image's detections (on the CPU), in its own pixel coordinates."""
    return {k: v.cpu() for k, v in model([image_tensor(image).to(device)])[0].items()}


ENGINES = ("torch", "onnxruntime")


def check_engine(weights: str, engine: str) -> None:
    """``weights`` must be what ``engine`` runs: a checkpoint for torch, an exported ``.onnx``
    for onnxruntime (whose file check comes when it loads)."""
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if engine == "torch" and str(weights).lower().endswith(".onnx"):
        raise UserError(f"--weights {weights} is an ONNX model: add --engine onnxruntime")


def above(output: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """The detections scoring above ``threshold``: what the model gives with SCORE_THRESH_TEST
    ``threshold`` when the graph's own threshold is lower (a lower-scoring box never suppresses
    a higher one in NMS, and the top-k keeps the highest)."""
    keep = output["scores"] > threshold
    return {k: v[keep] for k, v in output.items()}


def image_runner(cfg: Mapping[str, Any], weights: str, engine: str, score_threshold: float
                 ) -> tuple[Callable[[Image.Image], dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """A call that gives one image's detections above ``score_threshold`` with ``engine``,
    and the categories (module docstring) in label order."""
    check_engine(weights, engine)
    if engine == "onnxruntime":
        from nars.deploy.onnx import OnnxDetector  # onnxruntime loads only for this engine

        detector = OnnxDetector(weights)
        floor = detector.score_threshold
        if floor is not None and score_threshold < floor:
            raise UserError(f"--score-threshold {score_threshold} is below the {floor} {weights} was exported with "
                            "(MODEL.ROI_HEADS.SCORE_THRESH_TEST at nars deploy)")
        return (lambda image: above(detector([image])[0], score_threshold)), read_categories(cfg, detector.categories)
    cfg = copy.deepcopy(dict(cfg))
    cfg["MODEL"]["ROI_HEADS"]["SCORE_THRESH_TEST"] = score_threshold  # the model drops lower scores itself
    model, device = load_predictor(cfg, weights)
    return (lambda image: run_image(model, image, device)), read_categories(cfg, checkpoint_categories(weights))


@torch.no_grad()
def predict(cfg: Mapping[str, Any], weights: str, inputs: Sequence[str | Path], out_dir: str | Path,
            score_threshold: float = 0.5, engine: str = "torch") -> PredictionSummary:
    """Overlays and ``predictions.json`` for ``inputs`` in ``out_dir``, with ``engine``
    (``weights``: a checkpoint for torch, an exported ``.onnx`` for onnxruntime); everything
    is checked before the first file is written."""
    if not 0.0 <= score_threshold <= 1.0:
        raise UserError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    paths = find_images(inputs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    run, categories = image_runner(cfg, weights, engine, score_threshold)
    label_to_id = {label: c["id"] for label, c in enumerate(categories, start=1)}
    names = [c["name"] for c in categories]
    make_dirs(out_dir, "the --out folder")
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    summary = PredictionSummary(0, 0, 0, 0.0)
    for image_id, path in enumerate(paths, start=1):
        try:
            image = read_rgb(path)
        except UnreadableImage as e:
            logger.warning("%s: unreadable image (%s); skipped", path, e)
            summary.skipped += 1
            continue
        start = time.perf_counter()
        output = run(image)
        summary.seconds += time.perf_counter() - start
        summary.images += 1
        summary.detections += len(output["scores"])
        for entry in instances_to_coco(output, image_id, label_to_id):
            results.append({**entry, "file_name": str(path)})
        overlay = draw_overlay(image, output, names)
        atomic_write_bytes(out_dir / _overlay_name(path, used), _png_bytes(overlay), "the overlay")
    atomic_write_text(out_dir / PREDICTIONS_FILE, json.dumps(results) + "\n", "the predictions")
    return summary


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
