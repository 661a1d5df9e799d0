"""What a detector's settings depend on, read from a COCO instances JSON.

Why: input sizes, anchor sizes and how many detections an image may return should follow
the data (``nars experiment new`` derives them from these numbers, ``nars data info``
prints them). The numbers are those of the JSON as written, over every image and every
non-crowd annotation (crowd regions are neither trained on nor counted as objects to
find); box sizes are ``sqrt(w * h)`` of ``bbox`` in pixels of the original image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nars.data.coco import _read_json
from nars.errors import UserError

BOX_QUANTILES = (5, 25, 50, 75, 95)  # percent


@dataclass(frozen=True)
class Spread:
    """Smallest, median and largest of a list of numbers (median: the mean of the middle two)."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(float(np.min(values)), float(np.median(values)), float(np.max(values)))


@dataclass(frozen=True)
class DatasetStats:
    """One split's numbers; ``box_size`` maps a percentile to a size and is empty without instances."""

    images: int
    instances: int
    width: Spread
    height: Spread
    shorter_side: Spread
    longer_side: Spread
    instances_per_image: Spread
    instances_per_image_mean: float
    box_size: dict[int, float]
    classes: dict[str, int]  # instances per category name, in category id order

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return asdict(self)


def dataset_stats(json_path: str | Path) -> DatasetStats:
    """The statistics of a COCO instances JSON; a UserError names the file when it is not one."""
    data = _read_json(Path(json_path))
    if not data["images"]:
        raise UserError(f"{json_path}: lists no images")
    try:
        return _stats(data)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{json_path}: malformed COCO entry ({type(e).__name__}: {e})") from None


def _stats(data: dict[str, Any]) -> DatasetStats:
    widths = np.array([float(img["width"]) for img in data["images"]])
    heights = np.array([float(img["height"]) for img in data["images"]])
    objects = [a for a in data.get("annotations", []) if not a.get("iscrowd", 0)]
    per_image = Counter(a["image_id"] for a in objects)
    counts = [per_image[img["id"]] for img in data["images"]]
    sizes = [float(np.sqrt(max(float(a["bbox"][2]), 0.0) * max(float(a["bbox"][3]), 0.0))) for a in objects]
    categories = sorted(data["categories"], key=lambda c: c["id"])
    by_category = Counter(a["category_id"] for a in objects)
    return DatasetStats(
        images=len(widths),
        instances=len(objects),
        width=Spread.of(widths),
        height=Spread.of(heights),
        shorter_side=Spread.of(np.minimum(widths, heights)),
        longer_side=Spread.of(np.maximum(widths, heights)),
        instances_per_image=Spread.of(counts),
        instances_per_image_mean=float(np.mean(counts)),
        box_size={q: float(v) for q, v in zip(BOX_QUANTILES, np.percentile(sizes, BOX_QUANTILES))} if sizes else {},
        classes={str(c["name"]): by_category[c["id"]] for c in categories},
    )
