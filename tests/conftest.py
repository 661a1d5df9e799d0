"""Shared fixtures: small, fast FBNetV3IS configs (tiny images, real code paths)."""

from __future__ import annotations

import os

# As the CLI does (nars/cli.py): idle OpenMP threads sleep instead of spinning. On a machine
# shared with other work, spinning 2-thread kernels ran tests up to 45x slower. Set before
# torch loads libgomp; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from nars.config import load_config

TINY = [
    "INPUT.MIN_SIZE_TRAIN", "[64]", "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
]


@pytest.fixture
def tiny_cfg() -> Callable[..., dict[str, Any]]:
    """``tiny_cfg("KEY", "VALUE", ...)``: a small config with extra overrides."""
    return lambda *overrides: load_config(None, TINY + list(overrides))


def make_target(h: int, w: int, boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    """A training target whose masks fill the boxes."""
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, int(y0) : int(y1), int(x0) : int(x1)] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
    }
