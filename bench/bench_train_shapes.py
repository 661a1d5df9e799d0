"""The quick config from scratch on freshly generated shapes: wall time, segm AP, it/s, img/s.

    .venv/bin/python bench/bench_train_shapes.py [--work DIR] [--num-workers N] [KEY VALUE ...]

Generates the shapes dataset with its default sizes (300 train, 50 val, 128 px) into
``WORK/data/shapes``, then runs the real CLI, ``nars train quick_shapes --out WORK/run``, from
``WORK`` (the config's dataset paths are relative) and times it end to end (start-up,
training, checkpoints, the final evaluation). Training it/s is MAX_ITER over the summed
iteration times of ``metrics.jsonl``; inference img/s is the final evaluation's model time.
The issue's target: segm AP >= 0.5 on val within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nars.data.shapes import generate_shapes
from nars.engine.events import read_metrics

TARGET_AP, TARGET_SECONDS = 0.5, 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="working folder (default: a fresh temporary one)")
    parser.add_argument("--num-workers", type=int, default=1, help="training processes (nars train --num-workers)")
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="overrides of quick_shapes, for tuning")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nars-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "data" / "shapes", ignore_errors=True)
    shutil.rmtree(work / "run", ignore_errors=True)

    start = time.perf_counter()
    generate_shapes(work / "data" / "shapes", progress=False)
    data_seconds = time.perf_counter() - start

    command = [sys.executable, "-m", "nars.cli", "train", "quick_shapes", "--out", "run",
               "--num-workers", str(args.num_workers), *args.overrides]
    start = time.perf_counter()
    subprocess.run(command, cwd=work, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start

    metrics = json.loads((work / "run" / "eval.json").read_text())
    records = read_metrics(work / "run")
    losses = [r for r in records if "loss" in r]
    iterations = losses[-1]["iteration"] + 1
    # each record averages LOG_PERIOD (or fewer, for the last) iterations
    seconds = sum(r["time"] * (r["iteration"] - prev) for r, prev in zip(losses, [-1] + [r["iteration"] for r in losses]))
    final_eval = [r for r in records if "eval/images_per_second" in r][-1]
    summary = {
        "command": " ".join(["nars", *command[3:]]),
        "data_seconds": round(data_seconds, 1),
        "wall_seconds": round(wall, 1),
        "iterations": iterations,
        "train_it_per_s": round(iterations / seconds, 3),
        "inference_img_per_s": round(final_eval["eval/images_per_second"], 2),
        "bbox": metrics["bbox"],
        "segm": metrics["segm"],
        "target_met": metrics["segm"]["AP"] >= TARGET_AP and wall <= TARGET_SECONDS,
        "load_average_1min_end": os.getloadavg()[0],
        "work": str(work),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
