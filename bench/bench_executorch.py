"""Can FBNetV3IS (NARS's Mask R-CNN, FBNetV3A trunk) run as an ExecuTorch .pte on XNNPACK?

Run in a separate venv that has ``executorch`` (not a NARS dependency; BENCHMARKS.md,
"ExecuTorch", has the install lines), with this repository on the path:

    PYTHONPATH=. OMP_NUM_THREADS=1 EXECUTORCH_WORK=/tmp/executorch \
        /path/to/executorch-venv/bin/python bench/bench_executorch.py [--part whole|split|int8|all]

Parts (results printed and written to bench/results/executorch/<part>.json; .pte files to
$EXECUTORCH_WORK/pte/):

* ``whole``: the whole detector (trunk, RPN with NMS, RoIAlign, box and mask heads) through
  ``torch.export`` at a fixed 1x3x224x320 input, then ``to_edge_transform_and_lower`` with the
  XNNPACK partitioner, ``to_executorch`` and ExecuTorch's Python runtime; every step's
  outcome or first error line is recorded.
* ``split``: what does run: the trunk + RPN head convolutions, the box head (+ predictor) and
  the mask head (+ predictor) as three XNNPACK ``.pte`` files, anchors / proposal decoding /
  NMS / RoIAlign / paste on the host in PyTorch. Numerical agreement with eager PyTorch,
  the whole split pipeline against ``model([image])`` on the golden images, and latency.
* ``int8``: PT2E static int8 (XNNPACKQuantizer, per-channel weights) of the trunk + RPN head,
  calibrated on images rendered by ``nars.data.shapes`` (the golden model's domain).

Two models, both fused for inference (``nars.model.fuse``):

* ``shipped``: ``fbnetv3a_dsmask_C4`` (80 classes, 224/320 test size), random init (seed 0):
  used where only the graph matters (export attempts, latency of the class-count-dependent heads).
* ``golden``: the trained d2go checkpoint in tests/data/d2go_golden (same FBNetV3_A_dsmask
  architecture, 4 classes, 128/160 test size): used for every numerical comparison and
  for the trunk latency (same trunk as ``shipped``, real activations).

Only public APIs of torch, torchvision, executorch (+ torchao's PT2E entry points, which
executorch's docs use) and NARS.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.export import Dim
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.models.detection.rpn import concat_box_prediction_layers

from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
from executorch.runtime import Runtime

from nars.config import load_config
from nars.data.shapes import render
from nars.deploy.onnx import ExportableFBNet
from nars.engine.inference import image_tensor, load_predictor
from nars.model.blocks import use_d2go_upsampling
from nars.model.fbnetv3is import FEATURE, build_model
from nars.model.fuse import fuse_for_inference

PTE_DIR = Path(os.environ.get("EXECUTORCH_WORK", "/tmp/executorch")) / "pte"
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "executorch"
GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "d2go_golden"
GOLDEN_IMAGES = ["000000.png", "000001.png", "000003.png", "odd_150x97.png"]
H, W = 224, 320  # the shipped config's test size (short edge 224, long edge at most 320)
EAGER_THREADS = 2
RUNS, WARMUP = 20, 3


# ----------------------------------------------------------------------------- helpers
def first_error(e: BaseException) -> str:
    """``Type: first line of the message`` and, for a bare assertion, where it fired."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".strip()
    if not lines:  # e.g. a bare ``assert``: name the failing line
        frame = traceback.extract_tb(e.__traceback__)[-1]
        text += f" (at {Path(frame.filename).name}:{frame.lineno}: {frame.line})"
    for ln in lines[1:]:
        if ln.startswith(("Caused by", "While executing")):
            text += " | " + ln.strip()
            break
    return text


def step(record: dict, name: str, fn):
    """Run ``fn``; record ok / seconds / first error line under ``record[name]``."""
    t = time.perf_counter()
    try:
        out = fn()
        record[name] = {"ok": True, "s": round(time.perf_counter() - t, 2)}
        print(f"[ok]   {name} ({record[name]['s']} s)", flush=True)
        return out
    except Exception as e:  # noqa: BLE001 - the point is to record what fails
        record[name] = {"ok": False, "s": round(time.perf_counter() - t, 2), "error": first_error(e)}
        print(f"[FAIL] {name} ({record[name]['s']} s): {record[name]['error']}", flush=True)
        return None


def call_targets(gm_graph) -> list[str]:
    """Names of the call_function targets of a graph (delegate calls and getitem left out)."""
    names = set()
    for n in gm_graph.nodes:
        if n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            if name not in ("getitem", "executorch_call_delegate"):
                names.add(name)
    return sorted(names)


def lower(ep, compile_config=None):
    """``to_edge_transform_and_lower`` with the XNNPACK partitioner; returns (edge, info)."""
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], compile_config=compile_config)
    graph = edge.exported_program().graph
    delegates = sum(1 for n in graph.nodes if getattr(n.target, "__name__", "") == "executorch_call_delegate")
    return edge, {"xnnpack_delegates": delegates, "ops_outside_xnnpack": call_targets(graph)}


def serialize(edge, path: Path) -> int:
    """``to_executorch`` and write the .pte; returns its size in bytes."""
    buffer = edge.to_executorch().buffer
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer)
    return len(buffer)


def to_pte(ep, path: Path, compile_config=None) -> tuple[Path, dict]:
    """Lower an ExportedProgram to XNNPACK and write the .pte; returns (path, info)."""
    edge, info = lower(ep, compile_config)
    info["pte_bytes"] = serialize(edge, path)
    meta = Runtime.get().load_program(str(path)).metadata("forward")
    # memory-planned input sizes: the largest input the .pte accepts
    info["planned_input_sizes"] = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
    return path, info


def load_method(path: Path):
    return Runtime.get().load_program(str(path)).load_method("forward")


def max_abs(a, b) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def timed(fns: dict, runs: int = RUNS, warmup: int = WARMUP) -> dict:
    """Median / min ms of each callable; the callables are interleaved run by run so that
    load from other processes on the machine hits them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2)} for k, v in times.items()}


def timed_threads(eager: dict, pte: dict, **kw) -> dict:
    """``timed`` with eager PyTorch at 1 and at 2 intra-op threads (the .pte methods run on
    ExecuTorch's own threadpool, whose size the public API does not set), interleaved."""
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"torch_threads_{threads}"] = timed({**eager, **pte}, **kw)
    torch.set_num_threads(EAGER_THREADS)
    return out


def contiguous_params(model: nn.Module) -> nn.Module:
    """In memory only: the golden checkpoint's first conv weight loads with channels-last
    strides, which XNNPACK's ChannelsLastTaggedReshapePass rejects (see ``split``)."""
    for p in model.parameters():
        p.data = p.data.contiguous()
    return model


# ----------------------------------------------------------------------------- models
def shipped_model() -> nn.Module:
    torch.manual_seed(0)
    return fuse_for_inference(build_model(load_config("fbnetv3a_dsmask_C4")).eval())


def golden_model() -> nn.Module:
    model, _ = load_predictor(load_config(str(GOLDEN / "nars_config.yaml")), str(GOLDEN / "golden_model.pth"))
    return model.eval()


def warm(model: nn.Module) -> None:
    """One eager inference before any export in this process: the sub-pixel upsampling
    blocks cache a constant tensor on first use (functools.lru_cache); when that first use
    is inside torch.export the cache keeps a FakeTensor and later eager calls break."""
    with torch.no_grad():
        model([torch.rand(3, 128, 128)])


class Detector(nn.Module):
    """backbone -> RPN -> RoI heads for one resized, normalized [1, 3, H, W] image, as
    GeneralizedRCNN.forward without the transform; returns boxes, scores, labels, masks."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads

    def forward(self, x):
        features = self.backbone(x)
        images = ImageList(x, [(x.shape[-2], x.shape[-1])])
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        d = detections[0]
        return d["boxes"], d["scores"], d["labels"], d["masks"]


class TrunkRPN(nn.Module):
    """The .pte part of the split: trunk (stride 16 map) and the RPN head's convolutions."""

    def __init__(self, model):
        super().__init__()
        self.backbone, self.rpn_head = model.backbone, model.rpn.head

    def forward(self, x):
        feature = self.backbone(x)[FEATURE]
        logits, deltas = self.rpn_head([feature])
        return feature, logits[0], deltas[0]


class HeadWithPredictor(nn.Module):
    """Pooled RoIs -> a RoI head's predictor outputs: the box head's [N, C, 6, 6] -> (class
    logits [N, K+1], box deltas [N, 4(K+1)]); the mask head's [N, C, 14, 14] -> mask logits
    [N, K+1, 28, 28] (empty background slot)."""

    def __init__(self, head, predictor):
        super().__init__()
        self.head, self.predictor = head, predictor

    def forward(self, x):
        return self.predictor(self.head(x))


def box_head(model) -> HeadWithPredictor:
    return HeadWithPredictor(model.roi_heads.box_head, model.roi_heads.box_predictor)


def mask_head(model) -> HeadWithPredictor:
    return HeadWithPredictor(model.roi_heads.mask_head, model.roi_heads.mask_predictor)


def golden_images() -> list[torch.Tensor]:
    return [image_tensor(Image.open(GOLDEN / f)) for f in GOLDEN_IMAGES]


def rendered(seed: int, size: int = 128) -> torch.Tensor:
    """A float [3, size, size] image in [0, 1] from NARS's synthetic shapes domain."""
    return torch.from_numpy(render(np.random.default_rng(seed), size).image.transpose(2, 0, 1).copy()).float() / 255


# ----------------------------------------------------------------------------- part 1
def part_whole() -> dict:
    rec: dict = {}
    model = shipped_model()
    warm(model)
    det = Detector(model).eval()
    x = torch.randn(1, 3, H, W) * 50  # already resized and normalized (BGR minus mean)
    with torch.no_grad():
        rec["eager_output_shapes"] = [list(t.shape) for t in det(x)]

    step(rec, "export_detector_nonstrict", lambda: torch.export.export(det, (x,), strict=False))
    step(rec, "export_detector_strict", lambda: torch.export.export(det, (x,), strict=True))
    image = (torch.rand(3, H, W) * 255).to(torch.uint8)
    step(rec, "export_ExportableFBNet_uint8_3x224x320", lambda: torch.export.export(ExportableFBNet(model).eval(), (image,), strict=False))

    # draft_export specializes the data-dependent branches on the example and inserts
    # runtime asserts: a graph exists, with torchvision::nms / roi_align in it.
    ep = step(rec, "draft_export_detector", lambda: torch.export.draft_export(det, (x,)))
    if ep is None:
        return rec
    rec["draft_export_non_aten_targets"] = sorted(
        {getattr(n.target, "__name__", str(n.target)) for n in ep.graph.nodes if n.op == "call_function"
         and not str(n.target).startswith("aten.")} - {"getitem"})
    print("  non-aten targets:", rec["draft_export_non_aten_targets"])
    step(rec, "lower_xnnpack_default", lambda: to_pte(ep, PTE_DIR / "whole_default.pte"))
    # Skip the Edge dialect's op check: XNNPACK takes what it can, the rest must have kernels.
    # A fresh draft export: the failed lowering above leaves the program's shape env changed.
    ep = step(rec, "draft_export_detector_again", lambda: torch.export.draft_export(det, (x,)))
    no_check = EdgeCompileConfig(_check_ir_validity=False)
    out = step(rec, "lower_xnnpack_no_ir_check", lambda: lower(ep, compile_config=no_check))
    if out is not None:
        edge, rec["whole_no_ir_check_info"] = out
        print("  outside XNNPACK:", rec["whole_no_ir_check_info"])
        path = PTE_DIR / "whole_no_ir_check.pte"
        if step(rec, "to_executorch_whole", lambda: serialize(edge, path)) is not None:
            method = step(rec, "runtime_load_whole", lambda: load_method(path))
            if method is not None:
                step(rec, "runtime_execute_whole", lambda: method.execute([x]))
    # Does the prebuilt runtime have kernels for torchvision's ops at all?
    names = Runtime.get().operator_registry.operator_names
    rec["runtime_operators_total"] = len(names)
    rec["runtime_operators_matching_nms_or_roi"] = sorted(n for n in names if "nms" in n or "roi" in n)
    print("  runtime ops:", rec["runtime_operators_total"], "nms/roi:", rec["runtime_operators_matching_nms_or_roi"])
    return rec


# ----------------------------------------------------------------------------- part 2
def host_detect(model, trunk, box, mask, image: torch.Tensor) -> dict:
    """The split pipeline for one float [3, H, W] image: the three .pte methods for the
    convolutions, everything else in PyTorch with the model's own modules (same steps as
    GeneralizedRCNN / RegionProposalNetwork / FBNetRoIHeads .forward in eval mode)."""
    with torch.no_grad():
        images, _ = model.transform([image])
        feature, logits, deltas = trunk.execute([images.tensors])
        features = {FEATURE: feature}
        rpn = model.rpn
        anchors = rpn.anchor_generator(images, [feature])
        num_anchors_per_level = [logits[0].numel()]
        objectness, box_deltas = concat_box_prediction_layers([logits], [deltas])
        proposals = rpn.box_coder.decode(box_deltas, anchors).view(1, -1, 4)
        proposals, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        rh = model.roi_heads
        class_logits, box_regression = box.execute([rh.box_roi_pool(features, proposals, images.image_sizes)])
        boxes, scores, labels = rh.postprocess_detections(class_logits, box_regression, proposals, images.image_sizes)
        if boxes[0].shape[0]:
            mask_logits = mask.execute([rh.mask_roi_pool(features, boxes, images.image_sizes)])[0]
        else:  # the .pte takes 1..N RoIs; no detections: no mask head
            mask_logits = torch.zeros(0, model.num_classes + 1, 28, 28)
        masks = maskrcnn_inference(mask_logits, labels)
        result = [{"boxes": boxes[0], "labels": labels[0], "scores": scores[0], "masks": masks[0]}]
        return model.transform.postprocess(result, images.image_sizes, [tuple(image.shape[-2:])])[0]


def export_heads(model, tag: str, rec: dict, max_rois: int, max_dets: int):
    """Box and mask head .pte files with a dynamic RoI count (1..max)."""
    n_box, n_mask = Dim("rois", min=1, max=max_rois), Dim("dets", min=1, max=max_dets)
    box_mod, mask_mod = box_head(model).eval(), mask_head(model).eval()
    # Example inputs at the maximum count: with a small example (10 RoIs, max 100) the .pte
    # came out memory-planned for 15 RoIs and failed on more (recorded below).
    xb, xm = torch.randn(max_rois, 112, 6, 6), torch.randn(max_dets, 112, 14, 14)
    # the mask head as NARS runs it (sub-pixel upsampling: the 2x nearest + depthwise conv computed
    # as four convs whose kernels are computed from the weight inside the graph), and the same
    # function in d2go's form (pw -> 2x nearest -> dw -> pwl: NARS's public switch, on a copy)
    mask_d2go = use_d2go_upsampling(copy.deepcopy(mask_head(model))).eval()
    parts = (("box", "box_head", box_mod, xb, n_box), ("mask_subpixel", "mask_head_subpixel", mask_mod, xm, n_mask),
             ("mask_d2go", "mask_head_d2go", mask_d2go, xm, n_mask))
    out = {}
    for key, file_name, module, example, dim in parts:  # step() calls each lambda at once
        ep = step(rec, f"{tag}_{key}_export_dynN",
                  lambda: torch.export.export(module, (example,), dynamic_shapes=({0: dim},)))
        res = step(rec, f"{tag}_{key}_lower", lambda: to_pte(ep, PTE_DIR / f"{tag}_{file_name}_dynN.pte")) if ep else None
        if res:
            rec[f"{tag}_{key}_info"] = res[1]
            out[key] = (module, res[0])
    return out


def part_split() -> dict:
    rec: dict = {}
    torch.set_num_threads(EAGER_THREADS)
    rec["eager_torch_threads"] = torch.get_num_threads()

    # ---- golden (trained) model: numerics and the split pipeline end to end
    golden = golden_model()
    warm(golden)
    rec["golden_noncontiguous_params"] = [n for n, p in golden.named_parameters() if not p.is_contiguous()]
    trunk = TrunkRPN(golden).eval()
    x = torch.randn(1, 3, H, W) * 50
    ep = torch.export.export(trunk, (x,))
    step(rec, "golden_trunk_lower_as_loaded", lambda: to_pte(ep, PTE_DIR / "golden_trunk_as_loaded.pte"))
    contiguous_params(golden)
    # fixed size (the shipped test size) and dynamic H, W (any resized image)
    ep_static = step(rec, "golden_trunk_export_static", lambda: torch.export.export(trunk, (x,)))
    static = step(rec, "golden_trunk_lower_static", lambda: to_pte(ep_static, PTE_DIR / "golden_trunk_rpn_224x320.pte"))
    dyn = ({2: Dim("H", min=32, max=512), 3: Dim("W", min=32, max=512)},)
    ep_dyn = step(rec, "golden_trunk_export_dynHW", lambda: torch.export.export(trunk, (x,), dynamic_shapes=dyn))
    dynamic = step(rec, "golden_trunk_lower_dynHW", lambda: to_pte(ep_dyn, PTE_DIR / "golden_trunk_rpn_dynHW.pte"))
    rec["golden_trunk_static_info"], rec["golden_trunk_dyn_info"] = static[1], dynamic[1]
    m_static, m_dyn = load_method(static[0]), load_method(dynamic[0])

    # trunk numerics: the golden images through the model's own transform, + a 224x320 input
    inputs = [golden.transform([img])[0].tensors for img in golden_images()] + [x]
    diffs = []
    with torch.no_grad():
        for xi in inputs:
            ref = trunk(xi)
            outs = {"dynHW": m_dyn.execute([xi])}
            if tuple(xi.shape[-2:]) == (H, W):
                outs["static"] = m_static.execute([xi])
            for kind, out in outs.items():
                diffs.append({"input": list(xi.shape), "pte": kind,
                              "max_abs_feature/logits/deltas": [round(max_abs(o, r), 8) for o, r in zip(out, ref)],
                              "max_abs_ref": [round(float(r.abs().max()), 3) for r in ref]})
    rec["golden_trunk_vs_eager"] = diffs

    heads = export_heads(golden, "golden", rec, max_rois=100, max_dets=100)
    # the planning quirk: the same mask head exported with a 10-RoI example, Dim max 100
    probe = mask_head(golden).eval()
    ep = torch.export.export(probe, (torch.randn(10, 112, 14, 14),), dynamic_shapes=({0: Dim("dets", min=1, max=100)},))
    path, info = to_pte(ep, PTE_DIR / "golden_mask_head_example10_max100.pte")
    rec["mask_head_example10_max100_planned_input"] = info["planned_input_sizes"]
    step(rec, "execute_example10_max100_pte_with_30_rois", lambda: load_method(path).execute([torch.randn(30, 112, 14, 14)]))
    head_diffs = []
    with torch.no_grad():
        for name, (mod, path) in heads.items():
            method = load_method(path)
            shape = (112, 6, 6) if name == "box" else (112, 14, 14)
            for n in (1, 7, 30):
                xi = torch.randn(n, *shape)
                out, ref = method.execute([xi]), mod(xi)
                ref = ref if isinstance(ref, tuple) else (ref,)
                head_diffs.append({"head": name, "n": n, "max_abs": [round(max_abs(o, r), 7) for o, r in zip(out, ref)],
                                   "max_abs_ref": [round(float(r.abs().max()), 3) for r in ref]})
    rec["golden_heads_vs_eager"] = head_diffs
    for d in head_diffs:
        print("  ", d)

    # the split pipeline on the golden images against model([image])
    e2e = []
    if "box" in heads and "mask_d2go" in heads:
        box_m, mask_m = load_method(heads["box"][1]), load_method(heads["mask_d2go"][1])
        for f, img in zip(GOLDEN_IMAGES, golden_images()):
            with torch.no_grad():
                ref = golden([img])[0]
            got = host_detect(golden, m_dyn, box_m, mask_m, img)
            same = got["labels"].shape == ref["labels"].shape and bool((got["labels"] == ref["labels"]).all())
            row = {"image": f, "detections_eager": int(ref["labels"].numel()), "detections_split": int(got["labels"].numel()),
                   "labels_equal": same}
            if same:
                row.update({k: round(max_abs(got[k], ref[k]), 7) for k in ("boxes", "scores", "masks")})
            e2e.append(row)
            print("  ", row)
        rec["golden_split_pipeline_vs_eager_model"] = e2e
        img = golden_images()[0]
        rec["golden_latency_one_image_128x128"] = timed_threads(
            {"eager_model": lambda: golden([img])},
            {"split_pte_pipeline": lambda: host_detect(golden, m_dyn, box_m, mask_m, img)})
        print("  ", rec["golden_latency_one_image_128x128"])

    # ---- latency of the trunk + RPN head at 1x3x224x320 (golden weights = shipped trunk)
    with torch.no_grad():
        rec["latency_trunk_rpn_224x320"] = timed_threads(
            {"eager_torch": lambda: trunk(x)},
            {"pte_xnnpack_static": lambda: m_static.execute([x]), "pte_xnnpack_dynHW": lambda: m_dyn.execute([x])})
    print("  ", rec["latency_trunk_rpn_224x320"])

    # ---- heads latency with the shipped 80-class model (class count sets the predictor size)
    shipped = shipped_model()
    warm(shipped)
    sheads = export_heads(shipped, "shipped", rec, max_rois=30, max_dets=100)
    with torch.no_grad():
        box_mod, box_path = sheads["box"]
        box_m = load_method(box_path)
        xb = torch.randn(30, 112, 6, 6)
        rec["latency_box_head_30rois_80cls"] = timed_threads({"eager_torch": lambda: box_mod(xb)}, {"pte_xnnpack": lambda: box_m.execute([xb])})
        print("  ", rec["latency_box_head_30rois_80cls"])
        eager_mask = sheads["mask_subpixel"][0]  # NARS's default (sub-pixel) form; same weights as the d2go-form copy
        mask_d2go, mask_path = sheads["mask_d2go"]
        mask_m = load_method(mask_path)
        for n in (10, 100):
            xm = torch.randn(n, 112, 14, 14)
            rec[f"latency_mask_head_{n}dets_80cls"] = timed_threads(
                {"eager_torch_subpixel": lambda: eager_mask(xm), "eager_torch_d2go_form": lambda: mask_d2go(xm)},
                {"pte_xnnpack_d2go_form": lambda: mask_m.execute([xm])}, runs=10 if n == 100 else RUNS)
            print("  ", n, rec[f"latency_mask_head_{n}dets_80cls"])
    return rec


# ----------------------------------------------------------------------------- part 3
def part_int8() -> dict:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    rec: dict = {}
    torch.set_num_threads(EAGER_THREADS)
    golden = contiguous_params(golden_model())
    warm(golden)
    trunk = TrunkRPN(golden).eval()
    prep = lambda img: golden.transform([img])[0].tensors  # noqa: E731
    calib = [prep(rendered(s)) for s in range(100, 132)]  # 32 images, 128x128
    rec["calibration"] = "32 nars.data.shapes images (seeds 100-131), 128x128, through the model's transform"
    x = torch.randn(1, 3, H, W) * 50
    dyn = ({2: Dim("H", min=32, max=512), 3: Dim("W", min=32, max=512)},)

    def quantize():
        graph = torch.export.export(trunk, (calib[0],), dynamic_shapes=dyn).module()
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(graph, quantizer)
        for c in calib:
            prepared(c)
        return convert_pt2e(prepared)

    qmod = step(rec, "pt2e_prepare_calibrate_convert", quantize)
    ep = step(rec, "int8_export_dynHW", lambda: torch.export.export(qmod, (calib[0],), dynamic_shapes=dyn))
    res = step(rec, "int8_lower_xnnpack", lambda: to_pte(ep, PTE_DIR / "golden_trunk_rpn_int8_dynHW.pte"))
    fp = step(rec, "fp32_lower_xnnpack", lambda: to_pte(torch.export.export(trunk, (x,), dynamic_shapes=dyn),
                                                         PTE_DIR / "golden_trunk_rpn_fp32_dynHW.pte"))
    rec["int8_info"] = res[1]
    m_q, m_f = load_method(res[0]), load_method(fp[0])

    # int8 vs fp32 eager on held-out images: golden PNGs and rendered ones at 224x320
    rows = []
    held_out = [prep(img) for img in golden_images()]
    held_out += [golden.transform([rendered(s, 320)[:, :H, :W]])[0].tensors for s in (300, 301)]
    with torch.no_grad():
        for xi in held_out:
            ref, out = trunk(xi), m_q.execute([xi])
            rel = [round(max_abs(o, r) / float(r.abs().max()), 4) for o, r in zip(out, ref)]
            # do the top-scoring anchors survive? overlap of the top-30 objectness positions
            k = 30
            top_ref = set(ref[1].flatten().topk(k).indices.tolist())
            top_q = set(out[1].flatten().topk(k).indices.tolist())
            rows.append({"input": list(xi.shape), "max_abs/max|ref| feature,logits,deltas": rel,
                         "top30_objectness_overlap": len(top_ref & top_q) / k})
            print("  ", rows[-1])
    rec["int8_vs_fp32_eager"] = rows

    # the split pipeline with the int8 trunk, fp32 heads, against model([image])
    heads_rec: dict = {}
    heads = export_heads(golden, "golden_for_int8", heads_rec, max_rois=100, max_dets=100)
    box_m, mask_m = load_method(heads["box"][1]), load_method(heads["mask_d2go"][1])
    e2e = []
    for f, img in zip(GOLDEN_IMAGES, golden_images()):
        with torch.no_grad():
            ref = golden([img])[0]
        got = host_detect(golden, m_q, box_m, mask_m, img)
        n = min(len(ref["scores"]), len(got["scores"]))
        e2e.append({"image": f, "detections_eager": int(ref["labels"].numel()), "detections_int8_split": int(got["labels"].numel()),
                    "top5_labels_eager": ref["labels"][:5].tolist(), "top5_labels_int8": got["labels"][:5].tolist(),
                    "top5_scores_eager": [round(v, 3) for v in ref["scores"][:5].tolist()],
                    "top5_scores_int8": [round(v, 3) for v in got["scores"][:5].tolist()],
                    "labels_equal_first_n": bool((ref["labels"][:n] == got["labels"][:n]).all())})
        print("  ", e2e[-1])
    rec["int8_split_pipeline_vs_eager_model"] = e2e

    with torch.no_grad():
        rec["latency_trunk_rpn_224x320"] = timed_threads(
            {"eager_torch_fp32": lambda: trunk(x)},
            {"pte_xnnpack_fp32": lambda: m_f.execute([x]), "pte_xnnpack_int8": lambda: m_q.execute([x])})
    print("  ", rec["latency_trunk_rpn_224x320"])
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("whole", "split", "int8", "all"), default="all")
    args = parser.parse_args()
    import executorch.version
    import torchvision

    env = {"executorch": executorch.version.__version__, "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cpus": os.cpu_count(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "loadavg_at_start": os.getloadavg()}
    print(env)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    parts = ("whole", "split", "int8") if args.part == "all" else (args.part,)
    for part in parts:
        print(f"===== {part}", flush=True)
        t = time.perf_counter()
        rec = {"env": env, **{"whole": part_whole, "split": part_split, "int8": part_int8}[part]()}
        rec["part_seconds"] = round(time.perf_counter() - t, 1)
        rec["loadavg_at_end"] = os.getloadavg()
        (RESULTS_DIR / f"{part}.json").write_text(json.dumps(rec, indent=1, default=str))
        print(f"wrote {RESULTS_DIR / f'{part}.json'} ({rec['part_seconds']} s)")


if __name__ == "__main__":
    main()
