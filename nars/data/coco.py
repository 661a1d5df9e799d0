"""COCO instance-segmentation datasets (a JSON file and an image folder) for FBNetV3IS.

- Masks may be polygons or RLE (compressed or uncompressed); pycocotools decodes them.
- ``iscrowd`` regions are left out of the targets, as detectron2 does; the evaluator reads
  the JSON itself, so they stay in the evaluation ground truth.
- Category ids map to contiguous labels 1..C in increasing id order (0 is background).
- Images without annotations are kept: they teach the model what background looks like.
- Degenerate boxes (width or height < 1 px once clipped to the image) and empty masks are
  dropped and counted; each dataset logs one summary line.
- Input mistakes are UserErrors naming the file: a missing JSON or image folder, malformed
  JSON, an entry that is not COCO, an image entry whose file does not exist (checked when the
  dataset is built, with ``os.path``).
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
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_util
from torch.utils.data import Dataset

from nars.errors import UserError

logger = logging.getLogger(__name__)

TRAIN_FLIP_PROB = 0.5


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
    return data


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """One compressed RLE for polygons or RLE; None when there is no usable region."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width)) if polygons else None
    if isinstance(segmentation.get("counts"), list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


class CocoInstances(Dataset):
    """A COCO instances JSON and its image folder; ``flip_prob`` > 0 for training-time flips.

    ``label_to_category_id`` / ``category_id_to_label`` map labels 1..C and COCO ids both ways,
    ``category_names[label - 1]`` names a label, ``stats`` holds the counts of the summary line.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path, *, flip_prob: float = 0.0):
        self.json_path, self.image_dir, self.flip_prob = Path(json_path), Path(image_dir), flip_prob
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

    def class_counts(self) -> dict[str, int]:
        """Kept instances per category name."""
        counts = Counter(int(label) for r in self._records for label in r.labels)
        return {name: counts[label] for label, name in enumerate(self.category_names, start=1)}

    def _load_image(self, record: _Record) -> torch.Tensor | None:
        try:
            with Image.open(record.path) as im:
                rgb = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:
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
        boxes = torch.from_numpy(record.boxes.copy())
        if record.rles:
            masks = torch.from_numpy(np.ascontiguousarray(mask_util.decode(record.rles).transpose(2, 0, 1)))
        else:
            masks = torch.zeros((0, record.height, record.width), dtype=torch.uint8)
        if self.flip_prob > 0 and torch.rand(()).item() < self.flip_prob:
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack([record.width - boxes[:, 2], boxes[:, 1], record.width - boxes[:, 0], boxes[:, 3]], 1)
        target = {"boxes": boxes, "labels": torch.from_numpy(record.labels.copy()), "masks": masks,
                  "image_id": record.image_id}
        return image, target


def dataset_from_config(cfg: Mapping[str, Any], split: Literal["TRAIN", "TEST"], train: bool) -> CocoInstances:
    """``DATASETS.<split>`` as a dataset; ``train`` turns on random horizontal flips."""
    entry = cfg.get("DATASETS", {}).get(split, {})
    for key in ("JSON", "IMAGES"):
        if not entry.get(key):
            raise UserError(f"DATASETS.{split}.{key} is not set; it needs a COCO instances JSON and its image folder "
                            "(`nars data shapes OUT` makes OUT/train.json with OUT/train, OUT/val.json with OUT/val)")
    return CocoInstances(entry["JSON"], entry["IMAGES"], flip_prob=TRAIN_FLIP_PROB if train else 0.0)
