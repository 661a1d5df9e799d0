"""Search-space throughput: constrained sampling, encoding and config round trips.

    .venv/bin/python bench/bench_space.py [--n N] [--repeats R]

Constrained sampling is timed at limits at each space's median MFLOPs and median params
(about 30% of the draws meet both), and without limits. Each figure is the median of
``--repeats`` runs (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np

from search_spaces import load_space, sample


def rate(n: int, fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, r = args.n, args.repeats
    rows = []
    for name in ("fbnetv3is_quick", "fbnetv3is"):
        space = load_space(name)
        drawn = sample(space, n, method="uniform", seed=123)
        mflops = float(np.median([s.mflops for s in drawn]))
        params = float(np.median([s.params for s in drawn]))
        accept = np.mean([s.mflops <= mflops and s.params <= params for s in drawn])
        limits = f"MFLOPs <= {mflops:.0f}, params <= {params / 1e6:.2f}M (accepts {accept:.0%})"
        for method in ("sobol", "uniform"):
            rows.append((name, f"sample {method}, no limit", rate(n, lambda: sample(space, n, method=method), r)))
            rows.append((name, f"sample {method}, {limits}", rate(
                n, lambda: sample(space, n, method=method, max_mflops=mflops, max_params=params), r)))
        candidates = [s.candidate for s in drawn]
        x = space.encode(candidates)
        u = np.random.default_rng(0).random((n, space.unit_dims))
        rows.append((name, f"encode ({space.encoding_length} floats)", rate(n, lambda: space.encode(candidates), r)))
        rows.append((name, "decode", rate(n, lambda: space.decode(x), r)))
        rows.append((name, "unit cube -> candidate", rate(n, lambda: space.from_unit(u), r)))
        rows.append((name, "cost (analytic, checked candidate)", rate(n, lambda: [space.cost(c) for c in candidates], r)))
        rows.append((name, "candidate -> config -> candidate", rate(
            n, lambda: [space.from_config(space.to_overrides(c)) for c in candidates], r)))
    print(f"{'space':<17}{'operation':<62}{'per second':>12}")
    for name, op, per_s in rows:
        print(f"{name:<17}{op:<62}{per_s:>12,.0f}")


if __name__ == "__main__":
    main()
