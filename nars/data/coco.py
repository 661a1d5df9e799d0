"""COCO instance-segmentation datasets (a JSON file and an image folder) for FBNetV3IS.

- Masks may be polygons or RLE (compressed or uncompressed); pycocotools decodes them.
- ``iscrowd`` regions are left out of the targets, as detectron2 does; the evaluator reads
  the JSON itself, so they stay in the evaluation ground truth.
- Category ids map to contiguous labels 1..C in increasing id order (0 is background).
- Images without annotations are kept: they teach the model what background looks like.
- Degenerate boxes (width or height < 1 px once clipped to the image) and empty masks are
  dropped and counted; each dataset logs one summary line.
- Training augmentation (``dataset_from_config`` with ``train``), in this order, on the raw
  image (the model resizes it afterwards): detectron2's ``RandomCrop`` when
  ``INPUT.CROP.ENABLED`` (boxes clipped to the crop, instances whose mask or box became empty
  dropped), then flips along the axes ``INPUT.RANDOM_FLIP`` names, each at p=0.5 on its own.
  Randomness comes from torch's default generator (``nars.data.loader`` seeds it per sample).
- Input mistakes are UserErrors naming the file: a missing JSON or image folder, malformed
  JSON, an entry that is not COCO, NaN or Inf in a ``bbox`` or ``segmentation`` (naming the
  annotation), an image entry whose file does not exist (checked when the dataset is built,
  with ``os.path``), a ``file_name`` that leaves the image folder (``../``, absolute) unless
  ``allow_outside_images`` (``DATASETS.ALLOW_OUTSIDE_IMAGES``).
- Images are read by ``nars.data.images.read_rgb`` (images over 8 bits scaled by their own
  range; a decompression bomb is a UserError).
- A corrupt or unreadable image (or one whose size differs from the JSON) found at load time
  is skipped: a warning names it, ``skipped`` grows (per process: each DataLoader worker
  counts its own) and the next image in the dataset is returned instead. Only a dataset in
  which no image can be read raises.

Items are ``(image, target)`` in torchvision's detection convention: ``image`` float32 RGB
[3, H, W] in [0, 1] (the model resizes and normalizes, see ``FBNetTransform``), ``target``
``{"boxes": float32 [N, 4] absolute xyxy, "labels": int64 [N], "masks": uint8 [N, H, W],
"image_id": int}``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch.utils.data import Dataset

from nars.data.images import UnreadableImage, read_rgb
from nars.errors import UserError

logger = logging.getLogger(__name__)

TRAIN_FLIP_PROB = 0.5
# INPUT.RANDOM_FLIP -> the tensor dims flipped (each with its own draw): -1 is x, -2 is y.
FLIP_DIMS: dict[str, tuple[int, ...]] = {"horizontal": (-1,), "vertical": (-2,), "both": (-1, -2), "none": ()}
CROP_TYPES = ("relative", "relative_range", "absolute", "absolute_range")


def _flip_dims(mode: str) -> tuple[int, ...]:
    if mode not in FLIP_DIMS:
        raise UserError(f"INPUT.RANDOM_FLIP must be one of {', '.join(FLIP_DIMS)}, got {mode!r}")
    return FLIP_DIMS[mode]


def _flip(image: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
          dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image, masks and xyxy boxes mirrored along ``dim`` (-1: x, -2: y)."""
    lo, hi = (0, 2) if dim == -1 else (1, 3)
    boxes = boxes.clone()
    boxes[:, [lo, hi]] = image.shape[dim] - boxes[:, [hi, lo]]
    return image.flip(dim), masks.flip(dim), boxes


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _randint(low: int, high: int) -> int:
    """Uniform in [low, high], from torch's default generator."""
    return int(torch.randint(low, high + 1, ()))


@dataclass(frozen=True)
class RandomCrop:
    """detectron2's ``RandomCrop(crop_type, crop_size)`` on an image and its instances.

    ``size`` is (h, w) fractions for the relative types ("relative_range": each drawn in
    [size, 1]), (h, w) pixels for "absolute" (at most the image), [min, max] pixels for
    "absolute_range" (each side drawn in it, at most the image).
    """

    kind: str
    size: tuple[float, float]

    def __post_init__(self) -> None:
        if self.kind not in CROP_TYPES:
            raise UserError(f"INPUT.CROP.TYPE must be one of {', '.join(CROP_TYPES)}, got {self.kind!r}")
        size = list(self.size)
        if len(size) != 2 or not all(map(_is_number, size)):
            raise UserError(f"INPUT.CROP.SIZE must be two numbers, got {size!r}")
        if self.kind.startswith("relative") and not all(0 < v <= 1 for v in size):
            raise UserError(f"INPUT.CROP.SIZE must be fractions in (0, 1] for TYPE {self.kind}, got {size!r}")
        if self.kind.startswith("absolute") and not all(v >= 1 and float(v).is_integer() for v in size):
            raise UserError(f"INPUT.CROP.SIZE must be whole pixels >= 1 for TYPE {self.kind}, got {size!r}")
        if self.kind == "absolute_range" and size[0] > size[1]:
            raise UserError(f"INPUT.CROP.SIZE must be [min, max] for TYPE absolute_range, got {size!r}")

    def crop_size(self, h: int, w: int) -> tuple[int, int]:
        """detectron2's ``RandomCrop.get_crop_size``, drawing from torch instead of numpy."""
        ch, cw = self.size
        if self.kind == "absolute":
            return min(int(ch), h), min(int(cw), w)
        if self.kind == "absolute_range":
            lo, hi = int(ch), int(cw)
            return _randint(min(h, lo), min(h, hi)), _randint(min(w, lo), min(w, hi))
        if self.kind == "relative_range":
            lows = torch.tensor(self.size, dtype=torch.float64)
            ch, cw = (lows + torch.rand(2, dtype=torch.float64) * (1 - lows)).tolist()
        return max(1, int(h * ch + 0.5)), max(1, int(w * cw + 0.5))  # max: a pixel at least, on tiny images

    def __call__(self, image: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A random window of the image (offsets drawn after the size, as detectron2 does); boxes
        are clipped to it, and instances left with an empty mask or a box under 1 px dropped."""
        h, w = image.shape[-2:]
        ch, cw = self.crop_size(h, w)
        y0, x0 = _randint(0, h - ch), _randint(0, w - cw)
        window = (slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))
        image, masks = image[window].contiguous(), masks[window].contiguous()
        boxes = (boxes - boxes.new_tensor([x0, y0, x0, y0])).clamp(min=0)
        boxes = torch.minimum(boxes, boxes.new_tensor([cw, ch, cw, ch]))
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1) & (masks.flatten(1) > 0).any(1)
        return image, masks[keep], boxes[keep], labels[keep]


def crop_from_config(cfg: Mapping[str, Any]) -> RandomCrop | None:
    """``INPUT.CROP`` as a RandomCrop, None when disabled (its other keys are then not read)."""
    crop = cfg["INPUT"]["CROP"]
    return RandomCrop(crop["TYPE"], tuple(crop["SIZE"])) if crop["ENABLED"] else None


@dataclass(frozen=True)
class _Record:
    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N]
    rles: list[dict[str, Any]]  # compressed RLE per instance


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such COCO JSON file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("categories"), list)
            and isinstance(data.get("annotations", []), list)):
        raise UserError(f"{path}: not a COCO instances file (needs lists 'images', 'annotations', 'categories')")
    for ann in data.get("annotations", []):
        for field in ("bbox", "segmentation"):
            bad = _non_finite(ann.get(field)) if isinstance(ann, dict) else None
            if bad is not None:
                raise UserError(f"{path}: annotation {ann.get('id')}: {field} holds {bad}; coordinates must be finite")
    return data


def _non_finite(value: Any) -> float | None:
    """The first NaN or Inf in a number or nested lists of numbers, else None. Why: Python's
    JSON reader accepts NaN, Infinity and overflowing literals (1e999); in a box they reach
    training as a NaN loss blamed on the learning rate, in a polygon pycocotools rasterises
    until memory runs out. Other odd values are left to the parser."""
    if isinstance(value, list):
        try:
            if math.isfinite(sum(value)):  # fast path: a flat list of numbers (bbox, one polygon)
                return None
        except TypeError:  # lists of polygons, or not numbers
            pass
        return next((bad for v in value if (bad := _non_finite(v)) is not None), None)
    return value if isinstance(value, float) and not math.isfinite(value) else None


def _leaves_folder(file_name: str) -> bool:
    """Whether a file_name points outside its image folder (absolute, or up through ``..``),
    judged on the text alone (symlinks are not followed). Why: a JSON from elsewhere must not
    make training read arbitrary files unless the config says so."""
    name = os.path.normpath(file_name)
    return os.path.isabs(name) or name.split(os.sep)[0] == os.pardir


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """One compressed RLE for polygons or RLE; None when there is no usable region."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width)) if polygons else None
    if isinstance(segmentation.get("counts"), list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


class CocoInstances(Dataset):
    """A COCO instances JSON and its image folder; training-time augmentation: ``crop`` and, with
    ``flip_prob`` > 0, flips along the ``flip`` axes (an ``INPUT.RANDOM_FLIP`` value), each
    axis drawn on its own (detectron2's ``RandomFlip(prob)`` per axis).

    ``label_to_category_id`` / ``category_id_to_label`` map labels 1..C and COCO ids both ways,
    ``category_names[label - 1]`` names a label, ``stats`` holds the counts of the summary line.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path, *, flip: str = "horizontal",
                 flip_prob: float = 0.0, crop: RandomCrop | None = None, allow_outside_images: bool = False):
        self.json_path, self.image_dir = Path(json_path), Path(image_dir)
        self.allow_outside_images = allow_outside_images
        self.flip_dims, self.flip_prob, self.crop = _flip_dims(flip), flip_prob, crop
        data = _read_json(self.json_path)
        if not self.image_dir.is_dir():
            raise UserError(f"{self.image_dir}: no such image folder")
        self.skipped = 0
        self.stats = dict.fromkeys(("instances", "empty_images", "crowd", "degenerate_boxes", "empty_masks"), 0)
        try:
            self._index(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{self.json_path}: malformed COCO entry ({type(e).__name__}: {e})") from None
        if not self._records:
            raise UserError(f"{self.json_path}: lists no images")
        s = self.stats
        logger.info(
            "%s: %d images (%d without instances), %d instances of %d classes; ignored %d crowd regions; "
            "dropped %d degenerate boxes and %d empty masks", self.json_path, len(self), s["empty_images"],
            s["instances"], self.num_classes, s["crowd"], s["degenerate_boxes"], s["empty_masks"])

    def _index(self, data: Mapping[str, Any]) -> None:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_category_id = {i + 1: int(c["id"]) for i, c in enumerate(categories)}
        self.category_id_to_label = {c: label for label, c in self.label_to_category_id.items()}
        self.category_names = [str(c["name"]) for c in categories]
        images = {img["id"]: img for img in data["images"]}
        by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for ann in data.get("annotations", []):
            where = f"{self.json_path}: annotation {ann.get('id')}"
            if ann["image_id"] not in images:
                raise UserError(f"{where} refers to image_id {ann['image_id']}, which is not in 'images'")
            if ann["category_id"] not in self.category_id_to_label:
                raise UserError(f"{where} has category_id {ann['category_id']}, which is not in 'categories'")
            by_image[ann["image_id"]].append(ann)
        self._records = [self._record(img, by_image[img["id"]]) for img in data["images"]]

    def _record(self, img: Mapping[str, Any], anns: list[dict[str, Any]]) -> _Record:
        if not self.allow_outside_images and _leaves_folder(img["file_name"]):
            raise UserError(f"{self.json_path}: image {img['id']}: file_name {img['file_name']!r} leaves the image "
                            f"folder {self.image_dir}; set DATASETS.ALLOW_OUTSIDE_IMAGES true (or "
                            "--allow-outside-images) to allow it")
        path = os.path.join(self.image_dir, img["file_name"])
        if not os.path.isfile(path):
            raise UserError(f"{path}: image file not found (image {img['id']} of {self.json_path})")
        h, w = int(img["height"]), int(img["width"])
        boxes, labels, rles = [], [], []
        for ann in anns:
            if ann.get("iscrowd", 0):
                self.stats["crowd"] += 1
                continue
            x, y, bw, bh = map(float, ann["bbox"])
            box = np.clip([x, y, x + bw, y + bh], 0, [w, h, w, h])
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                self.stats["degenerate_boxes"] += 1
                continue
            rle = _to_rle(ann.get("segmentation", []), h, w)
            if rle is not None and list(rle["size"]) != [h, w]:
                raise UserError(f"{self.json_path}: annotation {ann.get('id')}: RLE size {rle['size']} is not "
                                f"the image's [height, width] {[h, w]}")
            if rle is None or mask_util.area(rle) == 0:
                self.stats["empty_masks"] += 1
                continue
            boxes.append(box)
            labels.append(self.category_id_to_label[ann["category_id"]])
            rles.append(rle)
        self.stats["instances"] += len(labels)
        self.stats["empty_images"] += not labels
        return _Record(img["id"], path, h, w, np.asarray(boxes, np.float32).reshape(-1, 4),
                       np.asarray(labels, np.int64), rles)

    @property
    def num_classes(self) -> int:
        return len(self.category_names)

    def __len__(self) -> int:
        return len(self._records)

    def image_paths(self) -> list[str]:
        """Each listed image's file, in the JSON's order."""
        return [r.path for r in self._records]

    def class_counts(self) -> dict[str, int]:
        """Kept instances per category name."""
        counts = Counter(int(label) for r in self._records for label in r.labels)
        return {name: counts[label] for label, name in enumerate(self.category_names, start=1)}

    def _load_image(self, record: _Record) -> torch.Tensor | None:
        try:
            rgb = read_rgb(record.path)
        except UnreadableImage as e:
            problem = f"unreadable ({e})"
        else:
            if rgb.size == (record.width, record.height):
                array = np.asarray(rgb).transpose(2, 0, 1)
                return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255)
            problem = f"is {rgb.width}x{rgb.height} but the JSON says {record.width}x{record.height}"
        self.skipped += 1
        logger.warning("%s: %s; skipped (%d so far), using the next image", record.path, problem, self.skipped)
        return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        for step in range(len(self)):
            record = self._records[(index + step) % len(self)]
            image = self._load_image(record)
            if image is not None:
                return self._item(record, image)
        raise UserError(f"{self.json_path}: none of its {len(self)} images can be read")

    def _item(self, record: _Record, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        boxes, labels = torch.from_numpy(record.boxes.copy()), torch.from_numpy(record.labels.copy())
        if record.rles:
            masks = torch.from_numpy(np.ascontiguousarray(mask_util.decode(record.rles).transpose(2, 0, 1)))
        else:
            masks = torch.zeros((0, record.height, record.width), dtype=torch.uint8)
        if self.crop is not None:
            image, masks, boxes, labels = self.crop(image, masks, boxes, labels)
        for dim in self.flip_dims:
            if self.flip_prob > 0 and torch.rand(()).item() < self.flip_prob:
                image, masks, boxes = _flip(image, masks, boxes, dim)
        return image, {"boxes": boxes, "labels": labels, "masks": masks, "image_id": record.image_id}


def dataset_from_config(cfg: Mapping[str, Any], split: Literal["TRAIN", "TEST"], train: bool) -> CocoInstances:
    """``DATASETS.<split>`` as a dataset; ``train`` turns on the augmentation ``INPUT`` asks for
    (``INPUT.RANDOM_FLIP`` is checked for either split)."""
    entry = cfg.get("DATASETS", {}).get(split, {})
    for key in ("JSON", "IMAGES"):
        if not entry.get(key):
            raise UserError(f"DATASETS.{split}.{key} is not set; it needs a COCO instances JSON and its image folder "
                            "(`nars data shapes OUT` makes OUT/train.json with OUT/train, OUT/val.json with OUT/val)")
    return CocoInstances(entry["JSON"], entry["IMAGES"], flip=cfg["INPUT"]["RANDOM_FLIP"],
                         flip_prob=TRAIN_FLIP_PROB if train else 0.0, crop=crop_from_config(cfg) if train else None,
                         allow_outside_images=cfg["DATASETS"]["ALLOW_OUTSIDE_IMAGES"])
