"""Weight inheritance: what one architecture change costs a parent's accuracy before any training.

    .venv/bin/python bench/bench_inherit.py [--weights experiments/parents/shapes_dsmask] [--data data/shapes]

The parent (default: the fine-tuning quickstart's, FBNetV3_A_dsmask trained by
``nars train parent_shapes``) is inherited (``nars.model.inherit``) onto variants that differ
from it in one choice of the ``fbnetv3is_finetune`` space, and each variant is evaluated as
is, with no training, on the parent's own validation data. A change that the rules make
function-preserving (more depth, a wider or added part, an SE) should keep the parent's AP;
a narrower part loses what its dropped channels carried, which a fine-tuning must recover.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from nars.config import load_config
from nars.engine.evaluator import evaluate_checkpoint
from nars.model.arch import REFERENCE_ARCHS
from nars.model.fbnetv3is import build_model
from nars.model.inherit import inherit
from nars.model.weights import checkpoint_arch, read_checkpoint, resolve_weights, state_dict_of

PARENT = "FBNetV3_A_dsmask"
# (part, stage, group, field) -> value: field 0 op, 1 width, 3 repeats, 4 {"e": expansion}
VARIANTS: dict[str, dict[tuple[str, int, int, int], Any]] = {
    "the parent itself": {},
    "t2.n 4 (from 3): a new block": {("trunk", 2, 1, 3): 4},
    "t3.c 88 (from 72): wider": {("trunk", 3, 0, 1): 88, ("trunk", 3, 1, 1): 88},
    "t2.k 5 (from 3): larger kernel": {("trunk", 2, 1, 0): "ir_k5"},
    "t2.se: SE added": {("trunk", 2, 0, 0): "ir_k5_se", ("trunk", 2, 1, 0): "ir_k3_se"},
    "t4.e 3 (from 4): narrower inner width": {("trunk", 3, 3, 4): {"e": 3}},
    "t2.e 2 (from 3): narrower inner width": {("trunk", 2, 1, 4): {"e": 2}},
    "t3.c 56 (from 72): narrower": {("trunk", 3, 0, 1): 56, ("trunk", 3, 1, 1): 56},
    "t4.k 3 (from 5): smaller kernel": {("trunk", 3, 3, 0): "ir_k3"},
    "mask.c 96 (from 128): narrower": {("mask_head", 0, g, 1): 96 for g in range(3)},
    "mask.c 64 (from 128): narrower": {("mask_head", 0, g, 1): 64 for g in range(3)},
    "mask.e 2 (from 6): narrower inner width": {("mask_head", 0, 1, 4): {"e": 2}, ("mask_head", 0, 2, 4): {"e": 2}},
}


def variant(edits: dict[tuple[str, int, int, int], Any]) -> dict[str, Any]:
    arch = copy.deepcopy(REFERENCE_ARCHS[PARENT])
    for (part, stage, group, field), value in edits.items():
        arch[part][stage][group][field] = value
    return arch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="experiments/parents/shapes_dsmask", help="the parent (a checkpoint or run folder)")
    parser.add_argument("--config", default="search_shapes", help="the parent's config (default search_shapes)")
    parser.add_argument("--data", type=Path, default=Path("data/shapes"), help="its validation data: val.json, val/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path, named = resolve_weights(args.weights)
    ckpt = read_checkpoint(path)
    parent_arch = checkpoint_arch(path, ckpt, named, "")
    state = state_dict_of(ckpt, use_ema=False, path=path)
    data = ["DATASETS.TEST.JSON", str(args.data / "val.json"), "DATASETS.TEST.IMAGES", str(args.data / "val")]
    print(f"parent {path} ({parent_arch.name}); zero-shot segm AP on {args.data}/val\n")
    print("| variant of the parent | weights inherited | segm AP | bbox AP |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, edits) in enumerate(VARIANTS.items()):
            cfg = load_config(args.config, data + ["MODEL.FBNET_V2.ARCH", json.dumps(variant(edits))])
            torch.manual_seed(0)
            model = build_model(cfg)
            report = inherit(model, state, parent_arch)
            weights = Path(tmp) / f"{i}.pth"
            torch.save({"model": model.state_dict()}, weights)
            metrics = evaluate_checkpoint(cfg, str(weights)).metrics
            print(f"| {name} | {100 * report.fraction:.1f}% | {metrics['segm']['AP']:.3f} | {metrics['bbox']['AP']:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
