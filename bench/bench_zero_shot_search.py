"""NARS's zero-shot search against random search on one trained supernet, over many paired seeds.

    .venv/bin/python bench/bench_zero_shot_search.py --supernet /work/bench_supernet/supernet_anchor_nokd \\
        --work /work/bench_search/zs_search --seeds 0 1 2 3 4 5 6 7 8 9 --samples 32 --rounds 4

A zero-shot measurement costs seconds, so the search's choices can be compared over 10 seeds
where a real trial allows 3. Per seed S, each method measures ``--samples`` sub-networks of the
supernet's constrained space (its experiment's ``constraints``) zero-shot, with
``nars.search.stage1.zero_shot_search`` (what ``stage1.fidelity supernet`` runs):

- ``random``: ``supernet.rounds 1``: all of them drawn at random inside the constraints;
- ``nars``: ``supernet.rounds R``: the first round at random, then each round the predictor's
  picks (proxy-pretrained encoder, fitted on the zero-shot APs so far) from a random
  constrained pool of ``--pool`` architectures.

Both draw with seed S (common random numbers: ``random``'s first draws are ``nars``'s round 0).
A run is scored by the best zero-shot segm AP it measured, and by the mean of its best
``--top`` (stage 1 starts from the best few zero-shot architectures: its round 0 pairs them with
recipes); printed per seed, as paired differences nars minus random with 95% bootstrap
intervals and P(nars better), and as anytime curves (best so far against measurements) in
``WORK/anytime.png``. Measurements are cached in the supernet's folder, so
a re-run, or a second method asking for the same sub-network, costs nothing. Written to
``WORK/results.json``; resumable per (method, seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import paired_difference  # noqa: E402

from nars.fileio import atomic_write_text  # noqa: E402
from nars.search.cluster import ray_session  # noqa: E402
from nars.search.stage1 import pretrained_encoder, zero_shot_search  # noqa: E402
from nars.supernet.setup import load  # noqa: E402
from nars.supernet.zero_shot import evaluate_archs  # noqa: E402

METHODS = ("random", "nars")


def run(net_dir: Path, net: Any, method: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One method's zero-shot records for one seed, in the order measured."""
    rounds = 1 if method == "random" else args.rounds
    encoder = pretrained_encoder(net.space, args.pretrain_samples, seed) if rounds > 1 else None
    return zero_shot_search(
        net.space, lambda archs: evaluate_archs(net_dir, archs, progress=False, net=net), samples=args.samples,
        rounds=rounds, seed=seed, base=net.base, encoder=encoder,
        constraints={k: net.exp["constraints"][k] for k in ("max_mflops", "max_params")}, pool_size=args.pool,
        explore=args.explore)


def plot(path: Path, results: dict[str, dict[int, list[float]]]) -> None:
    """Best zero-shot segm AP so far against measurements: each seed thin, the median thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, color in zip(METHODS, ("tab:gray", "tab:blue")):
        curves = np.array([np.maximum.accumulate(aps) for aps in results[method].values()])
        x = np.arange(1, curves.shape[1] + 1)
        for c in curves:
            ax.plot(x, c, color=color, alpha=0.2, lw=0.8)
        ax.plot(x, np.median(curves, axis=0), color=color, lw=2.5, label=f"{method} (median of {len(curves)} seeds)")
    ax.set_xlabel("sub-networks measured zero-shot")
    ax.set_ylabel("best zero-shot segm AP so far")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", type=Path, required=True, help="a trained supernet folder")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pool", type=int, default=2048)
    parser.add_argument("--explore", type=float, default=0.25)
    parser.add_argument("--pretrain-samples", type=int, default=2048)
    parser.add_argument("--top", type=int, default=4, help="also score a run by the mean of its best TOP")
    args = parser.parse_args()
    work, net_dir = args.work.resolve(), args.supernet.resolve()
    work.mkdir(parents=True, exist_ok=True)
    net = load(net_dir, progress=False)
    aps: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
    with ray_session(net.exp["ray"]):
        for seed in args.seeds:
            for method in METHODS:
                done = work / f"{method}_seed{seed}.json"
                if not done.is_file():
                    atomic_write_text(done, json.dumps(run(net_dir, net, method, seed, args)) + "\n")
                aps[method][seed] = [r["segm_AP"] for r in json.loads(done.read_text())]
            print(f"seed {seed}: best zero-shot segm AP, random {max(aps['random'][seed]):.4f}, "
                  f"nars {max(aps['nars'][seed]):.4f}", flush=True)
    scores = {"best": lambda v: max(v), f"top{args.top}": lambda v: float(np.mean(sorted(v)[-args.top:])),
              "best of the first half": lambda v: max(v[: args.samples // 2])}
    summary = {}
    for name, score in scores.items():
        per = {m: {s: score(v) for s, v in aps[m].items()} for m in METHODS}
        d = paired_difference(per["nars"], per["random"])
        summary[name] = {"per_seed": per, "paired": d}
        print(f"nars minus random, {name} of {args.samples}: {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
              f"over {d['seeds']} seeds, P(nars better) {d['p_improvement']:.2f}; medians "
              f"{np.median(list(per['nars'].values())):.4f} / {np.median(list(per['random'].values())):.4f}")
    plot(work / "anytime.png", aps)
    atomic_write_text(work / "results.json", json.dumps({
        "supernet": str(net_dir), "samples": args.samples, "rounds": args.rounds, "pool": args.pool,
        "explore": args.explore, "scores": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
