"""Stage 2 at scale: ``nars.search.evolution.evolve``'s throughput and predicted front,
NSGA-II (``nsga2``, the default) against nevergrad's DE, side by side in one process.

    .venv/bin/python bench/bench_stage2.py [--quick] [--seeds N] [--budget N] [--big-budget N]

Setup (not timed), per space: the proxy-pretrained encoder (``pretrained_encoder``) and a
predictor fitted (``fit_predictor``) on synthetic results, i.e. Sobol candidates of the
space with a made-up ``segm_AP`` (a smooth function of log MFLOPs plus noise). Every run is
``evolve`` as the search calls it (batch 1024, no progress bar), with no MFLOPs / params
limit unless said otherwise. Measured:

1. evaluations per minute of nsga2 and of DE on ``fbnetv3is_quick`` and ``fbnetv3is`` (COCO
   scale), plus nsga2 with the COCO experiment's stage 2 (batch 2048, ``use_params``, at most
   3500 MFLOPs and 3M params: three objectives, two constraints);
2. one nsga2 run of ``--big-budget`` (1,000,000) evaluations on ``fbnetv3is``: the wall time;
3. the hypervolume of the predicted front (segm AP against MFLOPs, ``pareto.hypervolume``)
   of nsga2 and DE at an equal ``--budget`` (100,000; DE at 1M would take about ten
   minutes) for seeds 0 .. N-1, and of the big run. The reference point is fixed per space
   before any run: the largest MFLOPs and the median predicted AP of 10,000 uniform random
   candidates (the area is what a front adds over a typical candidate);
4. where an nsga2 generation's time goes, step by step, per evaluation.

The machine is shared and its speed drifts: compare figures within one run; the 1-minute
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from nars.search.evolution import _Archive, _Evaluator, _offspring, _survivors, evolve
from nars.search.pareto import hypervolume
from nars.search.stage1 import fit_predictor, pretrained_encoder
from search_spaces import load_space, sample

NO_LIMITS = {"max_mflops": None, "max_params": None, "max_latency_ms": None}
COCO_STAGE2 = {"batch_size": 2048, "use_params": True,
               "constraints": {"max_mflops": 3500.0, "max_params": 3_000_000, "max_latency_ms": None}}
BATCH = 1024


def synthetic_results(space, n: int, seed: int) -> list[dict]:
    """Trial-like rows: candidate + a made-up segm AP that grows with log MFLOPs, plus noise."""
    rng = np.random.default_rng(seed)
    drawn = sample(space, n, method="sobol", seed=seed)
    lm = np.log([s.mflops for s in drawn])
    ap = 0.1 + 0.05 * (lm - lm.mean()) / (lm.std() or 1.0) + rng.normal(0, 0.01, n)
    return [{"candidate": s.candidate, "metrics": {"segm_AP": float(a)}, "status": "done"} for s, a in zip(drawn, ap)]


def reference_point(space, model, seed: int) -> tuple[float, float]:
    """(largest MFLOPs, median predicted AP) of 10,000 uniform random candidates."""
    evaluate = _Evaluator(space, model, np.full(3, np.inf), False, "mflops")
    scored = evaluate(np.random.default_rng(seed + 99).random((10_000, space.unit_dims)))
    return float(scored.mflops.max()), float(np.median(scored.ap))


def run(space, model, optimizer: str, budget: int, seed: int, **over: Any) -> tuple[float, list[dict]]:
    kwargs = {"optimizer": optimizer, "budget": budget, "batch_size": BATCH, "constraints": NO_LIMITS,
              "use_params": False, "seed": seed, "progress": False, **over}
    t0 = time.perf_counter()
    front = evolve(space, model, **kwargs)
    return time.perf_counter() - t0, front


def front_hv(front: list[dict], ref: tuple[float, float]) -> float:
    return hypervolume([p["pred_segm_AP"] for p in front], [p["mflops"] for p in front], ref[0], ref[1])


def per_step(space, model, generations: int, seed: int) -> dict[str, float]:
    """Seconds per evaluation of each step of an nsga2 generation (median over generations)."""
    evaluate = _Evaluator(space, model, np.full(3, np.inf), False, "mflops")
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        times.setdefault(name, []).append((time.perf_counter() - t0) / BATCH)
        return out

    archive, scale = _Archive(), np.ones(3)
    genomes = rng.random((BATCH, space.unit_dims))
    population = evaluate(genomes)
    archive.add(population)
    for _ in range(generations):
        order = timed("select survivors (constraint domination, ranks, crowding)", _survivors, population, scale,
                      BATCH)
        genomes, population = genomes[order], population.take(order)
        children = timed("offspring (tournaments, crossover, mutation)", _offspring, genomes, BATCH, rng)
        codes = timed("unit cube -> codes (SearchSpace.unit_codes)", space.unit_codes, children)
        x = timed("encode_codes (one-hot, scaled numbers)", space.encode_codes, codes)
        timed("predict (4-member MLP ensemble, one call)", model.predict, x)
        timed("batch cost (MFLOPs, params)", evaluate.cost, codes)
        scored = evaluate(children)
        timed("archive (merge, pareto_mask)", archive.add, scored)
        genomes, population = np.vstack([genomes, children]), population.concat(population, scored)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="budgets 20,000 / 200,000, one seed, smaller setup")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the hypervolume comparison (3; 1 quick)")
    parser.add_argument("--budget", type=int, default=None, help="equal budget of nsga2 and DE (100,000; 20,000 quick)")
    parser.add_argument("--big-budget", type=int, default=None, help="the big nsga2 run (1,000,000; 200,000 quick)")
    args = parser.parse_args()
    torch.set_num_threads(2)  # predict itself uses one thread (predictor._one_thread)
    seeds = args.seeds or (1 if args.quick else 3)
    budget = args.budget or (20_000 if args.quick else 100_000)
    big = args.big_budget or (200_000 if args.quick else 1_000_000)
    de_budget = min(budget, 20_000)  # DE's rate is taken on fewer evaluations: it is ~10x slower
    results_n, pretrain_n = (16, 512) if args.quick else (32, 2048)
    start = time.perf_counter()
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average; {os.cpu_count()} cores)")

    setups = {}
    for name in ("fbnetv3is_quick", "fbnetv3is"):
        space = load_space(name)
        t0 = time.perf_counter()
        encoder = pretrained_encoder(space, pretrain_n, 0)
        setups[name] = (space, fit_predictor(space, encoder, synthetic_results(space, results_n, 0), 0))
        print(f"space {name}: {space.unit_dims} unit dims, encoding {space.encoding_length} floats, "
              f"10^{space.log10_size():.0f} candidates; setup {time.perf_counter() - t0:.0f} s")
    space, model = setups["fbnetv3is"]
    ref = reference_point(space, model, 0)
    print(f"fbnetv3is hypervolume reference: {ref[0]:,.0f} MFLOPs, predicted segm AP {ref[1]:.4f}")

    print("\n1. throughput (seed 0, batch 1024, no limits)")
    rates = {}
    for name, (s_space, s_model) in setups.items():
        for optimizer, b in (("nsga2", budget), ("DE", de_budget)):
            wall, front = run(s_space, s_model, optimizer, b, 0)
            rates[name, optimizer] = b / wall * 60
            print(f"  {name:<16} {optimizer:<6} {b:>9,} evaluations in {wall:6.1f} s: "
                  f"{rates[name, optimizer]:>11,.0f}/min  (front of {len(front)})")
    wall, front = run(space, model, "nsga2", budget, 0, **COCO_STAGE2)
    print(f"  {'fbnetv3is':<16} nsga2  {budget:>9,} evaluations in {wall:6.1f} s: {budget / wall * 60:>11,.0f}/min  "
          f"(COCO experiment's stage 2: batch 2048, use_params, <= 3500 MFLOPs and 3M params; front of {len(front)})")
    for name in setups:
        print(f"  {name}: nsga2 / DE = {rates[name, 'nsga2'] / rates[name, 'DE']:.1f}x")
    best = min(rates[name, "nsga2"] for name in setups)
    print(f"  target >= 1,000,000 evaluations/min: {'met' if best >= 1e6 else 'MISSED'} (slowest space {best:,.0f}/min)")

    print(f"\n2. one nsga2 run of {big:,} evaluations on fbnetv3is (seed 0)")
    big_wall, big_front = run(space, model, "nsga2", big, 0)
    print(f"  {big_wall:.1f} s ({big / big_wall * 60:,.0f}/min), front of {len(big_front)}, "
          f"hypervolume {front_hv(big_front, ref):.2f}")
    if big >= 1_000_000:
        print(f"  target: 1,000,000 evaluations in under 2 minutes: {'met' if big_wall < 120 else 'MISSED'}")

    print(f"\n3. predicted front on fbnetv3is, hypervolume at an equal {budget:,} evaluations")
    hv: dict[str, list[float]] = {"nsga2": [], "DE": []}
    for seed in range(seeds):
        line = []
        for optimizer in hv:
            wall, front = run(space, model, optimizer, budget, seed)
            hv[optimizer].append(front_hv(front, ref))
            line.append(f"{optimizer} {hv[optimizer][-1]:9.2f} (front {len(front):>4}, {wall:5.1f} s)")
        print(f"  seed {seed}: " + "   ".join(line))
    wins = sum(a >= b for a, b in zip(hv["nsga2"], hv["DE"]))
    print(f"  mean: nsga2 {statistics.mean(hv['nsga2']):.2f}, DE {statistics.mean(hv['DE']):.2f} "
          f"(nsga2 / DE = {statistics.mean(hv['nsga2']) / statistics.mean(hv['DE']):.3f}); "
          f"nsga2 same or better on {wins} of {seeds} seeds")
    print(f"  nsga2 at {big:,} evaluations (seed 0, part 2): {front_hv(big_front, ref):.2f}")
    print(f"  target: same or better hypervolume than DE at equal evaluations: {'met' if wins == seeds else 'MISSED'}")

    print("\n4. one nsga2 generation of 1024 on fbnetv3is, step by step (median of 10)")
    steps = per_step(space, model, 10, 0)
    total = sum(steps.values())
    for name, s in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<58}{s * 1e6:7.2f} µs/eval  {s / total:6.1%}")
    print(f"  {'sum':<58}{total * 1e6:7.2f} µs/eval  -> {60 / total:,.0f}/min")
    print(f"\nload after: {os.getloadavg()[0]:.2f}; {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
