"""A set of real trials for the predictor and fidelity benchmarks: Sobol candidates of an
experiment's space, each trained at the search's two budgets, kept in a run store.

Why one shared set: both benchmarks need the same expensive thing, candidates trained for
real exactly as ``nars search`` trains them (``Search.trial_config``: stage 1's compressed
schedule, and verification's full one), so pointing both at one ``--work`` folder trains each
candidate once. The store makes the set resumable and incremental: asking for more
candidates trains only the new ones (Sobol draws are a prefix of the longer sequence).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench_search import QUICK_CONFIG
from nars.search.cluster import ray_session
from nars.search.driver import Search
from nars.search.experiment import load_experiment
from nars.search.store import STORE_FILE, RunStore, load_run
from search_spaces import sample

QUICK = [  # the --quick modes (<= 5 minutes on 2 cores): bench_search's tiny scale, 64 px images
    "stage1.max_iter", "10", "stage1.eval_period", "5", "verify.max_iter", "40", "stage1.pretrain_samples", "256",
    "dataset.shapes.size", "64", "dataset.shapes.val", "8",
]


def train_set(work: Path, n: int, stages: Sequence[str], *, quick: bool, seed: int = 0,
              experiment: str = "quickstart", scratch: bool = False) -> pd.DataFrame:
    """Train the first ``n`` feasible Sobol candidates at each of ``stages`` ("stage1", "verify");
    one row per trained trial: candidate, stage, MFLOPs, params, metrics, history. ``scratch``:
    without the experiment's parent (every candidate from random weights)."""
    name = "" if experiment == "quickstart" else f"-{experiment}"
    data = work / "data" / (("shapes-quick" if quick else "shapes") + name)
    overrides = ["seed", str(seed), "dataset.shapes.out", str(data.resolve())]
    if scratch:
        overrides += ["parent.weights", "''"]  # a YAML empty string
        name += "-scratch"
    if quick:
        pins = {**load_experiment(experiment)["config"], **QUICK_CONFIG}
        overrides += [*QUICK, "config", json.dumps(pins)]
    exp = load_experiment(experiment, overrides)
    run_dir = work / (("trials-quick" if quick else "trials") + name)
    run_dir.mkdir(parents=True, exist_ok=True)
    job = Search(copy.deepcopy(exp), run_dir, progress=True)
    picks = sample(job.space, n, method="sobol", seed=seed, **exp["constraints"])
    store = RunStore(run_dir / STORE_FILE)
    try:
        job.store = store
        store.requeue_interrupted()
        for stage in stages:
            job.add({stage: picks}, 0)
        if store.trials(status="pending"):
            with ray_session(exp["ray"]):
                for stage in stages:
                    job.run_pending(store.trials(stage=stage, status="pending"), f"{stage} ({n} candidates)")
    finally:
        store.close()
    trials = load_run(run_dir)["trials"]
    wanted = {p.id for p in picks}
    return trials[trials["candidate_id"].isin(wanted) & trials["stage"].isin(stages)].reset_index(drop=True)


def arguments(doc: str, full: int, quick: int) -> argparse.ArgumentParser:
    """The options every trial-set benchmark takes: --quick, --candidates, --work, --experiment, --scratch."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budgets, <= 5 minutes on 2 cores")
    parser.add_argument("--candidates", type=int, help=f"trained candidates (default {full}, --quick {quick})")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="trials and outputs (default bench-work)")
    parser.add_argument("--experiment", default="quickstart", help="whose space, data and budgets (default quickstart)")
    parser.add_argument("--scratch", action="store_true", help="drop the experiment's parent: train from random weights")
    return parser
