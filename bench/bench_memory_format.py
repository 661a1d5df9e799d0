"""Channels-last against the default layout on CPU: what ``to_device`` buys FBNetV3IS.

    .venv/bin/python bench/bench_memory_format.py [--config NAME] [--rounds N] [KEY VALUE ...]

Two copies of one model built from a shipped config (default ``quick_shapes``: FBNetV3_A_dsmask
at 320 px), one left in PyTorch's default layout (NCHW), one placed by
``nars.engine.distributed.to_device`` (channels-last on CPU), timed side by side in one
process: rounds alternate which copy goes first, medians are reported. Inputs are synthetic
shapes images (``nars.data.shapes.render``, upscaled by the config's input sizes).

- training step: 1 thread and 2 images, what one of ``nars train --num-workers 2``'s
  processes runs on a 2-core machine (forward, loss sum, backward, AdamW step);
- inference: 2 threads, one image, eval mode, 10 detections (``TEST.DETECTIONS_PER_IMAGE``)
  at score threshold 0, so that both copies run the mask head on the same number of RoIs.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see BENCHMARKS.md, model cost

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nars.config import load_config  # noqa: E402
from nars.data.shapes import render  # noqa: E402
from nars.engine.distributed import to_device  # noqa: E402
from nars.model.fbnetv3is import build_model  # noqa: E402


def _sample(rng: np.random.Generator, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A shapes image in [0, 1] and its target (boxes from the label map)."""
    scene = render(rng, size)
    masks = torch.stack([torch.from_numpy(scene.labels == k) for k in range(1, len(scene.category_ids) + 1)])
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float().div(255)
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(scene.category_ids),
                   "masks": masks.to(torch.uint8)}


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quick_shapes", help="shipped config name or path")
    parser.add_argument("--rounds", type=int, default=12, help="timed rounds per measure (after 3 warm-up rounds)")
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0",
                                    "TEST.DETECTIONS_PER_IMAGE", "10"])
    torch.manual_seed(0)
    default = build_model(cfg)
    models = {"NCHW (default)": default, "channels-last (to_device)": to_device(copy.deepcopy(default), torch.device("cpu"))}
    optimizers = {name: torch.optim.AdamW(m.parameters(), 1e-4) for name, m in models.items()}
    rng = np.random.default_rng(0)
    batches = [[_sample(rng, 128) for _ in range(2)] for _ in range(4)]

    def train_step(name: str, batch: list) -> None:
        model, optimizer = models[name], optimizers[name]
        model.train()
        torch.manual_seed(0)
        losses = model([image for image, _ in batch], [target for _, target in batch])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def infer(name: str, batch: list) -> None:
        model = models[name]
        model.eval()
        with torch.no_grad():
            model([batch[0][0]])

    results: dict[str, dict[str, list[float]]] = {"training step (1 thread, 2 images)": {}, "inference (2 threads, 1 image)": {}}
    for times, (fn, threads) in zip(results.values(), [(train_step, 1), (infer, 2)], strict=True):
        torch.set_num_threads(threads)
        for r in range(3 + args.rounds):
            names = list(models) if r % 2 == 0 else list(models)[::-1]
            for name in names:
                seconds = _timed(fn, name, batches[r % len(batches)])
                if r >= 3:
                    times.setdefault(name, []).append(seconds)
    size = cfg["INPUT"]["MIN_SIZE_TRAIN"], cfg["INPUT"]["MIN_SIZE_TEST"]
    print(f"{cfg['MODEL']['FBNET_V2']['ARCH']} ({args.config}, train size {size[0]}, test size {size[1]}), "
          f"{args.rounds} rounds, torch {torch.__version__}")
    print(f"| measure | {' | '.join(models)} | speed-up |")
    print("|---|---|---|---|")
    for measure, times in results.items():
        medians = [statistics.median(times[name]) * 1000 for name in models]
        print(f"| {measure} | {medians[0]:,.0f} ms | {medians[1]:,.0f} ms | {medians[0] / medians[1]:.2f}x |")


if __name__ == "__main__":
    main()
