"""Latency predictor quality on held-out candidates, against MFLOPs and measurement noise.

    .venv/bin/python bench/bench_latency_predictor.py [--m 60] [--fit 24] [--full-m 18] [--full-fit 12] [--skip-full]
        [--engine torch|onnxruntime|onnxruntime-int8]

Settings, each measured on this machine's CPU with 2 threads (``nars.deploy.latency``:
random weights, fused, channels-last, fixed detections, warm-up, round-robin, median), with
``--engine`` (what ``latency.engine`` selects; the onnxruntime engines' block times come from
onnxruntime's profile):

- ``quickstart``: ``fbnetv3is_quick`` bound as experiments/quickstart.yaml binds it (128 px,
  30 proposals at most, 10 detections), ``--m`` candidates drawn uniformly within its
  600-MFLOPs / 2M-params limits (as a search's predictor measures them);
- ``fbnetv3is``: the COCO-scale space (80 classes, 100 detections) at 240x320, ``--full-m``
  candidates (a forward takes 0.2-7 s there).

Each setting fits on ``--fit`` measured candidates (the search's default is 24) and reports
on the rest, averaged over 10 random splits: median relative error and Kendall tau of
predictor.latency's kinds: ``blocks`` (the default, nn-Meter style: each block's in-context
time from its shapes, summed, plus a fitted overhead), ``ridge`` and ``gbm`` (one regression
on the model's per-part costs), and of ``mflops`` (a line through MFLOPs; its tau is
MFLOPs' own). ``repeat``: the held-out candidates measured a
second time, minutes later, against the first: the noise floor no predictor can beat. The
machine may be shared: the load is printed, and figures under load are noisy.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (bench_model_cost.py)

import argparse
import time
from typing import Any, Mapping

import numpy as np
import torch
from scipy.stats import kendalltau

from nars.config import load_config, set_key
from nars.deploy import ENGINES
from nars.deploy.latency import measure_latencies
from nars.search.experiment import load_experiment
from predictor.latency import KINDS, TARGET, LatencyPredictor, measure_configs
from search_spaces import load_space, sample

THREADS = 2
SPLITS = 10


def setting(space_name: str, base_name: str | None, pinned: Mapping[str, Any], limits: Mapping[str, Any],
            m: int, seed: int) -> tuple[list[dict[str, Any]], list[float]]:
    """``m`` trial configs of a bound space (uniform within the limits) and their MFLOPs."""
    base = load_config(base_name)
    space = load_space(space_name).bind(base, pinned)
    samples = sample(space, m, method="uniform", seed=seed, **limits)
    cfgs = []
    for s in samples:
        cfg = space.to_config(s.candidate, base=base)
        for key, value in pinned.items():
            set_key(cfg, key, value, "bench")
        cfgs.append(cfg)
    return cfgs, [s.mflops for s in samples]


def quality(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return float(np.median(np.abs(pred - truth) / truth)), float(kendalltau(pred, truth)[0])


def evaluate(name: str, cfgs: list[dict[str, Any]], mflops: list[float], size: tuple[int, int], n_fit: int,
             runs: int, engine: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    measured = measure_configs(cfgs, threads=THREADS, runs=runs, input_size=size, engine=engine, progress=True)
    seconds = time.perf_counter() - t0
    y = np.array([m[TARGET] for m in measured])
    mf = np.asarray(mflops)
    rng = np.random.default_rng(0)
    scores: dict[str, list[tuple[float, float]]] = {k: [] for k in (*KINDS, "mflops", "repeat")}
    splits = [rng.permutation(len(cfgs)) for _ in range(SPLITS)]
    held_all = sorted({int(i) for idx in splits for i in idx[n_fit:]})
    again = measure_latencies([cfgs[i] for i in held_all], engine=engine, threads=THREADS, input_size=size, runs=runs,
                              warmup=2)
    second = dict(zip(held_all, (r.median_ms for r in again)))
    for idx in splits:
        fit, held = idx[:n_fit], idx[n_fit:]
        rows = np.array([measured[i]["features"] for i in held])
        blocks = [np.array(measured[i]["block_features"]) for i in held]
        for kind in KINDS:
            model = LatencyPredictor(kind).fit([measured[i] for i in fit])
            scores[kind].append(quality(model.predict_features(rows, blocks), y[held]))
        line = np.polyfit(mf[fit], y[fit], 1)
        scores["mflops"].append(quality(np.polyval(line, mf[held]), y[held]))
        scores["repeat"].append(quality(np.array([second[int(i)] for i in held]), y[held]))
    return {"name": name, "m": len(cfgs), "fit": n_fit, "size": size, "ms": (float(y.min()), float(y.max())),
            "mflops_range": (float(mf.min()), float(mf.max())), "seconds_per_candidate": seconds / len(cfgs),
            "scores": {k: tuple(np.mean(v, axis=0)) for k, v in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--m", type=int, default=60, help="quickstart candidates measured")
    parser.add_argument("--fit", type=int, default=24, help="quickstart candidates fitted on (the rest held out)")
    parser.add_argument("--full-m", type=int, default=18, help="fbnetv3is candidates measured at 240x320")
    parser.add_argument("--full-fit", type=int, default=12)
    parser.add_argument("--runs", type=int, default=9, help="timed runs per candidate (quickstart)")
    parser.add_argument("--full-runs", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--engine", choices=ENGINES, default="torch", help="what is timed (latency.engine)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"engine {args.engine}, torch {torch.__version__}, {THREADS} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"load before {os.getloadavg()[0]:.2f} (1-min average)")
    start = time.perf_counter()
    exp = load_experiment("quickstart")
    limits = {k: exp["constraints"][k] for k in ("max_mflops", "max_params")}
    cfgs, mflops = setting(exp["space"], exp["base_config"], exp["config"], limits, args.m, seed=0)
    results = [evaluate("quickstart (fbnetv3is_quick, 128x128)", cfgs, mflops, (128, 128), args.fit, args.runs,
                        args.engine)]
    print(f"quickstart done in {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f}", flush=True)
    if not args.skip_full:
        pinned = {"INPUT.MIN_SIZE_TEST": 240, "INPUT.MAX_SIZE_TEST": 320}
        cfgs, mflops = setting("fbnetv3is", None, pinned, {}, args.full_m, seed=0)
        results.append(evaluate("fbnetv3is, 240x320", cfgs, mflops, (240, 320), args.full_fit, args.full_runs,
                                args.engine))
    print(f"\nheld-out quality, mean over {SPLITS} random fit / held-out splits (MRE: median relative error)\n")
    columns = (*KINDS, "mflops", "repeat")
    print("| setting | measured | fit / held out | latency ms | MFLOPs | s per candidate | "
          + " | ".join(f"{k} MRE / tau" for k in columns) + " |")
    print("|---" * (6 + len(columns)) + "|")
    for r in results:
        s = r["scores"]
        cells = " | ".join(f"{s[k][0]:.1%} / {s[k][1]:.2f}" for k in columns)
        print(f"| {r['name']} | {r['m']} | {r['fit']} / {r['m'] - r['fit']} | {r['ms'][0]:.0f}-{r['ms'][1]:.0f} | "
              f"{r['mflops_range'][0]:.0f}-{r['mflops_range'][1]:.0f} | {r['seconds_per_candidate']:.2f} | {cells} |")
    print(f"\nwall time {time.perf_counter() - start:.0f} s; load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
