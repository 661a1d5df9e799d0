"""Inference latency of FBNetV3IS configs on this machine's CPU, timed as ``nars predict`` runs them.

Protocol (bench/bench_model_cost.py's): the model is built, fused for inference
(``nars.model.fuse``), channels-last (``to_device``), eval mode, ``torch.no_grad``, with
random weights unless weights are given; one seeded HxW RGB image, kept at HxW (the test
resize is set to it). Why a fixed detection count: with random weights, how many boxes pass
the score threshold is arbitrary (usually none, so the mask head would never run); the
threshold is therefore 0, so every image yields ``detections`` boxes (by default the mask RoIs
the cost model assumes: the config's detections, at most its proposals, which stay the
config's) and the mask head always runs on that many RoIs. Warm-up
runs, then timed runs interleaved round-robin across the configs (the order rotates each
round, so a burst of load on a shared CPU hits every config alike); median and 90th
percentile reported.

Set ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported for stable figures on a shared CPU
(spinning OpenMP threads made 2-thread runs 4-17x slower, BENCHMARKS.md).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import functools
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nars.config import set_key
from nars.deploy import ENGINES
from nars.engine.distributed import to_device
from nars.engine.loading import load_run_weights
from nars.errors import UserError
from nars.model.cost import config_cost, test_input_size
from nars.model.fbnetv3is import build_model
from nars.model.fuse import fuse_for_inference

logger = logging.getLogger(__name__)
WARMUP, RUNS = 3, 10


@dataclass(frozen=True)
class LatencyResult:
    """One config's latency; ``detections`` is what the model returned per image (the
    requested count unless the RoI heads ran out of boxes)."""

    median_ms: float
    p90_ms: float
    min_ms: float  # the least disturbed run: on a shared CPU the steadiest figure
    runs: int
    engine: str
    threads: int
    input_size: tuple[int, int]
    detections: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_size": list(self.input_size)}


@functools.cache
def _check_wait_policy() -> None:
    """Warn (once per process) when OpenMP threads may spin: see the module docstring."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        logger.warning("OMP_WAIT_POLICY is not PASSIVE: on a shared CPU latencies can come out many times too high "
                       "(set OMP_WAIT_POLICY=PASSIVE before starting Python)")


def latency_config(cfg: Mapping[str, Any], input_size: tuple[int, int] | None = None,
                   detections: int | None = None) -> dict[str, Any]:
    """A copy of ``cfg`` set up for timing on the CPU: an HxW image keeps its size (default:
    ``test_input_size(cfg)``), and every image yields exactly ``detections`` boxes (default:
    the mask RoIs the cost model assumes, ``config_cost(cfg).mask_rois``). The proposals stay
    the config's: the box head's load is the candidate's own, and a score threshold of 0
    lets each proposal give a detection per class."""
    cfg = copy.deepcopy(dict(cfg))
    h, w = input_size or test_input_size(cfg)
    n = config_cost(cfg, input_size=(h, w)).mask_rois if detections is None else detections
    if min(h, w) < 1 or n < 1:
        raise UserError(f"latency needs an input size >= 1x1 and detections >= 1, got {h}x{w} and {n}")
    for key, value in (("INPUT.MIN_SIZE_TEST", min(h, w)), ("INPUT.MAX_SIZE_TEST", max(h, w)),
                       ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0), ("TEST.DETECTIONS_PER_IMAGE", n),
                       ("MODEL.DEVICE", "cpu")):
        set_key(cfg, key, value, "latency")
    return cfg


def inference_model(cfg: Mapping[str, Any], weights: str | None = None) -> torch.nn.Module:
    """The config's model as ``nars predict`` runs it on the CPU: fused, channels-last, eval."""
    model = build_model(cfg)
    if weights:
        load_run_weights(model, weights, cfg["MODEL"]["WEIGHTS_EMA"], complete=True)
    return fuse_for_inference(to_device(model, torch.device("cpu")))


def exported_graph(model: torch.nn.Module, engine: str, image: torch.Tensor, path: str | Path) -> None:
    """``model`` as the onnxruntime engines run it, at ``path``: its ``nars deploy`` graph,
    quantized for ``onnxruntime-int8`` with ``image`` as the calibration (the ranges do not
    change the kernels, so the time)."""
    from nars.deploy.onnx import export_onnx, image_array
    from nars.deploy.quantize import quantize_graph

    export_onnx(model, path)
    if engine == "onnxruntime-int8":
        quantize_graph(path, path, [image_array(image)])


def _runner(cfg: Mapping[str, Any], engine: str, threads: int, weights: str | None,
            image: torch.Tensor, path: str) -> Callable[[], int]:
    """A call that runs one inference and returns the number of detections; the
    onnxruntime engines export the model to ``path`` first."""
    model = inference_model(cfg, weights)
    if engine == "torch":
        def run() -> int:
            with torch.no_grad():
                return len(model([image])[0]["boxes"])
        return run
    from nars.deploy.onnx import image_array, onnx_session, run_onnx

    exported_graph(model, engine, image, path)
    session, pixels = onnx_session(path, threads), image_array(image)  # the graph's uint8 input, made once
    return lambda: len(run_onnx(session, pixels)["boxes"])


def measure_latencies(
    cfgs: Sequence[Mapping[str, Any]],
    *,
    engine: str | Sequence[str] = "torch",
    threads: int = 2,
    input_size: tuple[int, int] | None = None,
    detections: int | None = None,
    warmup: int = WARMUP,
    runs: int = RUNS,
    weights: str | None = None,
    graph_dir: str | Path | None = None,
    progress: bool = False,
) -> list[LatencyResult]:
    """Each config's latency (see the module docstring), measured together round-robin, with
    ``engine`` (or one engine per config: engines compared side by side). ``input_size`` and
    ``detections`` default to each config's own; the thread count is restored after. The
    onnxruntime engines' graphs go to ``graph_dir`` as ``<index>.onnx`` when given (kept for
    ``block_latencies``), else to a temporary folder."""
    engines = [engine] * len(cfgs) if isinstance(engine, str) else list(engine)
    for name in engines:
        if name not in ENGINES:
            raise UserError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    if threads < 1 or runs < 1 or warmup < 0:
        raise UserError(f"latency needs threads >= 1, runs >= 1 and warmup >= 0, got {threads}, {runs}, {warmup}")
    if not cfgs:
        return []
    _check_wait_policy()
    sizes = [tuple(input_size) if input_size else test_input_size(cfg) for cfg in cfgs]
    timed = [latency_config(cfg, size, detections) for cfg, size in zip(cfgs, sizes)]
    generator = torch.Generator().manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with contextlib.ExitStack() as stack:
            workdir = graph_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="nars-latency-"))
            runners = [_runner(cfg, name, threads, weights, torch.rand(3, h, w, generator=generator),
                               f"{workdir}/{i}.onnx") for i, (cfg, name, (h, w)) in enumerate(zip(timed, engines, sizes))]
            times: list[list[float]] = [[] for _ in runners]
            found = [0] * len(runners)
            rounds = tqdm(range(warmup + runs), desc="latency", unit="round", disable=not progress, dynamic_ncols=True)
            for r in rounds:
                shift = r % len(runners)
                for i in list(range(shift, len(runners))) + list(range(shift)):
                    start = time.perf_counter()
                    found[i] = runners[i]()
                    if r >= warmup:
                        times[i].append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return [LatencyResult(float(np.median(t)), float(np.percentile(t, 90)), min(t), runs, name, threads, size, n)
            for t, name, size, n in zip(times, engines, sizes, found)]


def measure_latency(cfg: Mapping[str, Any], **kwargs: Any) -> LatencyResult:
    """One config's latency; keywords as ``measure_latencies``."""
    return measure_latencies([cfg], **kwargs)[0]


def onnx_scope(module_name: str) -> str:
    """The node-name prefix the TorchScript exporter gives a submodule's nodes: its path,
    with a numbered child (of a Sequential) named ``parent.index``."""
    parts = module_name.split(".")
    return "/" + "/".join(f"{parts[i - 1]}.{p}" if p.isdigit() and i else p for i, p in enumerate(parts)) + "/"


def _onnx_block_times(model: torch.nn.Module, names: Sequence[str], engine: str, image: torch.Tensor,
                      threads: int, runs: int, graph: str | Path | None) -> list[list[float]]:
    """Per block (module ``names``), its nodes' kernel time (ms) in each of ``runs`` graph
    runs after one warm-up, from onnxruntime's profile of ``graph`` (exported from ``model``
    when None): a block is the nodes under its scope, fused and quantization nodes included."""
    from nars.deploy.onnx import image_array, onnx_session, run_onnx

    with tempfile.TemporaryDirectory(prefix="nars-latency-") as tmp:
        if graph is None:
            graph = f"{tmp}/model.onnx"
            exported_graph(model, engine, image, graph)
        session = onnx_session(graph, threads, profile=f"{tmp}/profile")
        pixels = image_array(image)
        for _ in range(runs + 1):
            run_onnx(session, pixels)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    scopes = [onnx_scope(name) for name in names]
    times = [[0.0] * len(starts) for _ in names]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(starts, e["ts"]) - 1
        for i, scope in enumerate(scopes):
            if e["name"].startswith(scope):
                times[i][run] += e["dur"] / 1e3
                break
    missing = [name for name, t in zip(names, times) if not any(t)]
    if missing:  # the exporter named the nodes otherwise: a bug here, not the user's
        raise RuntimeError(f"no onnxruntime node found for blocks {missing[:3]}")
    return [t[1:] for t in times]


def block_latencies(cfg: Mapping[str, Any], *, engine: str = "torch", threads: int = 2, runs: int = 3,
                    input_size: tuple[int, int] | None = None, graph: str | Path | None = None) -> list[float]:
    """Median in-context time (ms) of each block (stem and inverted residuals of trunk, RPN
    and heads, in the model's order, as ``ModelCost.blocks`` lists them) over ``runs``
    inferences after one warm-up: what a per-block (nn-Meter style) latency model is fitted
    on. PyTorch's from forward hooks, onnxruntime's from its profile (the exported graph,
    int8 for ``onnxruntime-int8``; ``graph``: that graph as ``measure_latencies`` exported it,
    else it is exported here). Both cost microseconds per block, so whole-model figures come
    from ``measure_latencies``, not from here."""
    size = tuple(input_size) if input_size else test_input_size(cfg)
    model = inference_model(latency_config(cfg, size))
    named = [(name, m) for name, m in model.named_modules() if name.rsplit(".", 1)[-1].startswith("fbnetv2_")]
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    if engine != "torch":
        times = _onnx_block_times(model, [name for name, _ in named], engine, image, threads, runs, graph)
        return [float(np.median(t)) for t in times]
    times = [[] for _ in named]
    starts = [0.0] * len(named)
    for i, (_, block) in enumerate(named):
        block.register_forward_pre_hook(lambda m, x, i=i: starts.__setitem__(i, time.perf_counter()))
        block.register_forward_hook(lambda m, x, y, i=i: times[i].append((time.perf_counter() - starts[i]) * 1e3))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for _ in range(runs + 1):
                model([image])
    finally:
        torch.set_num_threads(previous)
    return [float(np.median(t[1:])) for t in times]
