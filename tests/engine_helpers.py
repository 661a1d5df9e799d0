"""Shared pieces of the engine tests: a tiny shapes dataset and tiny training overrides."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from nars.data.shapes import generate_shapes

# Small and fast, but every part of the model and the loop runs.
TINY_TRAIN = [
    "MODEL.FBNET_V2.NORM", "BN", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
    "INPUT.MIN_SIZE_TRAIN", "[64]", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 48]]",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "10",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "4",
    "SOLVER.CHECKPOINT_PERIOD", "1000", "MODEL_EMA.ENABLED", "false", "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
]


def make_shapes(root: Path, train: int = 4, val: int = 2, size: int = 64) -> Path:
    generate_shapes(root, train=train, val=val, size=size, seed=0, progress=False)
    return root


def data_overrides(shapes: Path, test: bool = True) -> list[str]:
    pairs = ["DATASETS.TRAIN.JSON", str(shapes / "train.json"), "DATASETS.TRAIN.IMAGES", str(shapes / "train")]
    if test:
        pairs += ["DATASETS.TEST.JSON", str(shapes / "val.json"), "DATASETS.TEST.IMAGES", str(shapes / "val")]
    return pairs


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine OpenMP's spinning threads otherwise
    slow a tiny model down many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_losses(cfg: dict, out: Path) -> list[float]:
    """Train ``cfg`` into ``out`` in this process, logging every iteration; the losses logged."""
    from nars.engine.events import EventWriter, read_metrics
    from nars.engine.trainer import Trainer, prepare

    run = prepare(cfg, out, resume=False, world_size=1)
    writer = EventWriter(out)
    Trainer(run, writer, progress=False, log_period=1).train()
    writer.close()
    return [r["loss"] for r in read_metrics(out) if "loss" in r]
