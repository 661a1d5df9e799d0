"""Model cost side by side: FBNetV3IS against torchvision's Mask / Faster R-CNN on CPU.

    .venv/bin/python bench/bench_model_cost.py [--quick]

Models, all with random weights (no download), 80 classes, in one process and one run:

- ``FBNetV3_A_dsmask`` and ``FBNetV3_A``: ``build_model(load_config(<shipped config>))`` with
  INPUT.MIN_SIZE_TEST 240 / MAX_SIZE_TEST 320 (and the same for training), so the 240x320
  image keeps its size (d2go's own test size is 224 / 320: a 240x320 image would be
  resized to 224x299). Inference runs them as ``nars predict`` does: channels-last
  (``to_device``) and ``fuse_for_inference`` (norms folded, the mask head's upsampling
  blocks at input resolution); "FBNetV3_A_dsmask before" is the path before issue 14:
  channels-last, unfused, upsampling blocks as d2go writes them (nearest x2, then dw), in
  inference and training; "FBNetV3_A_dsmask onnxruntime" is its ONNX export (``nars deploy``'s
  graph, pre- and post-processing included) in onnxruntime with the same threads.
  Batch-norm statistics are randomised so folding is real;
- torchvision ``maskrcnn_resnet50_fpn`` and ``fasterrcnn_mobilenet_v3_large_320_fpn``
  (``weights=None, weights_backbone=None, num_classes=81``: 80 + background), with
  ``min_size=240, max_size=320`` so that they too see the image at 240x320. Without
  pretrained weights torchvision builds them with plain BatchNorm and every layer trainable,
  as FBNetV3IS trains (FREEZE_AT 0). Each runs in its default layout (as its users run it)
  and channels-last; ratios are against the faster of the two.

Inference: 2 threads, eval mode, ``torch.no_grad``, one 240x320 RGB image in [0, 1] (every
model pads it to 256x320, size divisible by 32). Warm-up runs, then timed runs interleaved
round-robin across the models (the order rotates every round), median reported.

Fixed post-processing load: with random weights, how many boxes pass the test score
threshold is arbitrary (with 81 near-uniform class scores, usually none do at 0.05, so the
mask head would never run). The score threshold is therefore set to 0 for every model, so
each image yields exactly the stated number of detections, and the mask head runs on that
many RoIs. Settings (the counts seen are printed): (1) each model's own RPN proposals after
NMS (FBNetV3IS 30, d2go's POST_NMS_TOPK_TEST; maskrcnn_resnet50_fpn 1000;
fasterrcnn_mobilenet_v3_large_320_fpn 150) and 100 detections (the default of all four);
full mode adds (2) own proposals, 10 detections and (3) 100 proposals for every model, 100
detections.

Training: batch of 2 240x320 images with 2 synthetic boxes + masks each, train mode, loss
sum, SGD (momentum 0.9) step; iterations interleaved the same way; forward (by stage),
backward and step timed apart. FBNetV3IS trains unfused, channels-last as trials do.

Share of peak: each stage's multiply-adds (FlopCounterMode) x 2 / its time, against this
CPU's float32 GEMM rate measured in the same run (2048^3 ``torch.mm``, best of 5); the mask
head's compute bound is its FLOPs at that rate.

Cost: parameters; multiply-adds (MFLOPs in the FBNet / d2go convention) counted by
``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2) on one inference forward, and
for FBNetV3IS also by the analytic ``nars.model.cost.model_cost``. FlopCounterMode counts
convolutions (transposed too) and matrix multiplies only: not roi_align / RoIPool (a
torchvision op), NMS, interpolation (resize, FPN upsampling, mask pasting), batch norm,
activations, pooling, elementwise ops.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a CPU that other processes share, the
# default (spin, then sleep) makes 2-thread runs wait on descheduled threads: 4-17x
# slower and erratic. Set before torch loads libgomp; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_320_fpn,
    maskrcnn_resnet50_fpn,
)

from nars.config import load_config
from nars.deploy.onnx import export_onnx, onnx_session, run_onnx
from nars.engine.distributed import to_device
from nars.model.blocks import use_d2go_upsampling
from nars.model.cost import model_cost
from nars.model.fbnetv3is import build_model
from nars.model.fuse import fuse_for_inference

H, W = 240, 320
CLASSES = 80
REFERENCE = "maskrcnn_resnet50_fpn"
MOBILENET = "fasterrcnn_mobilenet_v3_large_320_fpn"
BEFORE = "FBNetV3_A_dsmask before (d2go's upsampling, unfused)"
ONNX = "FBNetV3_A_dsmask onnxruntime"
_EXPORTS = tempfile.TemporaryDirectory()  # the ONNX files, removed at exit
CPU = torch.device("cpu")


def fbnet(config: str, proposals: int | None, detections: int) -> torch.nn.Module:
    overrides = ["INPUT.MIN_SIZE_TEST", str(H), "INPUT.MAX_SIZE_TEST", str(W), "INPUT.MIN_SIZE_TRAIN", f"[{H}]",
                 "INPUT.MAX_SIZE_TRAIN", str(W), "MODEL.ROI_HEADS.NUM_CLASSES", str(CLASSES),
                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", str(detections)]
    if proposals is not None:
        overrides += ["MODEL.RPN.POST_NMS_TOPK_TEST", str(proposals)]
    return build_model(load_config(config, overrides))


def torchvision_model(builder: Callable[..., torch.nn.Module], proposals: int | None, detections: int) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": CLASSES + 1, "min_size": H,
                              "max_size": W, "box_score_thresh": 0.0, "box_detections_per_img": detections}
    if proposals is not None:
        kwargs["rpn_post_nms_top_n_test"] = proposals
        kwargs["rpn_pre_nms_top_n_test"] = max(proposals, 150 if builder is fasterrcnn_mobilenet_v3_large_320_fpn else 1000)
    return builder(**kwargs)


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    return model.to(memory_format=torch.channels_last)


def build_all(proposals: int | None, detections: int) -> dict[str, torch.nn.Module]:
    """FBNetV3IS as ``nars predict`` runs it (channels-last, ``fuse_for_inference``) and, for
    the before/after comparison, channels-last without fusing; torchvision's models in their
    default layout (as their users run them) and channels-last."""
    torch.manual_seed(0)
    dsmask = randomise_norms(fbnet("fbnetv3a_dsmask_C4", proposals, detections))
    r50 = torchvision_model(maskrcnn_resnet50_fpn, proposals, detections)
    mobilenet = torchvision_model(fasterrcnn_mobilenet_v3_large_320_fpn, proposals, detections)
    return {
        "FBNetV3_A_dsmask": fuse_for_inference(to_device(copy.deepcopy(dsmask), CPU)),
        ONNX: OnnxRuntimeModel(dsmask),
        BEFORE: use_d2go_upsampling(to_device(dsmask, CPU)).eval(),
        "FBNetV3_A": fuse_for_inference(to_device(randomise_norms(fbnet("fbnetv3a_C4", proposals, detections)), CPU)),
        REFERENCE: r50,
        f"{REFERENCE} channels-last": channels_last(copy.deepcopy(r50)),
        MOBILENET: mobilenet,
        f"{MOBILENET} channels-last": channels_last(copy.deepcopy(mobilenet)),
    }


class OnnxRuntimeModel(torch.nn.Module):
    """``model``'s ONNX export (``nars deploy``'s graph) in onnxruntime with the benchmark's
    threads, called as the PyTorch models are (no stage hooks: one graph)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        path = Path(_EXPORTS.name) / f"model{len(list(Path(_EXPORTS.name).iterdir()))}.onnx"
        export_onnx(model, path)
        self.session = onnx_session(path, torch.get_num_threads())

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [run_onnx(self.session, images[0])]


def randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial batch-norm statistics, so that folding them is not a no-op."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def gemm_peak(size: int = 2048, runs: int = 5) -> float:
    """This CPU's float32 GEMM rate at the benchmark's thread count, GFLOP/s (best of ``runs``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(runs))
    return 2 * size**3 / best / 1e9


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class StageTimer:
    """Wall time of backbone, RPN, RoI heads (and the mask branch inside them) per forward;
    the rest (resize, normalise, batching, mask pasting) is total minus these."""

    PARTS = ("backbone", "rpn", "roi_heads", "roi_heads.mask_roi_pool", "roi_heads.mask_head", "roi_heads.mask_predictor")

    def __init__(self, model: torch.nn.Module):
        self.times: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        modules = dict(model.named_modules())
        for name in self.PARTS:
            if modules.get(name) is not None:
                modules[name].register_forward_pre_hook(self._start(name))
                modules[name].register_forward_hook(self._stop(name))
        if "rpn" in modules:  # onnxruntime's graph has no modules
            modules["rpn"].register_forward_hook(lambda m, i, o: self.counts.__setitem__("proposals", len(o[0][0])))
        self._t0: dict[str, float] = {}

    def _start(self, name):
        return lambda m, i: self._t0.__setitem__(name, time.perf_counter())

    def _stop(self, name):
        def hook(m, i, o):
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - self._t0[name]
        return hook

    def reset(self) -> None:
        self.times = {}


def image() -> torch.Tensor:
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))


def training_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    images, targets = [], []
    for i in range(2):
        boxes = torch.tensor([[30.0 + 10 * i, 20.0, 150.0, 140.0], [160.0, 70.0 + 10 * i, 300.0, 220.0]])
        masks = torch.zeros(2, H, W, dtype=torch.uint8)
        yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            masks[k] = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).to(torch.uint8)  # ellipse in the box
        images.append(torch.rand(3, H, W, generator=g))
        targets.append({"boxes": boxes, "labels": torch.tensor([1 + 7 * i, 42]), "masks": masks})
    return images, targets


def interleaved(names: list[str], run: Callable[[str], None], warmup: int, n: int,
                after_warmup: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """``warmup`` untimed then ``n`` timed calls of each model, round-robin, order rotating."""
    for _ in range(warmup):
        for name in names:
            run(name)
    after_warmup()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - t0)
    return times


def latency(models: dict[str, torch.nn.Module], warmup: int, n: int) -> dict[str, dict[str, Any]]:
    x = [image()]
    timers = {name: StageTimer(m.eval()) for name, m in models.items()}
    dets: dict[str, int] = {}

    def run(name: str) -> None:
        with torch.no_grad():
            out = models[name](x)
        dets[name] = len(out[0]["boxes"])

    times = interleaved(list(models), run, warmup, n, lambda: [t.reset() for t in timers.values()])
    out = {}
    for name, ts in times.items():
        stage = {k: v / n for k, v in timers[name].times.items()}  # mean per timed forward
        out[name] = {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "stages": stage,
                     "proposals": timers[name].counts.get("proposals"), "detections": dets[name]}
    return out


def training_models() -> dict[str, torch.nn.Module]:
    """Unfused models for training: FBNetV3IS as trials train it (channels-last on a CPU,
    ``to_device``) and in the default layout; torchvision's in both layouts."""
    torch.manual_seed(0)
    dsmask = fbnet("fbnetv3a_dsmask_C4", None, 100)
    r50 = torchvision_model(maskrcnn_resnet50_fpn, None, 100)
    mobilenet = torchvision_model(fasterrcnn_mobilenet_v3_large_320_fpn, None, 100)
    return {
        "FBNetV3_A_dsmask": to_device(copy.deepcopy(dsmask), CPU),
        BEFORE: use_d2go_upsampling(to_device(dsmask, CPU)),
        "FBNetV3_A": to_device(fbnet("fbnetv3a_C4", None, 100), CPU),
        REFERENCE: r50,
        f"{REFERENCE} channels-last": channels_last(copy.deepcopy(r50)),
        MOBILENET: mobilenet,
        f"{MOBILENET} channels-last": channels_last(copy.deepcopy(mobilenet)),
    }


def training(models: dict[str, torch.nn.Module], warmup: int, n: int) -> dict[str, dict[str, Any]]:
    """Iterations/s (1 / the median iteration) and mean seconds per part: forward (by stage,
    from hooks), backward, step."""
    images, targets = training_batch()
    opts = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                                  weight_decay=1e-4) for name, m in models.items()}
    timers = {name: StageTimer(m.train()) for name, m in models.items()}
    parts: dict[str, dict[str, float]] = {name: {"forward": 0.0, "backward": 0.0, "step": 0.0} for name in models}

    def run(name: str) -> None:
        t0 = time.perf_counter()
        losses = models[name](images, targets)
        t1 = time.perf_counter()
        opts[name].zero_grad()
        sum(losses.values()).backward()
        t2 = time.perf_counter()
        opts[name].step()
        t3 = time.perf_counter()
        for key, dt in (("forward", t1 - t0), ("backward", t2 - t1), ("step", t3 - t2)):
            parts[name][key] += dt

    def reset() -> None:
        for name in models:
            timers[name].reset()
            parts[name] = dict.fromkeys(parts[name], 0.0)

    times = interleaved(list(models), run, warmup, n, reset)
    return {name: {"its": 1 / statistics.median(ts), **{k: v / n for k, v in parts[name].items()},
                   **{k: v / n for k, v in timers[name].times.items()}} for name, ts in times.items()}


def conv_backward_flop_grouped(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                               output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's formula for convolution_backward with the weight-gradient term divided by
    ``groups``: torch 2.14's counts it as if the convolution were dense, so a depthwise
    convolution's weight gradient comes out ``channels`` times too large."""
    args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding, groups)
    total = conv_backward_flop(*args, output_mask, out_val=out_shape)  # torch wraps it: shapes pass through
    weight = conv_backward_flop(*args, [False, True], out_val=out_shape) if output_mask[1] else 0
    return total - weight + weight // groups


def counted_mflops(model: torch.nn.Module, train: bool = False, grouped_fix: bool = False) -> tuple[float, dict[str, float]]:
    """FlopCounterMode on one inference forward (or one training forward + backward): total and
    per top-level part, multiply-adds / 1e6. ``grouped_fix``: count grouped convolutions'
    weight gradients correctly (training only)."""
    model.train(train)
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flop_grouped} if grouped_fix else None
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if train:
            images, targets = training_batch()
            sum(model(images, targets).values()).backward()
        else:
            with torch.no_grad():
                model([image()])
    parts = {}
    for key, ops in counter.get_flop_counts().items():
        pieces = key.split(".")
        if len(pieces) == 2 and pieces[1] in ("backbone", "rpn", "roi_heads"):
            parts[pieces[1]] = sum(ops.values()) / 2e6
        if pieces[1:] == ["roi_heads", "mask_head"]:
            parts["mask_head"] = sum(ops.values()) / 2e6
    return counter.get_total_flops() / 2e6, parts


def peer_best(lat: dict[str, dict[str, Any]], name: str) -> float:
    """A torchvision model's faster layout (default or channels-last): the stricter peer."""
    return min(lat[name]["median"], lat[f"{name} channels-last"]["median"])


def print_latency(title: str, lat: dict[str, dict[str, Any]], params: dict[str, int]) -> None:
    ref = peer_best(lat, REFERENCE)
    print(f"\ninference latency, {title}:")
    print(f"{'model':<52}{'params':>8}{'props':>6}{'dets':>5}{'median ms':>10}{'min':>7}{'max':>7}"
          f"{'R50/model':>10}{'backbone':>9}{'rpn':>6}{'roi':>7}{'(mask)':>7}{'other':>6}")
    for name, r in lat.items():
        s = dict.fromkeys(StageTimer.PARTS, 0.0) | r["stages"]
        mask = sum(s[k] for k in StageTimer.PARTS[3:])
        other = r["median"] - s["backbone"] - s["rpn"] - s["roi_heads"]
        proposals = "-" if r["proposals"] is None else r["proposals"]
        print(f"{name:<52}{params[name] / 1e6:>7.2f}M{proposals:>6}{r['detections']:>5}{r['median'] * 1e3:>10.1f}"
              f"{r['min'] * 1e3:>7.0f}{r['max'] * 1e3:>7.0f}{ref / r['median']:>9.2f}x"
              f"{s['backbone'] * 1e3:>9.1f}{s['rpn'] * 1e3:>6.1f}{s['roi_heads'] * 1e3:>7.1f}{mask * 1e3:>7.1f}"
              f"{other * 1e3:>6.0f}")
    print(f"(R50/model: against {REFERENCE}'s faster layout, {ref * 1e3:.1f} ms; FBNetV3_A_dsmask against the "
          f"box-only {MOBILENET}'s faster layout: {peer_best(lat, MOBILENET) / lat['FBNetV3_A_dsmask']['median']:.2f}x)")


def print_peak_fractions(lat: dict[str, dict[str, Any]], models: dict[str, torch.nn.Module], peak: float) -> None:
    """Each FBNetV3IS stage's multiply-adds against its time: GFLOP/s and the share of GEMM peak;
    the mask head's compute bound (its FLOPs at peak) and how far above it it runs."""
    print(f"\nshare of the GEMM peak ({peak:.0f} GFLOP/s, float32 2048^3 torch.mm, same threads), first setting:")
    print(f"{'model':<52}{'stage':>12}{'MMACs':>9}{'ms':>8}{'GFLOP/s':>9}{'of peak':>8}")
    for name in ("FBNetV3_A_dsmask", BEFORE, "FBNetV3_A"):
        _, parts = counted_mflops(models[name])
        stages = lat[name]["stages"]
        for stage in ("backbone", "rpn", "roi_heads", "mask_head"):
            seconds = stages[stage if stage != "mask_head" else "roi_heads.mask_head"]
            rate = 2 * parts[stage] * 1e6 / seconds / 1e9
            print(f"{name:<52}{stage:>12}{parts[stage]:>9.0f}{seconds * 1e3:>8.1f}{rate:>9.1f}{rate / peak:>8.1%}")
        bound = 2 * parts["mask_head"] * 1e6 / (peak * 1e9)
        print(f"{'':<52}mask head compute bound {bound * 1e3:.1f} ms: measured {stages['roi_heads.mask_head'] / bound:.2f}x it")


def print_training(train: dict[str, dict[str, Any]], models: dict[str, torch.nn.Module], peak: float) -> None:
    ref = min(train[REFERENCE]["its"], train[f"{REFERENCE} channels-last"]["its"])
    print("\ntraining (batch 2, 240x320, 2 boxes + masks per image, SGD step); mean ms per iteration; forward stages "
          "from hooks; 'of peak': training FLOPs (depthwise weight gradients counted right) / time / GEMM peak:")
    print(f"{'model':<52}{'it/s':>7}{'img/s':>7}{'/R50':>6}{'forward':>8}{'(trunk':>7}{'rpn':>6}{'roi)':>6}"
          f"{'backward':>9}{'step':>6}{'of peak':>8}")
    for name, r in train.items():
        flops, _ = counted_mflops(copy.deepcopy(models[name]), train=True, grouped_fix=True)
        share = 2 * flops * 1e6 * r["its"] / (peak * 1e9)
        print(f"{name:<52}{r['its']:>7.3f}{2 * r['its']:>7.2f}{r['its'] / ref:>5.2f}x{r['forward'] * 1e3:>8.0f}"
              f"{r.get('backbone', 0) * 1e3:>7.0f}{r.get('rpn', 0) * 1e3:>6.0f}{r.get('roi_heads', 0) * 1e3:>6.0f}"
              f"{r['backward'] * 1e3:>9.0f}{r['step'] * 1e3:>6.0f}{share:>8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs; only the default-proposals setting")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warmup, n, train_warmup, train_n = (2, 5, 1, 2) if args.quick else (3, 12, 2, 8)
    # (title, RPN proposals after NMS (None: each model's own default), detections per image, timed runs)
    settings = [("each model's own RPN proposal count, 100 detections", None, 100, n)]
    if not args.quick:
        settings += [("each model's own RPN proposal count, 10 detections", None, 10, 8),
                     ("100 RPN proposals for every model, 100 detections", 100, 100, 6)]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; load before: {os.getloadavg()[0]:.2f} (1-min average; 2 cores)")
    print(f"image {H}x{W} (padded to 256x{W}); score threshold 0, so every image gets exactly the stated detections; "
          f"latency: {warmup} warm-up + median of the timed runs; training: {train_warmup} warm-up + {train_n} iterations")
    t_start = time.perf_counter()

    # parameters as trained (folding adds biases)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in training_models().items()}
    params[ONNX] = params["FBNetV3_A_dsmask"]
    loads = {}
    for title, proposals, detections, runs in settings:
        models = build_all(proposals, detections)
        lat = latency(models, warmup, runs)
        loads[title] = lat
        print_latency(f"{title} ({runs} timed runs)", lat, params)
    print("(stage columns: mean ms per timed forward, from forward hooks; '(mask)' is part of "
          "'roi'; 'other' = median - backbone - rpn - roi: resize, normalise, batching, mask pasting)")

    peak = gemm_peak()
    print_peak_fractions(loads[settings[0][0]], build_all(None, 100), peak)

    train_set = training_models()
    print_training(training(train_set, train_warmup, train_n), train_set, peak)

    main_load = loads[settings[0][0]]
    print("\ncost; MFLOPs = multiply-adds / 1e6, FlopCounterMode's FLOPs / 2; inference at 256x320 with the first "
          "setting's load; training = forward + backward of one batch-2 iteration (the training batch above):")
    print(f"{'model':<40}{'params':>9}{'inference':>11}{'backbone':>10}{'rpn':>7}{'roi_heads':>11}{'analytic':>10}"
          f"{'training':>10}{'(torch)':>10}")
    for name, m in training_models().items():
        if name == BEFORE or name.endswith("channels-last"):
            continue
        total, parts = counted_mflops(m)
        train_raw, _ = counted_mflops(m, train=True)
        train_total, _ = counted_mflops(m, train=True, grouped_fix=True)
        analytic = ""
        if hasattr(m, "arch"):  # FBNetV3IS: the same load (proposals -> box head, detections -> mask head)
            cost = model_cost(m.arch, CLASSES, (256, W), rois=main_load[name]["proposals"],
                              mask_rois=main_load[name]["detections"])
            analytic = f"{cost.mflops['total']:.0f}"
        print(f"{name:<40}{params[name] / 1e6:>8.2f}M{total:>11.0f}{parts.get('backbone', 0):>10.0f}"
              f"{parts.get('rpn', 0):>7.0f}{parts.get('roi_heads', 0):>11.0f}{analytic:>10}{train_total:>10.0f}{train_raw:>10.0f}")
    for name in ("FBNetV3_A_dsmask", "FBNetV3_A"):
        c = model_cost(models[name].arch, CLASSES, (224, 224), rois=30, mask_rois=30)
        print(f"  {name}, analytic, d2go's convention (224x224, 30 box + 30 mask RoIs, as `nars model info`): "
              f"{c.mflops['total']:.0f} MFLOPs (trunk {c.mflops['trunk']:.0f}, RPN {c.mflops['rpn']:.0f}, "
              f"box head {c.mflops['box_head_per_roi']:.1f} and mask head {c.mflops['mask_head_per_roi']:.1f} per RoI)")
    print("training: FlopCounterMode with the weight gradient of grouped (depthwise) convolutions divided by groups; "
          "'(torch)': torch 2.14's own formula, which counts it as dense (too high for depthwise nets).")
    print("FlopCounterMode counts convolutions and matrix multiplies only, not roi_align, NMS, interpolation (resize, "
          "FPN upsampling, mask pasting), batch norm, activations, pooling or elementwise ops.")
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s; load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
