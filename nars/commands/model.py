"""``nars model info``: an architecture's parameters per part, MFLOPs, and a weights check;
``nars model latency``: its inference latency on this machine's CPU."""

from __future__ import annotations

import argparse
import json
from typing import Any

from nars.config import load_config
from nars.deploy.latency import ENGINES, RUNS, WARMUP, measure_latency
from nars.model.arch import REFERENCE_ARCHS
from nars.model.cost import config_cost, test_input_size
from nars.model.fbnetv3is import build_model
from nars.model.weights import load_weights

PARTS = {
    "trunk": ("backbone.",),
    "rpn": ("rpn.",),
    "box_head": ("roi_heads.box_head.",),
    "box_predictor": ("roi_heads.box_predictor.",),
    "mask_head": ("roi_heads.mask_head.",),
}


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("model", help="inspect FBNetV3IS models").add_subparsers(dest="action", required=True)
    info = group.add_parser("info", help="parameters per part, MFLOPs, and an optional weights check")
    info.add_argument("arch_or_config", help=f"a reference arch ({', '.join(REFERENCE_ARCHS)}) or a config file/name")
    info.add_argument("--num-classes", type=int, help="override MODEL.ROI_HEADS.NUM_CLASSES (default 80)")
    info.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                      help="input for MFLOPs (default: the config's test size, square MIN_SIZE_TEST)")
    info.add_argument("--weights", help="a checkpoint to try loading (path or named checkpoint)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=run_info)

    latency = group.add_parser("latency", help="inference latency on this CPU (median and p90 of timed runs)")
    latency.add_argument("arch_or_config", metavar="CONFIG",
                         help=f"a config file/name or a reference arch ({', '.join(REFERENCE_ARCHS)})")
    latency.add_argument("--engine", choices=ENGINES, default="torch",
                         help="torch (as nars predict runs it), onnxruntime (the nars deploy graph) or "
                              "onnxruntime-int8 (that graph quantized, calibrated on the timing image)")
    latency.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    latency.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                         help="the image, kept at this size (default: the config's test size, square MIN_SIZE_TEST)")
    latency.add_argument("--detections", type=int, metavar="N",
                         help="detections per image, all run through the mask head (default: TEST.DETECTIONS_PER_IMAGE, "
                              "at most MODEL.RPN.POST_NMS_TOPK_TEST, as the cost model counts them)")
    latency.add_argument("--runs", type=int, default=RUNS, metavar="N", help=f"timed runs (default {RUNS})")
    latency.add_argument("--warmup", type=int, default=WARMUP, metavar="N", help=f"untimed runs first (default {WARMUP})")
    latency.add_argument("--weights", help="a checkpoint (path or named checkpoint; default: random weights)")
    latency.add_argument("--json", action="store_true", help="print one JSON object")
    latency.set_defaults(run=run_latency)


def _load(arch_or_config: str, overrides: list[str]) -> dict[str, Any]:
    """A config file or shipped name, or the default config with a reference arch."""
    is_arch = arch_or_config.lower() in (a.lower() for a in REFERENCE_ARCHS)
    arch = ["MODEL.FBNET_V2.ARCH", arch_or_config] if is_arch else []
    return load_config(None if is_arch else arch_or_config, arch + overrides)


def model_info(args: argparse.Namespace) -> dict[str, Any]:
    overrides: list[str] = []
    if args.num_classes is not None:
        overrides += ["MODEL.ROI_HEADS.NUM_CLASSES", str(args.num_classes)]
    cfg = _load(args.arch_or_config, overrides + ["MODEL.FBNET_V2.NORM", "BN"])
    model = build_model(cfg)
    params = {part: 0 for part in PARTS}
    for name, p in model.named_parameters():
        part = next(k for k, prefixes in PARTS.items() if name.startswith(prefixes))
        params[part] += p.numel()
    params["total"] = sum(params.values())
    size = tuple(args.input_size) if args.input_size else test_input_size(cfg)
    cost = config_cost(cfg, model.arch, size)
    info: dict[str, Any] = {
        "arch": model.arch.name,
        "num_classes": model.num_classes,
        "params": params,
        "mflops": {**{k: round(v, 3) for k, v in cost.mflops.items()}, "input_size": list(size),
                   "rois": cfg["MODEL"]["RPN"]["POST_NMS_TOPK_TEST"]},
    }
    if args.weights:
        info["weights"] = load_weights(model, args.weights, cfg["MODEL"]["WEIGHTS_EMA"]).to_dict()
    return info


def run_info(args: argparse.Namespace) -> int:
    info = model_info(args)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['arch']}  ({info['num_classes']} classes)")
    print(f"{'part':<15}{'params':>12}")
    for part, n in info["params"].items():
        print(f"{part:<15}{n:>12,}")
    mf = info["mflops"]
    h, w = mf["input_size"]
    print(f"MFLOPs at {h}x{w}: trunk {mf['trunk']:.1f}, rpn {mf['rpn']:.1f}, box head {mf['box_head_per_roi']:.2f}/RoI, "
          f"mask head {mf['mask_head_per_roi']:.2f}/RoI, total {mf['total']:.1f} with {mf['rois']} RoIs")
    if "weights" in info:
        wr = info["weights"]
        print(f"weights: {wr['loaded']} tensors loaded, {len(wr['missing'])} missing, {len(wr['unexpected'])} unexpected, "
              f"{len(wr['mismatched'])} mismatched, {len(wr['reinitialized'])} re-initialised")
        for kind in ("missing", "unexpected", "mismatched"):
            for key in wr[kind][:10]:
                print(f"  {kind}: {key}")
    return 0


def run_latency(args: argparse.Namespace) -> int:
    cfg = _load(args.arch_or_config, [])
    result = measure_latency(cfg, engine=args.engine, threads=args.threads,
                             input_size=tuple(args.input_size) if args.input_size else None,
                             detections=args.detections, warmup=args.warmup, runs=args.runs, weights=args.weights,
                             progress=not args.json)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    h, w = result.input_size
    print(f"{args.arch_or_config} at {h}x{w}, {result.detections} detections, {result.engine}, "
          f"{result.threads} threads: median {result.median_ms:.1f} ms, p90 {result.p90_ms:.1f} ms "
          f"({result.runs} runs after {args.warmup} warm-up)")
    return 0
