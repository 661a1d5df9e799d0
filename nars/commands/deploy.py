"""``nars deploy CONFIG --weights CKPT --onnx OUT.onnx [--opset N] [--int8 [--calibration IMAGE_OR_FOLDER ...]
[--calibration-count N] [--no-eval]] [KEY VALUE ...]``: the model as one ONNX graph for stock
onnxruntime (nars.deploy.onnx), checked against PyTorch; with ``--int8``, statically
quantized (nars.deploy.quantize) and its AP measured against the fp32 graph's on DATASETS.TEST."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from nars.commands.config_args import add_config_arguments, parse_late_options
from nars.config import load_config
from nars.data.coco import dataset_from_config
from nars.engine.inference import find_images
from nars.errors import UserError


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", metavar="CKPT", help="checkpoint to export (required): a path or a named checkpoint")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="the ONNX file to write (required)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 16 to 20 (default: nars.deploy.onnx.OPSET, 17)")
    parser.add_argument("--int8", action="store_true",
                        help="write an int8 graph (onnxruntime static quantization, QDQ, per-channel weights)")
    parser.add_argument("--calibration", action="append", metavar="IMAGE_OR_FOLDER",
                        help="--int8: an image, or a folder of images, whose activations set the int8 ranges; "
                             "repeat for more (default: DATASETS.TRAIN's images)")
    parser.add_argument("--calibration-count", type=int, metavar="N",
                        help="--int8: calibrate on N of them, drawn at random (default: nars.deploy.quantize."
                             "CALIBRATION_COUNT, 64)")
    parser.add_argument("--no-eval", action="store_true",
                        help="--int8: skip the AP of the int8 graph against the fp32 one on DATASETS.TEST")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("deploy", help="export to ONNX (one image in, detections out), fp32 or int8, and check it")
    add_config_arguments(parser, _options)
    parser.set_defaults(run=run_deploy)


def _compare_ap(cfg: dict[str, Any], int8_path: Path, fp32_path: Path) -> None:
    """Print the fp32 and int8 graphs' COCO AP on DATASETS.TEST and their difference."""
    from nars.engine.evaluator import evaluate_onnx

    rows = {"fp32": evaluate_onnx(cfg, fp32_path, progress=True), "int8": evaluate_onnx(cfg, int8_path, progress=True)}
    print(f"AP on DATASETS.TEST ({rows['fp32'].images} images), onnxruntime:")
    print(f"{'':<6}{'bbox AP':>9}{'segm AP':>9}{'images/s':>10}")
    for name, result in rows.items():
        m = result.metrics
        print(f"{name:<6}{m['bbox']['AP']:>9.4f}{m['segm']['AP']:>9.4f}{result.images_per_second:>10.1f}")
    drop = {kind: rows["int8"].metrics[kind]["AP"] - rows["fp32"].metrics[kind]["AP"] for kind in ("bbox", "segm")}
    print(f"int8 - fp32: bbox {drop['bbox']:+.4f}, segm {drop['segm']:+.4f}")


def run_deploy(args: argparse.Namespace) -> int:
    from nars.deploy.onnx import OPSET, export_checked  # onnx and onnxruntime load only for this command

    args = parse_late_options(args)
    for option, value in (("--weights CKPT", args.weights), ("--onnx OUT.onnx", args.onnx)):
        if not value:
            raise UserError(f"{option} is required")
    for option, value in (("--calibration", args.calibration), ("--calibration-count", args.calibration_count),
                          ("--no-eval", args.no_eval)):
        if value not in (None, False) and not args.int8:
            raise UserError(f"{option} applies to --int8 only")
    cfg = load_config(args.config, args.overrides)
    opset = OPSET if args.opset is None else args.opset
    if not args.int8:
        parity = export_checked(cfg, args.weights, args.onnx, opset)
        print(f"wrote {args.onnx} (opset {opset}; input image: uint8 RGB [3, H, W]; outputs boxes, scores, "
              f"labels, masks)")
        print(parity.summary())
        return 0
    from nars.deploy.quantize import CALIBRATION_COUNT, calibration_images, check_count, quantize_graph, training_images

    count = check_count(CALIBRATION_COUNT if args.calibration_count is None else args.calibration_count)
    sources = find_images(args.calibration) if args.calibration else training_images(cfg)
    images = calibration_images(sources, count)
    evaluate = not args.no_eval and bool(cfg["DATASETS"]["TEST"]["JSON"])
    if evaluate:
        dataset_from_config(cfg, "TEST", train=False)  # a bad test set is refused before the work, not after
    out = Path(args.onnx)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent if out.parent.is_dir() else None) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        parity = export_checked(cfg, args.weights, fp32, opset)
        graph = quantize_graph(fp32, out, images, progress=True)
        print(f"wrote {out} (int8, opset {opset}; input image: uint8 RGB [3, H, W]; outputs boxes, scores, labels, "
              f"masks)")
        print(f"fp32 graph: {parity.summary()}")
        print(graph.summary())
        if evaluate:
            _compare_ap(cfg, out, fp32)
        elif not args.no_eval:
            print("DATASETS.TEST is not set: no AP comparison (nars eval CONFIG --weights OUT.onnx --engine "
                  "onnxruntime measures one graph)")
    return 0
