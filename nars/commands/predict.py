"""``nars predict CONFIG --weights CKPT IMAGE_OR_FOLDER... --out DIR [--score-threshold T] [--engine E]``."""

from __future__ import annotations

import argparse

from nars.config import load_config
from nars.engine.console import setup_logging
from nars.engine.inference import ENGINES, PREDICTIONS_FILE, predict


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="segment images: overlay PNGs and COCO-format predictions.json")
    parser.add_argument("config", metavar="CONFIG", help="the config the weights were trained with (file or name)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of images")
    parser.add_argument("--weights", required=True, metavar="CKPT",
                        help="checkpoint: a path or a named checkpoint; with --engine onnxruntime, a nars deploy .onnx")
    parser.add_argument("--out", required=True, metavar="DIR", help="where overlays and predictions.json go")
    parser.add_argument("--score-threshold", type=float, default=0.5, metavar="T",
                        help="keep detections scoring at least T (default 0.5)")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="torch: the checkpoint in PyTorch; onnxruntime: an exported graph, fp32 or int8")
    parser.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    setup_logging()
    cfg = load_config(args.config)
    summary = predict(cfg, args.weights, args.inputs, args.out, args.score_threshold, args.engine)
    skipped = f", {summary.skipped} unreadable skipped" if summary.skipped else ""
    print(f"{args.out}: {summary.images} overlays{skipped}, {summary.detections} detections in {PREDICTIONS_FILE} "
          f"({summary.images_per_second:.1f} images/s)")
    return 0
