"""Stage 2 throughput: predictor evaluations per minute of ``nars.search.evolution.evolve``.

    .venv/bin/python bench/bench_stage2.py [--quick] [--budget N] [--space NAME]

Setup (not timed): the proxy-pretrained encoder (``pretrained_encoder``) and a predictor
fitted (``fit_predictor``) on synthetic results, i.e. Sobol candidates of the space with a
made-up ``segm_AP`` (a smooth function of log MFLOPs plus noise). Then ``evolve`` is timed as
the search runs it (DE, batch 1024, no MFLOPs / params limit, no progress bar), and run once
more under cProfile to see where the time goes. Each step of an ``evolve`` batch is also
timed on its own (nevergrad ask, unit -> candidate, encode, predict, cost, id, tell) on
batches of 1024 from a fresh DE, for a per-evaluation breakdown without the profiler's
overhead. The full mode also times the loop with TwoPointsDE, for comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time

import nevergrad as ng
import numpy as np
import torch

from nars.search.evolution import evolve
from nars.search.pareto import pareto_mask
from nars.search.stage1 import fit_predictor, pretrained_encoder
from search_spaces import load_space, sample

CONSTRAINTS = {"max_mflops": None, "max_params": None}


def synthetic_results(space, n: int, seed: int) -> list[dict]:
    """Trial-like rows: candidate + a made-up segm AP that grows with log MFLOPs, plus noise."""
    rng = np.random.default_rng(seed)
    drawn = sample(space, n, method="sobol", seed=seed)
    lm = np.log([s.mflops for s in drawn])
    ap = 0.1 + 0.05 * (lm - lm.mean()) / (lm.std() or 1.0) + rng.normal(0, 0.01, n)
    return [{"candidate": s.candidate, "metrics": {"segm_AP": float(a)}, "status": "done"} for s, a in zip(drawn, ap)]


def per_step(space, model, batch: int, seed: int, repeats: int) -> dict[str, float]:
    """Seconds per batch of each step ``evolve`` does per batch, median of ``repeats``."""
    param = ng.p.Array(shape=(space.unit_dims,), lower=0.0, upper=1.0)
    param.random_state = np.random.RandomState(seed)
    opt = ng.optimizers.registry["DE"](parametrization=param, budget=batch * (repeats + 1), num_workers=batch)
    times: dict[str, list[float]] = {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    def tell(asked, ap, costs):
        for a, s, (m, _) in zip(asked, ap, costs):
            opt.tell(a, [-float(s), m], constraint_violation=[0.0, 0.0])

    for _ in range(repeats):
        asked = timed("nevergrad ask", lambda: [opt.ask() for _ in range(batch)])
        points = np.clip(np.stack([a.value for a in asked]), 0.0, np.nextafter(1.0, 0.0))
        candidates = timed("space.from_unit (unit -> candidate)", space.from_unit, points)
        x = timed("space.encode (canonical + one-hot)", space.encode, candidates)
        ap = timed("model.predict (4-member MLP ensemble)", lambda v: np.asarray(model.predict(v)).reshape(-1), x)
        costs = timed("space.cost (canonical + analytic cost)", lambda cs: [space.cost(c) for c in cs], candidates)
        timed("space.candidate_id (canonical + sha256)", lambda cs: [space.candidate_id(c) for c in cs], candidates)
        timed("nevergrad tell (2 losses + constraint)", tell, asked, ap, costs)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="budget 5,000, smaller setup (about a minute)")
    parser.add_argument("--budget", type=int, default=None, help="evaluations per evolve run (20,000; 5,000 with --quick)")
    parser.add_argument("--space", default="fbnetv3is_quick")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)  # predict itself uses one thread (predictor._one_thread)
    budget = args.budget or (5000 if args.quick else 20000)
    batch = 1024
    results_n, pretrain_n = (16, 512) if args.quick else (32, 2048)
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average; 2 cores)")

    space = load_space(args.space)
    t0 = time.perf_counter()
    results = synthetic_results(space, results_n, args.seed)
    encoder = pretrained_encoder(space, pretrain_n, args.seed)
    model = fit_predictor(space, encoder, results, args.seed)
    setup = time.perf_counter() - t0
    print(f"space {space.name}: {space.unit_dims} unit dims, encoding {space.encoding_length} floats; "
          f"setup (pretrain on {pretrain_n} proxies + fit on {results_n} results): {setup:.1f} s")

    kwargs = {"optimizer": "DE", "budget": budget, "batch_size": batch, "constraints": CONSTRAINTS,
              "use_params": False, "seed": args.seed, "progress": False}
    t0 = time.perf_counter()
    front = evolve(space, model, **kwargs)
    wall = time.perf_counter() - t0
    per_min = budget / wall * 60
    print(f"evolve: DE, budget {budget:,}, batch {batch}: {wall:.1f} s -> {per_min:,.0f} predictor evaluations/min "
          f"({budget / wall:,.0f}/s); front of {len(front)}")
    print(f"target >= 100,000/min: {'met' if per_min >= 100_000 else 'MISSED'}")

    steps = per_step(space, model, batch, args.seed, 2 if args.quick else 3)
    total = sum(steps.values())
    # once per run, at the end of evolve: the front over everything evaluated (O(n^2) in numpy)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    pareto_mask(rng.random(budget), rng.random((budget, 1)))
    pareto_s = time.perf_counter() - t0
    print(f"\none evolve batch of {batch}, step by step (median; sum {total:.2f} s -> {batch / total * 60:,.0f}/min):")
    for name, s in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<42}{s * 1e3:9.1f} ms  {s / batch * 1e6:8.1f} us/eval  {s / total:6.1%}  "
              f"alone: {batch / s * 60:>13,.0f}/min")
    print(f"  once per run: pareto_mask over {budget:,} evaluated points: {pareto_s:.2f} s "
          f"({pareto_s / wall:.0%} of the evolve wall time above)")

    if not args.quick:  # for the suggestions: same loop, a crossover without nevergrad's per-dimension Python loop
        t0 = time.perf_counter()
        evolve(space, model, **{**kwargs, "optimizer": "TwoPointsDE"})
        alt = time.perf_counter() - t0
        print(f"\nfor comparison, evolve with TwoPointsDE: {alt:.1f} s -> {budget / alt * 60:,.0f}/min")

    prof_budget = budget
    prof = cProfile.Profile()
    prof.enable()
    evolve(space, model, **{**kwargs, "budget": prof_budget})
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    print(f"\ncProfile of evolve (budget {prof_budget:,}), top by cumulative time:")
    stats.sort_stats("cumulative").print_stats(30)
    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))
    out.seek(0), out.truncate()
    print("\ntop by own time:")
    stats.sort_stats("tottime").print_stats(18)
    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))
    print(f"\nload after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
