"""Latency predictor: an FBNetV3IS config's CPU latency from its analytic costs, fitted on
candidates of a space measured on this machine (``nars.deploy.latency``), measurements
cached per machine.

What latency depends on: per block, its shapes and costs (dense and depthwise multiply-adds,
the activations it writes, the per-call overhead; GroupNorm, which does not fold into the
convolutions, adds traffic), the trunk and RPN at the image size, the RoI heads over their
RoI counts; plus a fixed part (resize, RPN decoding and NMS, RoI pooling, mask pasting).
MFLOPs alone rank it poorly: at small inputs the fixed and per-block costs dominate, at
large ones the memory-bound depthwise and mask-head work.

The default predictor (``kind="blocks"``, nn-Meter's idea) learns each block's in-context
time from its shapes (a random forest over every block of every measured model: tens of
samples per model), sums them and adds a regression of the rest on the RoI counts and image
size. ``ridge`` and ``gbm`` regress the whole model's latency on per-part sums of the same
costs; with the 12-24 models a search measures they extrapolate far worse on a wide space
(BENCHMARKS.md, "Latency predictor"; bench/bench_latency_predictor.py).

Cache: ``$NARS_CACHE/latency/<key>.json`` (default ``~/.cache/nars``), one file per machine
(CPU model, cores, torch version), thread count and bound space (its templates, which fix
input size and detections). Every ``measure_space`` call measures ``samples`` new
candidates, adds them to the file (the newest ``MAX_CACHED`` kept) and returns all of them,
so each search on the machine sharpens the predictor at a few seconds' cost.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nars.config import get
from nars.fileio import atomic_write_text
from nars.model.arch import ArchSpec
from nars.model.cost import config_cost, test_input_size
from search_spaces import SearchSpace, sample

KINDS = ("blocks", "ridge", "gbm")
TARGET = "median_ms"
MAX_CACHED = 400
CACHE_ENV = "NARS_CACHE"
# trunk + RPN at the image size; the RoI heads times their RoI counts (a change here or in
# BLOCK_FEATURES changes the cache key: stored features would no longer match)
FEATURES = (
    "image_mmacs", "image_dw_mmacs", "image_mact", "image_blocks",
    "box_mmacs", "box_dw_mmacs", "box_mact", "box_blocks",
    "mask_mmacs", "mask_dw_mmacs", "mask_mact", "mask_blocks",
    "rois", "mask_rois", "mask_paste_mpix", "image_mpix", "gn_mact", "gn_blocks",
)
# what the blocks leave: resize, RPN decoding and NMS, RoI pooling, box and mask post-processing
OVERHEAD = ("rois", "mask_rois", "mask_paste_mpix", "image_mpix")
# one row per block; batch: 1 for the image, the RoI count in the RoI heads
BLOCK_FEATURES = ("batch", "cin", "h", "w", "cout", "ho", "wo", "kernel", "stride", "se", "gn", "params",
                  "mmacs", "dw_mmacs", "mact")


def config_features(cfg: Mapping[str, Any], arch: ArchSpec | None = None,
                    input_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(``FEATURES`` row, ``BLOCK_FEATURES`` rows in the model's block order) of the model a
    config builds (``cfg`` as ``config_cost`` takes it, plus MODEL.FBNET_V2.NORM) on an
    ``input_size`` image (default: ``test_input_size(cfg)``)."""
    h, w = input_size or test_input_size(cfg)
    cost = config_cost(cfg, arch, (h, w))
    trunk, rpn, box, mask = (cost.parts[p] for p in ("trunk", "rpn", "box_head", "mask_head"))
    r, m = cost.rois, cost.mask_rois
    image_act = trunk.activations + rpn.activations
    heads_act = r * box.activations + m * mask.activations
    gn = float(str(get(cfg, "MODEL.FBNET_V2.NORM")).upper() == "GN")
    row = np.array([
        (trunk.macs + rpn.macs) / 1e6, (trunk.dw_macs + rpn.dw_macs) / 1e6, image_act / 1e6, trunk.blocks + rpn.blocks,
        r * box.macs / 1e6, r * box.dw_macs / 1e6, r * box.activations / 1e6, box.blocks,
        m * mask.macs / 1e6, m * mask.dw_macs / 1e6, m * mask.activations / 1e6, mask.blocks,
        r, m, m * h * w / 1e6, h * w / 1e6,
        gn * (image_act + heads_act) / 1e6, gn * (trunk.blocks + rpn.blocks + box.blocks + mask.blocks),
    ], dtype=np.float64)
    batches = {"trunk": 1, "rpn": 1, "box_head": r, "mask_head": m}
    blocks = [[n, b.cin, b.h, b.w, b.cout, b.ho, b.wo, b.spec.kernel, b.spec.stride, float(b.spec.se), gn,
               b.cost.params, n * b.cost.macs / 1e6, n * b.cost.dw_macs / 1e6, n * b.cost.activations / 1e6]
              for part, n in batches.items() for b in cost.blocks[part]]
    return row, np.array(blocks, dtype=np.float64).reshape(len(blocks), len(BLOCK_FEATURES))


class LatencyPredictor:
    """Milliseconds of configs, fitted on measurements (``measure_configs``' dicts).

    ``blocks`` (nn-Meter style): a random forest predicts each block's in-context time from
    its shapes, summed per model, plus a ridge regression of what the blocks leave
    (``OVERHEAD``, kept within the measured models' range); every measured model gives tens of
    block samples, so it generalises from few models. ``ridge`` and ``gbm``: one regression on
    the model's ``FEATURES``."""

    def __init__(self, kind: str = "blocks", seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"unknown latency predictor {kind!r}; expected one of {KINDS}")
        self.kind, self.seed, self.samples = kind, seed, 0

    def _ridge(self) -> Any:
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))

    def fit(self, measurements: Sequence[Mapping[str, Any]]) -> "LatencyPredictor":
        y = np.array([m[TARGET] for m in measurements], dtype=np.float64)
        rows = np.array([m["features"] for m in measurements], dtype=np.float64).reshape(len(y), len(FEATURES))
        self.samples = len(y)
        if self.kind == "ridge":
            self.model = self._ridge().fit(rows, y)
        elif self.kind == "gbm":
            self.model = GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8,
                                                   random_state=self.seed).fit(rows, y)
        else:
            x = np.concatenate([np.asarray(m["block_features"], dtype=np.float64) for m in measurements])
            t = np.concatenate([np.asarray(m["block_ms"], dtype=np.float64) for m in measurements])
            self.model = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=self.seed).fit(x, t)
            rest = y - np.array([sum(m["block_ms"]) for m in measurements])
            self.overhead = self._ridge().fit(rows[:, [FEATURES.index(f) for f in OVERHEAD]], rest)
            # a line through a few noisy models (a loaded machine) can extrapolate the overhead
            # far below anything measured, to a model costing 0 ms: keep it within what was seen
            self.overhead_range = (float(rest.min()), float(rest.max()))
        return self

    def predict_features(self, rows: np.ndarray, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """Predicted ms (at least 0) from ``config_features``' rows and block rows."""
        rows = np.asarray(rows, dtype=np.float64).reshape(len(blocks), len(FEATURES))
        if not len(rows):
            return np.zeros(0)
        if self.kind != "blocks":
            return np.maximum(self.model.predict(rows), 0.0)
        per_block = self.model.predict(np.concatenate(blocks))
        ends = np.cumsum([len(b) for b in blocks])
        sums = np.array([chunk.sum() for chunk in np.split(per_block, ends[:-1])])
        overhead = np.clip(self.overhead.predict(rows[:, [FEATURES.index(f) for f in OVERHEAD]]), *self.overhead_range)
        return np.maximum(sums + overhead, 0.0)

    def predict_configs(self, configs: Sequence[tuple[Mapping[str, Any], ArchSpec | None]]) -> np.ndarray:
        """Predicted ms of (config, arch or None) pairs, as ``config_features`` takes them."""
        features = [config_features(cfg, arch) for cfg, arch in configs]
        return self.predict_features(np.array([f[0] for f in features]), [f[1] for f in features])

    def predict_config(self, cfg: Mapping[str, Any], arch: ArchSpec | None = None) -> float:
        return float(self.predict_configs([(cfg, arch)])[0])


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nars") / "latency"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(space: SearchSpace, threads: int, engine: str = "torch") -> dict[str, Any]:
    """What a measurement depends on: machine, threads, engine, torch (and onnxruntime for its
    engines), and the bound space (arch template and cost templates: input size, detections,
    RoIs)."""
    templates = json.dumps([repr(space.arch_template), {k: repr(v) for k, v in space.cost_templates.items()}])
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.machine(), "torch": torch.__version__,
        "threads": threads, "engine": engine, "space": space.name,
        "space_hash": hashlib.sha256(templates.encode()).hexdigest()[:12],
        "input_size": [repr(space.cost_templates["INPUT.MIN_SIZE_TEST"]),
                       repr(space.cost_templates["INPUT.MAX_SIZE_TEST"])],
        "detections": repr(space.cost_templates["TEST.DETECTIONS_PER_IMAGE"]),
        "features": list(FEATURES), "block_features": list(BLOCK_FEATURES),
        **({} if engine == "torch" else {"onnxruntime": importlib.metadata.version("onnxruntime")}),
    }


def cache_path(key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key['space']}-t{key['threads']}-{key['engine']}-{digest}.json"


def read_cache(path: Path, key: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The measurements stored under ``key``; none when the file is absent, unreadable or
    another key's (a hash collision or a hand edit): it is then rewritten."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("measurements", [])) if isinstance(data, dict) and data.get("key") == dict(key) else []


def measure_configs(cfgs: Sequence[Mapping[str, Any]], *, threads: int = 2, runs: int = 7,
                    input_size: tuple[int, int] | None = None, engine: str = "torch",
                    progress: bool = False) -> list[dict[str, Any]]:
    """What the predictor is fitted on, per config: ``LatencyResult`` fields (the models
    timed together, round-robin, with ``engine``), in-context block times and
    ``config_features``."""
    from nars.deploy.latency import block_latencies, measure_latencies

    onnx = engine != "torch"
    with tempfile.TemporaryDirectory(prefix="nars-latency-") as graphs:  # each graph exported once
        results = measure_latencies(cfgs, engine=engine, threads=threads, runs=runs, warmup=2, input_size=input_size,
                                    graph_dir=graphs if onnx else None, progress=progress)
        out = []
        for i, (cfg, result) in enumerate(zip(cfgs, results)):
            row, blocks = config_features(cfg, input_size=input_size)
            block_ms = block_latencies(cfg, engine=engine, threads=threads, input_size=input_size,
                                       graph=f"{graphs}/{i}.onnx" if onnx else None)
            if len(block_ms) != len(blocks):  # the builder and the cost model walk the same specs
                raise RuntimeError(f"the model has {len(block_ms)} blocks, the cost model {len(blocks)}")
            out.append({**result.to_dict(), "features": row.tolist(), "block_features": blocks.tolist(),
                        "block_ms": block_ms})
    return out


def measure_space(
    space: SearchSpace,
    config_of: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    *,
    samples: int = 24,
    threads: int = 2,
    seed: int = 0,
    max_mflops: float | None = None,
    max_params: float | None = None,
    cache: bool = True,
    runs: int = 7,
    engine: str = "torch",
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure ``samples`` new candidates (uniform within the MFLOPs / params limits;
    ``config_of(candidate)``: the complete config a trial of it would run) and add them to
    the cached ones. Returns every measurement (``measure_configs``' dicts with id,
    candidate, MFLOPs) and ``{path, measured, cached, seconds}``."""
    key = cache_key(space, threads, engine)
    path = cache_path(key)
    stored = read_cache(path, key) if cache else []
    known = {m["id"] for m in stored}
    pool = sample(space, samples + len(known), method="uniform", seed=seed + len(stored),
                  max_mflops=max_mflops, max_params=max_params)
    new = [s for s in pool if s.id not in known][:samples]
    start = time.perf_counter()
    measured = measure_configs([config_of(s.candidate) for s in new], threads=threads, runs=runs, engine=engine,
                               progress=progress)
    now = time.time()
    stored += [{"id": s.id, "candidate": s.candidate, "mflops": s.mflops, **m, "time": now} for s, m in zip(new, measured)]
    stored = stored[-MAX_CACHED:]
    seconds = time.perf_counter() - start
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "measurements": stored}) + "\n")
    return stored, {"path": str(path) if cache else None, "measured": len(new), "cached": len(stored) - len(new),
                    "seconds": seconds}


def fit_measurements(measurements: Sequence[Mapping[str, Any]], kind: str = "blocks", seed: int = 0) -> LatencyPredictor:
    """The predictor of ``measure_space``'s measurements (deterministic: a resumed search
    refits the same one from its run folder)."""
    return LatencyPredictor(kind, seed).fit(measurements)


def fit_space_latency(space: SearchSpace, config_of: Callable[[Mapping[str, Any]], Mapping[str, Any]], *,
                      kind: str = "blocks", **kwargs: Any) -> tuple[LatencyPredictor, dict[str, Any]]:
    """``measure_space`` (same keywords), then ``fit_measurements``."""
    measurements, info = measure_space(space, config_of, **kwargs)
    return fit_measurements(measurements, kind, kwargs.get("seed", 0)), info
