"""Warm-starting the predictor (``stage1.warm_start``): does a search that starts from an
earlier run's measured trials find a better model for the same new training?

    .venv/bin/python bench/bench_warm_start.py [--quick] [--seeds 0 1 2] [--work DIR] [KEY VALUE ...]

Per seed S, two searches with the same new-trial budget (the experiment's stage-1 rounds x
trials and its verification): *cold*, the search as it ships (a Sobol round 0), and *warm*,
the same search warm-started from the cold run of the next seed in ``--seeds`` (cyclic): its
predictor is fitted from round 0 on that run's measured stage-1 trials, round 0 is the
predictor's picks, and those candidates are never trained again. The source is a real
earlier run on the same space and dataset with another seed, as a user's would be; warm
runs reuse cold runs, so 3 seeds cost 6 searches.

The experiment: the quickstart (2 rounds x 3 stage-1 trials of 80 iterations with successive
halving, 2 verified candidates of 160 iterations), without its reference trial
(``verify.reference ""``: FBNetV3_A_dsmask is not one of the compared models, and it is the
longest trial); extra ``KEY VALUE`` overrides go on top. ``--quick``: ``bench_search``'s tiny
scale (64 px, 8-iteration trials; its APs are about 0: a machinery check only).

Figures per run: best verified segm AP, best stage-1 segm AP (this run's own trials), the
number of warm trials, and Kendall tau of the run's stage-2 predictor (``predictor.pt``) on
a held-out set: the measured stage-1 trials of the cold run of the third seed, which
neither run of the pair trained on (candidates they measured left out); NaN with fewer than
3 seeds. Everything lands in ``--work``: ``runs/{cold,warm}/seedS`` and ``results.json``.
Run again with the same ``--work`` to resume: finished runs (``wall.json``) are read back, an
unfinished one is cleared and run again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from bench_search import _commit, _json, _median, overrides_for, summarize
from nars.fileio import atomic_write_text
from nars.search.driver import search
from nars.search.experiment import load_experiment
from nars.search.stage1 import METRIC, measured
from nars.search.store import STORE_FILE, RunStore
from predictor import MLPPredictor
from search_spaces import load_space

EXPERIMENT = "quickstart"


def _trials(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(own measured stage-1 trials, warm results) of a run."""
    store = RunStore(run_dir / STORE_FILE)
    try:
        return measured(store.trials(stage="stage1")), store.get_meta("warm_results", [])
    finally:
        store.close()


def held_out_tau(run_dir: Path, held_out: list[dict[str, Any]], space: Any) -> float:
    """Kendall tau of the run's stage-2 predictor on trials it was not fitted on."""
    own, warm = _trials(run_dir)
    seen = {t["candidate_id"] for t in own + warm}
    rows = [t for t in held_out if t["candidate_id"] not in seen]
    if len(rows) < 3:
        return math.nan
    model = MLPPredictor.load(run_dir / "predictor.pt")
    pred = np.ravel(model.predict(space.encode([t["candidate"] for t in rows])))
    return float(kendalltau([t["metrics"][METRIC] for t in rows], pred).statistic)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| seed | search | warm trials (from) | search trials + verified | best stage-1 segm AP "
             "| best verified segm AP | held-out tau | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['kind']} | {r['warm_trials']} ({r['source']}) "
                     f"| {r['search_trials']} + {r['verify_trials']} | {r['best_search_ap']:.4f} "
                     f"| {r['best_verified_ap']:.4f} | {r['tau']:.2f} | {r['wall_s']:.0f} |")
    for kind in ("cold", "warm"):
        mine = [r for r in rows if r["kind"] == kind]
        lines.append(f"| median | **{kind}** | | | {_median([r['best_search_ap'] for r in mine]):.4f} "
                     f"| **{_median([r['best_verified_ap'] for r in mine]):.4f}** "
                     f"| {_median([r['tau'] for r in mine]):.2f} | {_median([r['wall_s'] for r in mine]):.0f} |")
    pairs = {(r["seed"], r["kind"]): r["best_verified_ap"] for r in rows}
    seeds = sorted(s for s, kind in pairs if kind == "warm")
    wins = sum(pairs[s, "warm"] >= pairs[s, "cold"] for s in seeds)
    lines += ["", f"warm >= cold in best verified segm AP: {wins} of {len(seeds)} seeds"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="bench_search's tiny scale: a machinery check")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", help="folder for data, runs and results (default: a new temporary one)")
    parser.add_argument("overrides", nargs="*", help="experiment overrides on top, e.g. stage1.max_iter 40")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="nars-bench-warm-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides_for(argparse.Namespace(quick=args.quick, experiment=EXPERIMENT), work),
                 "verify.reference", '""', *args.overrides]
    exp = load_experiment(EXPERIMENT, overrides)  # checks the overrides before anything runs
    space = load_space(exp["space"])
    s1 = exp["stage1"]
    print(f"work {work}; commit {_commit()}; load before {os.getloadavg()[0]:.2f} (1-min average)")
    print(f"experiment {EXPERIMENT} + {' '.join(overrides)}: {s1['rounds']} rounds x {s1['trials_per_round']} "
          f"stage-1 trials ({s1['max_iter']} it.), top_k {exp['verify']['top_k']} verified "
          f"({exp['verify']['max_iter']} it.), seeds {args.seeds}")

    def run(kind: str, seed: int, warm_from: Path | None) -> dict[str, Any]:
        """One search, unless a previous invocation finished it; its figures."""
        run_dir = work / "runs" / kind / f"seed{seed}"
        marker = run_dir / "wall.json"
        if not marker.exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts over
            warm = ["stage1.warm_start", json.dumps([str(warm_from)])] if warm_from else []
            t0 = time.time()
            search(EXPERIMENT, [*overrides, "seed", str(seed), *warm], out=str(run_dir), progress=False)
            atomic_write_text(marker, json.dumps({"wall_s": time.time() - t0}) + "\n")
        row = {"kind": kind, "seed": seed, "run": str(run_dir), "wall_s": json.loads(marker.read_text())["wall_s"],
               "source": warm_from.name if warm_from else "-", "warm_trials": len(_trials(run_dir)[1]),
               **summarize(run_dir, exp["constraints"]["max_mflops"])}
        print(f"{kind} seed {seed}: best verified segm AP {row['best_verified_ap']:.4f}, best stage-1 "
              f"{row['best_search_ap']:.4f}, {row['warm_trials']} warm trials, {row['wall_s']:.0f} s", flush=True)
        return row

    start = time.time()
    cold = {s: run("cold", s, None) for s in args.seeds}
    source = {s: args.seeds[(i + 1) % len(args.seeds)] for i, s in enumerate(args.seeds)}
    warm = {s: run("warm", s, Path(cold[source[s]]["run"])) if source[s] != s else None for s in args.seeds}
    rows = []
    for i, s in enumerate(args.seeds):
        third = args.seeds[(i + 2) % len(args.seeds)]
        held_out = _trials(Path(cold[third]["run"]))[0] if third not in (s, source[s]) else []
        for row in (cold[s], warm[s]):
            if row is not None:
                row["tau"] = held_out_tau(Path(row["run"]), held_out, space)
                rows.append(row)
    for s in args.seeds:
        assert warm[s] is None or (warm[s]["search_trials"], warm[s]["verify_trials"]) == (
            cold[s]["search_trials"], cold[s]["verify_trials"]), f"unequal new-trial budgets, seed {s}"
        assert warm[s] is None or warm[s]["warm_trials"], f"seed {s}: the warm run used no warm trials (driver wiring?)"
    text = table(rows)
    wall = time.time() - start
    print(f"\n{text}\n\nwall time {wall / 60:.1f} min (this invocation); load after {os.getloadavg()[0]:.2f}")
    results = {"mode": "quick" if args.quick else "full", "commit": _commit(), "overrides": overrides,
               "seeds": args.seeds, "source": source, "wall_s": wall, "rows": rows, "table": text}
    atomic_write_text(work / "results.json", json.dumps(_json(results), indent=2) + "\n")
    print(f"wrote {work / 'results.json'}")


if __name__ == "__main__":
    main()
