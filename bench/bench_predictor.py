"""Predictor quality on real trial results: Kendall tau against the number of training
trials, with and without proxy pretraining, against the scikit-learn baselines.

    .venv/bin/python bench/bench_predictor.py [--quick] [--stage S] [--candidates N] [--repeats R] [--work DIR]

``N`` (default 48, 24 with ``--quick``) feasible Sobol candidates of the quickstart
experiment are trained at the budget of stage ``S``, exactly as ``nars search`` trains them
(the trials are shared with ``bench_fidelity.py`` through ``--work``, so candidates it
trained are not trained again). The target is their segm AP: at ``--stage stage1`` (the
default) what the search's predictor learns from, at ``--stage verify`` the full budget's
AP, what the predictor should rank by. For each of ``R`` repeats the
candidates are split at random into a held-out third and a training pool; each predictor is
fitted on the first n of the pool (n = 4, 8, 16, ... up to the pool) and scored by Kendall
tau on the held-out third. Predictors: the NARS MLP ensemble with its encoder pretrained on
proxies (log MFLOPs, log params of 2,048 Sobol candidates; what the search uses), the same
MLP from scratch, and gradient boosting, random forest and a Gaussian process on the raw
encoding, plus the Gaussian process on the pretrained embedding. Also reported: the tau of
MFLOPs alone (a free proxy) on the same held-out sets. Median and quartiles over repeats.
Writes ``WORK/predictor.json`` and ``WORK/predictor.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau
from tqdm import tqdm

from nars.fileio import atomic_save_png, atomic_write_text
from nars.search.stage1 import pretrained_encoder
from predictor import make_predictor
from search_spaces import load_space
from trial_set import arguments, train_set

PREDICTORS = {  # label -> (kind, with the pretrained encoder)
    "MLP, proxy-pretrained (NARS)": ("mlp", True),
    "MLP, from scratch": ("mlp", False),
    "gradient boosting": ("gbm", False),
    "random forest": ("rf", False),
    "Gaussian process": ("gp", False),
    "Gaussian process, pretrained embedding": ("gp", True),
}


def sizes(pool: int) -> list[int]:
    out, n = [], 4
    while n < pool:
        out.append(n)
        n *= 2
    return out + [pool]


def evaluate(x: np.ndarray, y: np.ndarray, mflops: np.ndarray, arch_dims: int, encoder, repeats: int) -> dict:
    """{label: {n: [tau per repeat]}} on random held-out thirds."""
    test_n = len(y) // 3
    ns = sizes(len(y) - test_n)
    taus: dict[str, dict[int, list[float]]] = {label: {n: [] for n in ns} for label in [*PREDICTORS, "MFLOPs alone"]}
    jobs = [(r, n, label) for r in range(repeats) for n in ns for label in PREDICTORS]
    bar = tqdm(total=len(jobs), desc="fit and score", unit="fit")
    for r in range(repeats):
        order = np.random.default_rng(r).permutation(len(y))
        test, pool = order[:test_n], order[test_n:]
        for n in ns:
            train = pool[:n]
            taus["MFLOPs alone"][n].append(float(kendalltau(mflops[test], y[test]).statistic))
            for label, (kind, pretrained) in PREDICTORS.items():
                model = make_predictor(kind, arch_dims, encoder=encoder if pretrained else None, seed=r)
                pred = np.ravel(model.fit(x[train], y[train]).predict(x[test]))
                tau = kendalltau(pred, y[test]).statistic
                taus[label][n].append(0.0 if np.isnan(tau) else float(tau))  # a constant prediction ranks nothing
                bar.update(1)
    bar.close()
    return taus


def summarise(taus: dict) -> dict:
    return {label: {n: {"median": float(np.median(v)), "q25": float(np.percentile(v, 25)),
                        "q75": float(np.percentile(v, 75))} for n, v in per_n.items()} for label, per_n in taus.items()}


def plot(path: Path, summary: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, per_n in summary.items():
        ns = sorted(per_n)
        med = [per_n[n]["median"] for n in ns]
        style = {"lw": 2.5} if "NARS" in label else {"ls": ":"} if label == "MFLOPs alone" else {}
        line, = ax.plot(ns, med, marker="o", label=label, **style)
        ax.fill_between(ns, [per_n[n]["q25"] for n in ns], [per_n[n]["q75"] for n in ns], color=line.get_color(),
                        alpha=0.12)
    ax.set(xscale="log", xlabel="training trials", ylabel="Kendall tau on held-out trials", title=title)
    ax.minorticks_off()
    ax.set_xticks(sorted(next(iter(summary.values()))))
    ax.set_xticklabels([str(n) for n in sorted(next(iter(summary.values())))])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    atomic_save_png(path, fig)


def main() -> None:
    parser = arguments(__doc__, full=48, quick=24)
    parser.add_argument("--repeats", type=int, help="random splits (default 10, --quick 3)")
    parser.add_argument("--stage", choices=("stage1", "verify"), default="stage1", help="the budget whose AP is the target")
    args = parser.parse_args()
    n = args.candidates or (24 if args.quick else 48)
    repeats = args.repeats or (3 if args.quick else 10)
    trials = train_set(args.work, n, (args.stage,), quick=args.quick, experiment=args.experiment, scratch=args.scratch)
    trials = trials[trials["status"] == "done"]
    space = load_space("fbnetv3is_quick")
    x = space.encode(list(trials["candidate"]))
    y = trials["segm_AP"].to_numpy(dtype=float)
    print(f"{len(y)} trials at {args.stage}'s budget: segm AP median {np.median(y):.4f}, range {y.min():.4f}-{y.max():.4f}, "
          f"{int((y > 0).sum())} above 0")
    encoder = pretrained_encoder(space, 256 if args.quick else 2048, 0)
    arch_dims = space.arch_slice.stop - space.arch_slice.start
    summary = summarise(evaluate(x, y, trials["mflops"].to_numpy(dtype=float), arch_dims, encoder, repeats))
    ns = sorted(next(iter(summary.values())))
    print("\nmedian Kendall tau (held-out third) by training trials\n")
    print("| predictor | " + " | ".join(f"n={k}" for k in ns) + " |\n|---|" + "---|" * len(ns))
    for label, per_n in summary.items():
        print(f"| {label} | " + " | ".join(f"{per_n[k]['median']:.3f}" for k in ns) + " |")
    suffix = f"-{args.stage}" + ("-quick" if args.quick else "")
    atomic_write_text(args.work / f"predictor{suffix}.json",
                      json.dumps({"trials": len(y), "stage": args.stage, "repeats": repeats, "tau": summary}, indent=2) + "\n")
    plot(args.work / f"predictor{suffix}.png", summary, f"Predictor quality on {len(y)} real trials ({args.stage} budget)")
    print(f"\nwrote {args.work}/predictor{suffix}.json and .png")


if __name__ == "__main__":
    main()
