"""Latency predictor: an FBNetV3IS config's CPU latency from its analytic costs, fitted on
candidates of a space measured on this machine (``nars.deploy.latency``), measurements
cached per machine.

Why cost features and a linear model: on a CPU an inference costs a fixed overhead (resize,
RPN, NMS, RoI pooling, mask pasting) plus time roughly proportional to dense multiply-adds,
depthwise multiply-adds (memory-bound), the activations written (norms, activations and
residuals touch each once) and the number of blocks (per-call overhead), per part: trunk
and RPN at the image size, the RoI heads times their RoI counts; GroupNorm, which cannot fold
into convolutions, adds its own traffic. A ridge regression on these (standardised) needs
only tens of measurements and extrapolates along them; gradient boosting (``kind="gbm"``)
is the comparison (bench/bench_latency_predictor.py). MFLOPs alone rank latency poorly:
at small inputs the fixed and per-block costs dominate.

Cache: ``$NARS_CACHE/latency/<key>.json`` (default ``~/.cache/nars``), one file per machine
(CPU model, cores, torch version), thread count, engine and bound space (its templates,
which fix input size and detections). Every ``fit_space_latency`` call measures
``samples`` new candidates, adds them to the file (the newest ``MAX_CACHED`` kept) and fits
on all of them, so each search on the machine sharpens the predictor at a few seconds' cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nars.config import get
from nars.fileio import atomic_write_text
from nars.model.arch import ArchSpec
from nars.model.cost import config_cost, test_input_size
from search_spaces import SearchSpace, sample

KINDS = ("ridge", "gbm")
TARGET = "median_ms"
MAX_CACHED = 400
CACHE_ENV = "NARS_CACHE"
# trunk + RPN at the image size; the RoI heads times their RoI counts (a change here
# changes the cache key: stored features would no longer match)
FEATURES = (
    "image_mmacs", "image_dw_mmacs", "image_mact", "image_blocks",
    "box_mmacs", "box_dw_mmacs", "box_mact", "box_blocks",
    "mask_mmacs", "mask_dw_mmacs", "mask_mact", "mask_blocks",
    "rois", "mask_rois", "mask_paste_mpix", "image_mpix", "gn_mact", "gn_blocks",
)


def latency_features(cfg: Mapping[str, Any], arch: ArchSpec | None = None,
                     input_size: tuple[int, int] | None = None) -> np.ndarray:
    """``FEATURES`` of the model a config builds (``cfg`` as ``config_cost`` takes it, plus
    MODEL.FBNET_V2.NORM) on an ``input_size`` image (default: ``test_input_size(cfg)``)."""
    h, w = input_size or test_input_size(cfg)
    cost = config_cost(cfg, arch, (h, w))
    trunk, rpn, box, mask = (cost.parts[p] for p in ("trunk", "rpn", "box_head", "mask_head"))
    r, m = cost.rois, cost.mask_rois
    image_act = trunk.activations + rpn.activations
    heads_act = r * box.activations + m * mask.activations
    gn = float(str(get(cfg, "MODEL.FBNET_V2.NORM")).upper() == "GN")
    return np.array([
        (trunk.macs + rpn.macs) / 1e6, (trunk.dw_macs + rpn.dw_macs) / 1e6, image_act / 1e6, trunk.blocks + rpn.blocks,
        r * box.macs / 1e6, r * box.dw_macs / 1e6, r * box.activations / 1e6, box.blocks,
        m * mask.macs / 1e6, m * mask.dw_macs / 1e6, m * mask.activations / 1e6, mask.blocks,
        r, m, m * h * w / 1e6, h * w / 1e6,
        gn * (image_act + heads_act) / 1e6, gn * (trunk.blocks + rpn.blocks + box.blocks + mask.blocks),
    ], dtype=np.float64)


class LatencyPredictor:
    """``fit(features, ms)`` / ``predict(features)``: milliseconds from ``FEATURES`` rows."""

    def __init__(self, kind: str = "ridge", seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"unknown latency predictor {kind!r}; expected one of {KINDS}")
        self.kind = kind
        if kind == "ridge":
            self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        else:
            self.model = GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05, subsample=0.8,
                                                   random_state=seed)
        self.samples = 0

    def fit(self, x: np.ndarray, y: Sequence[float]) -> "LatencyPredictor":
        self.model.fit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        self.samples = len(y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted ms per row, at least 0."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return np.maximum(self.model.predict(x), 0.0) if len(x) else np.zeros(0)

    def predict_configs(self, configs: Sequence[tuple[Mapping[str, Any], ArchSpec | None]]) -> np.ndarray:
        """Predicted ms of (config, arch or None) pairs, as ``latency_features`` takes them."""
        return self.predict(np.array([latency_features(cfg, arch) for cfg, arch in configs]).reshape(len(configs), -1))

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


def cache_key(space: SearchSpace, threads: int, engine: str) -> dict[str, Any]:
    """What a measurement depends on: machine, threads, engine, torch, and the bound space
    (arch template and cost templates: input size, detections, RoIs)."""
    templates = json.dumps([repr(space.arch_template), {k: repr(v) for k, v in space._cost_templates.items()}])
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.machine(), "torch": torch.__version__,
        "threads": threads, "engine": engine, "space": space.name,
        "space_hash": hashlib.sha256(templates.encode()).hexdigest()[:12],
        "input_size": [repr(space._cost_templates["INPUT.MIN_SIZE_TEST"]),
                       repr(space._cost_templates["INPUT.MAX_SIZE_TEST"])],
        "detections": repr(space._cost_templates["TEST.DETECTIONS_PER_IMAGE"]),
        "features": list(FEATURES),
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


def measure_space(
    space: SearchSpace,
    config_of: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    *,
    samples: int = 24,
    threads: int = 2,
    engine: str = "torch",
    seed: int = 0,
    max_mflops: float | None = None,
    max_params: float | None = None,
    cache: bool = True,
    runs: int = 7,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure ``samples`` new candidates (uniform within the MFLOPs / params limits;
    ``config_of(candidate)``: the complete config a trial of it would run) and add them to
    the cached ones. Returns every measurement (id, candidate, features, ``LatencyResult``
    fields) and ``{path, measured, cached, seconds}``."""
    from nars.deploy.latency import measure_latencies

    key = cache_key(space, threads, engine)
    path = cache_path(key)
    stored = read_cache(path, key) if cache else []
    known = {m["id"] for m in stored}
    pool = sample(space, samples + len(known), method="uniform", seed=seed + len(stored),
                  max_mflops=max_mflops, max_params=max_params)
    new = [s for s in pool if s.id not in known][:samples]
    start = time.perf_counter()
    cfgs = [config_of(s.candidate) for s in new]
    results = measure_latencies(cfgs, engine=engine, threads=threads, runs=runs, warmup=2, progress=progress)
    now = time.time()
    for s, cfg, r in zip(new, cfgs, results):
        stored.append({"id": s.id, "candidate": s.candidate, "mflops": s.mflops,
                       "features": latency_features(cfg).tolist(), **r.to_dict(), "time": now})
    stored = stored[-MAX_CACHED:]
    seconds = time.perf_counter() - start
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": key, "measurements": stored}) + "\n")
    return stored, {"path": str(path) if cache else None, "measured": len(new), "cached": len(stored) - len(new),
                    "seconds": seconds}


def fit_measurements(measurements: Sequence[Mapping[str, Any]], kind: str = "ridge", seed: int = 0) -> LatencyPredictor:
    """The predictor of ``measure_space``'s measurements (deterministic: a resumed search
    refits the same one from its run folder)."""
    x = np.array([m["features"] for m in measurements]).reshape(len(measurements), len(FEATURES))
    return LatencyPredictor(kind, seed).fit(x, [m[TARGET] for m in measurements])


def fit_space_latency(space: SearchSpace, config_of: Callable[[Mapping[str, Any]], Mapping[str, Any]], *,
                      kind: str = "ridge", **kwargs: Any) -> tuple[LatencyPredictor, dict[str, Any]]:
    """``measure_space`` (same keywords), then ``fit_measurements``."""
    measurements, info = measure_space(space, config_of, **kwargs)
    return fit_measurements(measurements, kind, kwargs.get("seed", 0)), info
