"""Early-stopping fidelity: does a candidate's short-budget AP rank candidates as their
full-budget AP does?

    .venv/bin/python bench/bench_fidelity.py [--quick] [--candidates N] [--work DIR]
    .venv/bin/python bench/bench_fidelity.py --experiment quickstart_finetune [--scratch] --candidates 12

``N`` (default 16, 12 with ``--quick``) feasible Sobol candidates of the quickstart
experiment (space ``fbnetv3is_quick``, its constraints) are each trained twice, exactly as
``nars search`` trains them: at stage 1's budget (the candidate's schedule compressed to
``stage1.max_iter``) and at verification's (the full schedule, ``verify.max_iter``), with
COCO evaluation on the shapes val. Reported: Kendall tau and Spearman rho between the
stage-1 AP and the full AP (segm and bbox). ``--quick``
uses tiny budgets (``trial_set.QUICK``) and fits in 5 minutes on 2 cores.

``--experiment`` takes another experiment's space, data and budgets (``quickstart_finetune``:
every candidate inherits the parent's weights); ``--scratch`` drops its parent, so the same
candidates train from random weights, for the comparison with and without inheritance.

Trials are kept in ``WORK/trials`` (``trials-quick``, ``trials-EXPERIMENT[-scratch]``);
``bench_predictor.py`` with the same ``--work`` reuses them. Writes ``WORK/fidelity*.json``
and ``.png``, suffixed like the trials folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau, spearmanr

from nars.fileio import atomic_save_png, atomic_write_text
from trial_set import arguments, train_set


def fidelity_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate: its short- and full-budget AP (segm, bbox)."""
    short = trials[trials["stage"] == "stage1"].set_index("candidate_id")
    full = trials[trials["stage"] == "verify"].set_index("candidate_id")
    ids = [i for i in short.index if i in full.index and short.at[i, "status"] == full.at[i, "status"] == "done"]
    rows = []
    for i in ids:
        row = {"id": i, "mflops": short.at[i, "mflops"], "params": short.at[i, "params"],
               "short_iter": int(short.at[i, "max_iter"]), "full_iter": int(full.at[i, "max_iter"])}
        for task in ("segm", "bbox"):
            row[f"short_{task}"] = short.at[i, f"{task}_AP"]
            row[f"full_{task}"] = full.at[i, f"{task}_AP"]
        rows.append(row)
    return pd.DataFrame(rows)


def correlations(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Rank agreement of short- and full-budget AP (ties count as kendalltau's tau-b counts them)."""
    out = {}
    for task in ("segm", "bbox"):
        x, y = table[f"short_{task}"], table[f"full_{task}"]
        out[f"{task} AP"] = {"kendall_tau": float(kendalltau(x, y).statistic),
                             "spearman_rho": float(spearmanr(x, y).statistic)}
    return out


def plot(path: Path, table: pd.DataFrame, stats: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    ax.scatter(table["short_segm"], table["full_segm"])
    tau = stats["segm AP"]["kendall_tau"]
    ax.set(xlabel=f"short-budget segm AP ({int(table['short_iter'].max())} it)",
           ylabel=f"full-budget segm AP ({int(table['full_iter'].max())} it)",
           title=f"Early-stopping fidelity, {len(table)} candidates (tau {tau:.2f})")
    ax.grid(alpha=0.3)
    atomic_save_png(path, fig)


def main() -> None:
    parser = arguments(__doc__, full=16, quick=12)
    args = parser.parse_args()
    n = args.candidates or (12 if args.quick else 16)
    trials = train_set(args.work, n, ("stage1", "verify"), quick=args.quick, experiment=args.experiment,
                       scratch=args.scratch)
    table = fidelity_table(trials)
    stats = correlations(table)
    print(table.round(4).to_string(index=False))
    print()
    print("| short vs full budget | Kendall tau | Spearman rho |\n|---|---|---|")
    for name, s in stats.items():
        print(f"| {name} | {s['kendall_tau']:.3f} | {s['spearman_rho']:.3f} |")
    suffix = ("-quick" if args.quick else "") + ("" if args.experiment == "quickstart" else f"-{args.experiment}")
    suffix += "-scratch" if args.scratch else ""
    atomic_write_text(args.work / f"fidelity{suffix}.json",
                      json.dumps({"candidates": len(table), "correlations": stats,
                                  "rows": table.to_dict(orient="records")}, indent=2, default=float) + "\n")
    plot(args.work / f"fidelity{suffix}.png", table, stats)
    print(f"\n{len(table)} candidates; wrote {args.work}/fidelity{suffix}.json and .png")


if __name__ == "__main__":
    main()
