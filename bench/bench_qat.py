"""Quantization-aware fine-tuning against post-training quantization, on the same models.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_qat.py NAME=RUN_DIR ... [--iters 40] [--lr-scale 0.2]
        [--work /tmp/bench_qat] [--out bench/results/qat]

Each RUN_DIR is a trained run (config.yaml + model_final.pth; e.g. bench_retrain.py's coins
retrains). From its weights, two fine-tunes of ``--iters`` iterations that differ only in
``QUANTIZATION.QAT.ENABLED`` (same seed, data order, recipe: the run's optimizer at
``--lr-scale`` times its learning rate, cosine, no warm-up, no EMA; QAT from iteration 0, its
activation ranges frozen for the last quarter). Each result is then deployed as ``nars deploy
--int8`` deploys it (export, 64 calibration images from its training set, onnxruntime static
quantization) and both graphs, fp32 and int8, are evaluated on the run's test set.

Reported per model: the int8 AP of the QAT arm against the plain arm's (which is PTQ of an
equally fine-tuned model), paired image by image (95% bootstrap interval, Wilcoxon's p), and
each arm's int8 - fp32 drop. Raw: ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import deploy_and_evaluate  # noqa: E402
from bench_search import printed_difference  # noqa: E402

from nars.config import load_config, set_key  # noqa: E402
from nars.engine.trainer import train  # noqa: E402
from nars.search.paired import paired_images  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("plain", "qat")


def fine_tune(run: Path, arm: str, iters: int, lr_scale: float, out: Path) -> dict[str, Any]:
    """One arm's fine-tune of ``run``'s weights into ``out``; its config."""
    cfg = load_config(run / "config.yaml")
    for key, value in (("MODEL.WEIGHTS", str(run / "model_final.pth")), ("MODEL.WEIGHTS_ARCH", ""),
                       ("SOLVER.MAX_ITER", iters), ("SOLVER.WARMUP_ITERS", 0), ("SOLVER.CHECKPOINT_PERIOD", iters + 1),
                       ("SOLVER.BASE_LR", cfg["SOLVER"]["BASE_LR"] * lr_scale), ("MODEL_EMA.ENABLED", False),
                       ("TEST.EVAL_PERIOD", 0), ("QUANTIZATION.QAT.ENABLED", arm == "qat"),
                       ("QUANTIZATION.QAT.START_ITER", 0), ("QUANTIZATION.QAT.DISABLE_OBSERVER_ITER", iters * 3 // 4)):
        set_key(cfg, key, value, "bench_qat")
    if not (out / "model_final.pth").is_file():
        train(cfg, out, progress=False)
    return load_config(out / "config.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--lr-scale", type=float, default=0.2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_qat"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "qat")
    args = parser.parse_args()
    torch.set_num_threads(2)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    start = time.perf_counter()
    rows = []
    for entry in args.runs:
        name, run = entry.split("=", 1)
        row: dict[str, Any] = {"model": name, "run": run}
        for arm in ARMS:
            folder = args.work / name / arm
            cfg = fine_tune(Path(run), arm, args.iters, args.lr_scale, folder)
            row[arm] = deploy_and_evaluate(cfg, str(folder / "model_final.pth"), folder)
        segm = {arm: {p: row[arm][p]["metrics"]["segm"]["AP"] for p in ("fp32", "int8")} for arm in ARMS}
        row["qat_minus_plain_int8"] = paired_images(row["qat"]["int8"]["per_image"], row["plain"]["int8"]["per_image"])
        rows.append(row)
        d = row["qat_minus_plain_int8"]
        print(f"{name}: plain fp32 {segm['plain']['fp32']:.4f} int8 {segm['plain']['int8']:.4f} | qat fp32 "
              f"{segm['qat']['fp32']:.4f} int8 {segm['qat']['int8']:.4f} | int8 qat - plain per image "
              f"{d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] p {d['p']:.2g}", flush=True)
    print("\n| model | plain: fp32 segm AP | plain: int8 (PTQ) | QAT: fp32 | QAT: int8 | int8, QAT - PTQ, per image "
          "[95% CI] | Wilcoxon p |\n|---|---|---|---|---|---|---|")
    for r in rows:
        d, s = r["qat_minus_plain_int8"], {a: r[a] for a in ARMS}
        ap = {(a, p): s[a][p]["metrics"]["segm"]["AP"] for a in ARMS for p in ("fp32", "int8")}
        print(f"| {r['model']} | {ap['plain', 'fp32']:.4f} | {ap['plain', 'int8']:.4f} | {ap['qat', 'fp32']:.4f} | "
              f"**{ap['qat', 'int8']:.4f}** | {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] | {d['p']:.2g} |")
    summary = {}
    if len(rows) > 1:
        summary = printed_difference(f"int8 segm AP, QAT - PTQ over {len(rows)} models",
                                     {r["model"]: r["qat"]["int8"]["metrics"]["segm"]["AP"] for r in rows},
                                     {r["model"]: r["plain"]["int8"]["metrics"]["segm"]["AP"] for r in rows})
    args.out.mkdir(parents=True, exist_ok=True)
    for r in rows:  # per-image lists stay in the work folder; the summary keeps the metrics
        for arm in ARMS:
            for p in ("fp32", "int8"):
                r[arm][p].pop("per_image")
                r[arm][p].pop("images_per_s")
    result = {"commit": commit.strip(), "iters": args.iters, "lr_scale": args.lr_scale, "rows": rows,
              "over_models": summary, "seconds": time.perf_counter() - start}
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwall time {result['seconds']:.0f} s; raw figures in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
