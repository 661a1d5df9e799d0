"""``nars deploy CONFIG --weights CKPT --onnx OUT.onnx [--opset N] [KEY VALUE ...]``: the
model as one ONNX graph for stock onnxruntime (nars.deploy.onnx), checked against PyTorch."""

from __future__ import annotations

import argparse

from nars.commands.config_args import add_config_arguments, parse_late_options
from nars.config import load_config
from nars.errors import UserError


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", metavar="CKPT", help="checkpoint to export (required): a path or a named checkpoint")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="the ONNX file to write (required)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 16 to 20 (default: nars.deploy.onnx.OPSET, 17)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("deploy", help="export to ONNX (one image in, detections out) and check it against PyTorch")
    add_config_arguments(parser, _options)
    parser.set_defaults(run=run_deploy)


def run_deploy(args: argparse.Namespace) -> int:
    from nars.deploy.onnx import OPSET, export_checked  # onnx and onnxruntime load only for this command

    args = parse_late_options(args)
    for option, value in (("--weights CKPT", args.weights), ("--onnx OUT.onnx", args.onnx)):
        if not value:
            raise UserError(f"{option} is required")
    cfg = load_config(args.config, args.overrides)
    opset = OPSET if args.opset is None else args.opset
    parity = export_checked(cfg, args.weights, args.onnx, opset)
    print(f"wrote {args.onnx} (opset {opset}; input image: uint8 RGB [3, H, W]; outputs boxes, scores, "
          f"labels, masks)")
    print(parity.summary())
    return 0
