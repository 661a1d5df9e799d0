"""``nars eval CONFIG --weights CKPT [--engine E] [--json] [KEY VALUE ...]``: COCO AP on DATASETS.TEST,
of a checkpoint in PyTorch or of an exported graph (fp32 or int8) in onnxruntime."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from nars.commands.config_args import add_config_arguments, parse_late_options
from nars.config import load_config
from nars.engine import distributed as comm
from nars.engine.console import setup_logging
from nars.engine.evaluator import METRICS, Evaluation, evaluate_checkpoint, evaluate_onnx
from nars.engine.inference import ENGINES, check_engine
from nars.errors import UserError


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", metavar="CKPT",
                        help="checkpoint to evaluate (required): a path or a named checkpoint; its own weights "
                             "(its EMA copy with MODEL.WEIGHTS_EMA true), and with MODEL_EMA.ENABLED its EMA "
                             "copy as well (rows ema_bbox, ema_segm), as d2go evaluates; with --engine "
                             "onnxruntime, a nars deploy .onnx file")
    parser.add_argument("--engine", choices=ENGINES, default="torch",
                        help="torch: the checkpoint in PyTorch (distributed under torchrun); onnxruntime: an "
                             "exported graph, fp32 or int8, in this process")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object {"bbox": {...}, "segm": {...}[, "ema_bbox": ..., "ema_segm": ...]}')


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="COCO box and mask AP of a checkpoint on DATASETS.TEST")
    add_config_arguments(parser, _options)
    parser.set_defaults(run=run_eval)


def _process(cfg: dict[str, Any], weights: str) -> Evaluation:
    setup_logging(comm.get_rank())
    return evaluate_checkpoint(cfg, weights)


def run_eval(args: argparse.Namespace) -> int:
    args = parse_late_options(args)
    if not args.weights:
        raise UserError("--weights CKPT is required")
    check_engine(args.weights, args.engine)
    cfg = load_config(args.config, args.overrides)
    setup_logging()
    if args.engine == "onnxruntime":
        result = evaluate_onnx(cfg, args.weights)
    else:
        result = comm.launch(_process, (cfg, args.weights), 1, comm.device_for(cfg["MODEL"]["DEVICE"]))
    if os.environ.get("RANK", "0") != "0" or result is None:  # torchrun: the main process reports
        return 0
    if args.json:
        print(json.dumps(result.metrics))
        return 0
    print(f"{'':<6}" + "".join(f"{name:>8}" for name in METRICS))
    for kind, values in result.metrics.items():
        print(f"{kind:<6}" + "".join(f"{'n/a' if values[n] is None else f'{values[n]:.4f}':>8}" for n in METRICS))
    print(f"{result.images} images, {result.images_per_second:.1f} images/s (model time)")
    return 0
