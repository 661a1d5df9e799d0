"""Search efficiency: does NARS find better models than plain hyper-parameter search for the same compute?

    .venv/bin/python bench/bench_search.py [--quick] [--seeds 0 1 2] [--work DIR]

    .venv/bin/python bench/bench_search.py --quick --work /tmp/nars-bench-search-quick
    .venv/bin/python bench/bench_search.py --work /tmp/nars-bench-search
    .venv/bin/python bench/bench_search.py --experiment quickstart_finetune --methods random --work /tmp/bsf
    .venv/bin/python bench/bench_search.py --experiment coins_finetune --methods random --work /tmp/bsc -- constraints.max_mflops 2925

``--experiment`` runs every method on another experiment (``quickstart_finetune``: every trial
inherits the parent's weights, and NARS's reference trial is the parent architecture
fine-tuned with the base recipe); ``--methods`` picks the baselines run beside NARS; KEY VALUE
overrides after ``--`` go to every method's runs (a constraint, say). An experiment on generated
shapes makes them under ``--work``; one on COCO files (``coins_finetune``: make them first with
``nars data coins data/coins --size 320``) reads its own.

Full mode: seeds 0, 1, 2 at the quickstart's own budget (``experiments/quickstart.yaml`` with
``verify.top_k 2``; when written, 2 rounds x 3 stage-1 trials, 2 verified candidates); 12 searches of
about the quickstart's size, so one to two hours on 2 cores (an estimate). ``--quick``: 3 seeds
at a tiny budget (2 rounds x 2 trials of 8 iterations, 16 verification iterations, a small
predictor pool, pretraining and stage 2) on the tests' tiny scale (64 px shapes, 8 validation
images, 4 images a batch, pinned through the experiment's ``config``): under 5 minutes on 2
idle cores, mostly Ray starting trial workers. It checks the machinery; its APs are near zero
and say nothing about the methods. Everything lands in ``--work`` (default: a new temporary
folder): the shapes data, one run folder per method and seed (``runs/METHOD/seedS``:
``nars.sqlite``, each trial's training folder and, once finished, ``wall.json``),
``results.json`` and ``search_efficiency.png``. The markdown table is printed. Run again
with the same ``--work`` and it resumes: finished (method, seed) runs are read back, an
unfinished one is cleared and run again.

Methods, each run once per seed with the same budget of real training trials:

- ``NARS``: ``nars.search.driver.search`` (stage 1 with synchronous successive halving, predictor refits, stage 2 on the
  predictor, verification of the predicted front), in-process with its own Ray session.
- ``random``: ``search_spaces.sample(space, N, method="uniform", seed=S, **constraints)``;
  all N trained at stage-1 fidelity (``run_trials``, FIFO, no early stopping).
- ``local``: NARS with ``stage1.local 1``: every stage-1 trial is a neighbour of the incumbent
  (the reference's nearest feasible relatives in round 0, then stage 1's best), no predictor
  picks and no Sobol exploration; verification as NARS's.
- ``recipe``: NARS with a recipe stage (``recipe.trials 3``): three other recipes on the
  parent's architecture (its recipe with one or two recipe parameters moved one step), trained like the reference before stage 1; the best of them and the
  reference is the **tuned parent**, reported per seed (``tuned parent AP``) as the honest
  baseline, and stage 1's first incumbent. Its budget is NARS's plus those three trials.
- ``parent``: no search: the parent's architecture with the base recipe (the reference),
  fine-tuned once for as many iterations as NARS trained on that seed (stage-1, verified and
  reference trials together), its schedule stretched to fit: what the same compute buys
  without searching. Its one trial is its "best verified" model.
- ``tune-nevergrad``: a Ray Tune ``Tuner`` with ``NevergradSearch`` (``ng.optimizers.NGOpt``,
  budget N, num_workers = ray.max_concurrent, no predictor) over an ``ng.p.Array`` on the
  space's unit cube (``space.from_unit`` maps a point to a candidate), FIFO scheduler, told
  each trial's last reported segm AP. Constraints: the feasibility test (the analytic
  MFLOPs / params of the point's candidate within ``constraints``) is registered on the
  nevergrad parameter with ``register_cheap_constraint``, so nevergrad only proposes feasible
  points (it re-asks up to 500 times; at the quickstart's limits about 79% of the unit cube
  was feasible when this was written). Repair rule for the one case left, nevergrad giving
  up and sending an infeasible point anyway: the trial fails without training
  ("infeasible") and still counts as one of the N trials, as the optimizer spent it.
- ``tune-asha``: a Ray Tune ``Tuner`` with the default random search (``BasicVariantGenerator``)
  over ``tune.sample_from`` of a feasible unit point (uniform draws, rejected until feasible,
  from ``numpy.random.default_rng((S, 3))``: a stream of its own, so it does not retrain the
  ``random`` method's candidates) and ``ASHAScheduler`` with the experiment's
  ``stage1.early_stop`` grace period and reduction factor (``max_t`` = ``stage1.max_iter``).

Fairness rules:

- One experiment for all: the quickstart's space (fbnetv3is_quick), constraints, base
  config, dataset (shapes, generated under ``--work``) and Ray settings (2 CPUs, 1 per trial,
  2 concurrent), with the same overrides (budget, ``seed S``) for every method. Trial configs
  all come from ``Search.trial_config``: search trials at stage-1 fidelity (``"stage1"``: a
  compressed copy of the candidate's schedule, ``stage1.max_iter / verify.max_iter`` of it),
  verification at the verify budget (``"verify"``); every trial of seed S trains with
  ``SEED`` S, so two methods that pick the same candidate train the same model.
- Same number of real trials per (method, seed): N = ``stage1.rounds x
  stage1.trials_per_round`` search trials, then k verification trials, k = the number NARS
  verified for that seed (``verify.top_k`` = 2, fewer only when its predicted front is
  smaller). The baselines verify their k best distinct candidates by last reported segm AP.
  Asserted. ASHA-stopped trials count as whole trials (the "search iters" column shows the
  iterations actually trained). Failed trials count too.
- NARS's reference trial (FBNetV3_A_dsmask at the verify budget, outside the quickstart's constraints at
  1,231 MFLOPs, costed as its trial trains) is not one of its k: it is shown as a reference line only.

Metrics per (method, seed): best verified segm AP; hypervolume of the verified points in
(segm AP up, MFLOPs down) with ``ref_cost = constraints.max_mflops`` and reference AP 0
(``nars.search.pareto.hypervolume``, units AP x MFLOPs); best search-phase segm AP (last
report of each search trial); trials and iterations trained; wall time. Medians over seeds
per method, and the baselines' medians as ratios to NARS's.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nars.fileio import atomic_save_png, atomic_write_text
from nars.search.cluster import ray_session
from nars.search.driver import Search, search
from nars.search.experiment import load_experiment, resolve_experiment_path
from nars.search.fronts import tuned_parent
from nars.search.pareto import hypervolume
from nars.search.stage1 import METRIC, as_sample
from nars.search.store import STORE_FILE, RunStore
from search_spaces import SearchSpace, sample
from search_spaces.sampling import Sample
from search_spaces.space import canonical_id

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("NARS", "random", "local", "recipe", "parent", "tune-nevergrad", "tune-asha")
SEARCHES = ("NARS", "local", "recipe")  # methods that are nars searches (their own Ray session each)
EXTRA = {"NARS": [], "local": ["stage1.local", "1"], "recipe": ["recipe.trials", "3"]}  # their overrides
QUICK = [  # a tiny budget: the whole run in about 5 minutes on 2 cores
    "stage1.rounds", "2", "stage1.trials_per_round", "2", "stage1.max_iter", "8", "stage1.eval_period", "4",
    "stage1.early_stop.grace_period", "4", "stage1.early_stop.reduction_factor", "2", "stage1.pool_size", "256",
    "stage1.pretrain_samples", "256", "stage2.budget", "1000", "stage2.batch_size", "250", "verify.max_iter", "16",
    "dataset.shapes.size", "64", "dataset.shapes.val", "8",  # evaluation would dominate 8-iteration trials
]
QUICK_CONFIG = {  # pinned for every trial in --quick (the tests' tiny scale): 64 px images, 4 per batch
    "INPUT.MIN_SIZE_TRAIN": [64], "INPUT.MAX_SIZE_TRAIN": 80, "INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 64,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16, "SOLVER.IMS_PER_BATCH": 4,
}


# -- the shared experiment ------------------------------------------------------------------
def overrides_for(args: argparse.Namespace, work: Path) -> list[str]:
    """Overrides every method runs with (the seed comes on top, per run)."""
    overrides = ["verify.top_k", "2", *args.overrides]
    if load_experiment(args.experiment, args.overrides)["dataset"]["shapes"]["out"]:  # generated data: made under --work
        overrides += ["dataset.shapes.out", str(work / ("shapes-quick" if args.quick else "shapes"))]
    if args.quick:  # the experiment's own pins stay; the quick ones go on top
        pins = {**load_experiment(args.experiment)["config"], **QUICK_CONFIG}
        overrides += [*QUICK, "config", json.dumps(pins)]
    return overrides


def experiment(source: str, overrides: list[str], seed: int) -> dict[str, Any]:
    exp = load_experiment(source, [*overrides, "seed", str(seed)])
    exp["workdir"] = os.getcwd()  # as nars.search.driver.search sets it
    return exp


def unit_candidate(space: SearchSpace, u: Any) -> dict[str, Any]:
    """The candidate of a point of the unit cube (clipped into [0, 1), as stage 2 does)."""
    return space.from_unit(np.clip(np.asarray(u, dtype=float), 0.0, np.nextafter(1.0, 0.0)))[0]


def feasible(space: SearchSpace, candidate: Mapping[str, Any], constraints: Mapping[str, float | None]) -> bool:
    mflops, params = space.cost(candidate, canonical=True)  # from_unit's candidates are canonical
    return (constraints["max_mflops"] is None or mflops <= constraints["max_mflops"]) and (
        constraints["max_params"] is None or params <= constraints["max_params"])


class FeasiblePoint:
    """nevergrad cheap constraint: the point's candidate meets the constraints (picklable)."""

    def __init__(self, space: SearchSpace, constraints: Mapping[str, float | None]):
        self.space, self.constraints = space, dict(constraints)

    def __call__(self, value: Mapping[str, Any]) -> bool:
        return feasible(self.space, unit_candidate(self.space, value["u"]), self.constraints)


class FeasibleDraw:
    """``tune.sample_from``: uniform points of the unit cube, rejected until feasible."""

    def __init__(self, space: SearchSpace, constraints: Mapping[str, float | None], seed: int):
        self.space, self.constraints = space, dict(constraints)
        self.rng = np.random.default_rng((seed, 3))

    def __call__(self, config: Any = None) -> list[float]:
        for _ in range(100_000):
            u = self.rng.random(self.space.unit_dims)
            if feasible(self.space, unit_candidate(self.space, u), self.constraints):
                return u.tolist()
        raise RuntimeError("no feasible point in 100,000 uniform draws")


# -- the Tune-driven baselines ----------------------------------------------------------------
def tune_trial(config: dict[str, Any], job: Search, root: str, threads: int) -> None:
    """Tune trainable of the baselines: the unit point's candidate, trained as ``run_trial`` does."""
    import torch
    from ray import tune

    from nars.engine.trainer import train
    from nars.errors import UserError
    from nars.search.trials import flat_metrics

    torch.set_num_threads(threads)
    candidate = unit_candidate(job.space, config["u"])
    if not feasible(job.space, candidate, job.exp["constraints"]):
        cost = job.space.cost(candidate, canonical=True)
        raise UserError(f"infeasible: {cost} (MFLOPs, params) outside the constraints")
    out = Path(root) / tune.get_context().get_trial_id()
    if out.exists():
        shutil.rmtree(out)
    start = time.time()

    def on_eval(iteration: int, metrics: Mapping[str, Any]) -> None:
        tune.report({"iteration": iteration + 1, "wall_time": time.time() - start, **flat_metrics(metrics)})

    train(job.trial_config(candidate, "stage1"), out, progress=False, on_eval=on_eval)


def _trial_name(trial: Any) -> str:
    return trial.trial_id  # a unit point has 69 coordinates: keep them out of folder names


def run_tune(job: Search, kind: str, seed: int, n: int, label: str) -> None:
    """N search trials chosen by Tune (NevergradSearch + FIFO, or random + ASHA) into ``job.store``."""
    import nevergrad as ng
    from ray import tune
    from ray.tune import Callback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.nevergrad import NevergradSearch

    class Bar(Callback):
        def __init__(self) -> None:
            self.bar = tqdm(total=n, desc=label, unit="trial", dynamic_ncols=True, leave=False)

        def __getstate__(self) -> dict[str, Any]:
            return {}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.bar.update(1)

        on_trial_error = on_trial_complete

    exp, space = job.exp, job.space
    ray_cfg, s1 = exp["ray"], exp["stage1"]
    maker = copy.copy(job)
    maker.__dict__.pop("store", None)  # the trainable needs the space and configs, not the store
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, job=maker, root=str(job.run_dir / "trials"),
                             threads=max(1, math.floor(ray_cfg["cpus_per_trial"]))),
        {"cpu": ray_cfg["cpus_per_trial"], "gpu": ray_cfg["gpus_per_trial"]},
    )
    if kind == "nevergrad":
        param = ng.p.Dict(u=ng.p.Array(shape=(space.unit_dims,), lower=0.0, upper=1.0))
        param.random_state = np.random.RandomState(seed)
        param.register_cheap_constraint(FeasiblePoint(space, exp["constraints"]))
        search_alg = NevergradSearch(optimizer=ng.optimizers.NGOpt,
                                     optimizer_kwargs={"budget": n, "num_workers": ray_cfg["max_concurrent"]},
                                     space=param, metric=METRIC, mode="max")
        scheduler, param_space = FIFOScheduler(), None
    else:
        search_alg = BasicVariantGenerator(random_state=seed)  # the points come from FeasibleDraw's own stream
        max_t = s1["max_iter"]  # a candidate's stage-1 iterations are at most this
        scheduler = ASHAScheduler(time_attr="iteration", metric=METRIC, mode="max", max_t=max_t,
                                  grace_period=min(s1["early_stop"]["grace_period"], max_t),
                                  reduction_factor=s1["early_stop"]["reduction_factor"])
        param_space = {"u": tune.sample_from(FeasibleDraw(space, exp["constraints"], seed))}
    bar = Bar()
    # reuse_actors=False: a fresh worker per trial, as run_trials does for NARS and the verifications
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=n,
                                    max_concurrent_trials=ray_cfg["max_concurrent"], reuse_actors=False,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(name=f"{kind}-{int(time.time())}", storage_path=str(job.run_dir / "ray"),
                                  callbacks=[bar], verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
    )
    try:
        grid = tuner.fit()
    finally:
        bar.bar.close()
    for result in grid:
        tid = Path(result.path).name
        if "u" not in (result.config or {}):  # never started: nothing to record but the error
            job.store.add_trials([{"id": tid, "candidate_id": "", "stage": "stage1", "round": 0, "candidate": {}}])
            job.store.finish(tid, "failed", None, error=str(result.error or "no config")[:2000])
            continue
        candidate = unit_candidate(space, result.config["u"])
        mflops, params = space.cost(candidate, canonical=True)
        job.store.add_trials([{"id": tid, "candidate_id": canonical_id(candidate), "stage": "stage1", "round": 0,
                               "candidate": candidate, "mflops": mflops, "params": params,
                               "max_iter": job.trial_config(candidate, "stage1")["SOLVER"]["MAX_ITER"]}])
        frame = result.metrics_dataframe
        history = []
        if frame is not None and "iteration" in frame:
            keep = [c for c in frame.columns if c in ("iteration", "wall_time") or c.startswith(("segm_", "bbox_"))]
            history = [{k: int(v) if k == "iteration" else float(v) for k, v in report.items() if not math.isnan(v)}
                       for report in frame[keep].dropna(subset=["iteration"]).to_dict("records")]
        for report in history:
            job.store.append_history(tid, report)
        if result.error is not None or not history:
            job.store.finish(tid, "failed", None, error=str(result.error or "no report")[:2000])
            continue
        last = history[-1]
        status = "done" if last["iteration"] >= job.trial_config(candidate, "stage1")["SOLVER"]["MAX_ITER"] else "pruned"
        job.store.finish(tid, status, {k: v for k, v in last.items() if k not in ("iteration", "wall_time")},
                         wall_time=last.get("wall_time"))


def verify_best(job: Search, k: int, label: str) -> None:
    """Verify the k best distinct searched candidates (last reported segm AP) at the verify budget."""
    trials = job.store.trials(stage="stage1")
    if all(t["status"] == "failed" for t in trials):
        raise RuntimeError(f"{label}: every search trial failed; the first error: {trials[0]['error']}")
    trials = [t for t in trials if t["candidate"]]
    ranked = sorted(trials, key=lambda t: -((t["metrics"] or {}).get(METRIC, -1.0)))  # failed ones last
    picks: dict[str, Sample] = {}
    for t in ranked:
        if len(picks) < k and t["candidate_id"] not in picks:
            picks[t["candidate_id"]] = as_sample(t)
    job.add({"verify": list(picks.values())}, 0)
    job.run_pending(job.store.trials(stage="verify", status="pending"), label)


def run_baseline(method: str, source: str, overrides: list[str], seed: int, run_dir: Path, k: int,
                 budget: int) -> None:
    """``k``: the verified trials NARS had; ``budget``: the iterations NARS trained (``parent``)."""
    job = Search(experiment(source, overrides, seed), run_dir, progress=False)
    s1 = job.exp["stage1"]
    n = s1["rounds"] * s1["trials_per_round"]
    run_dir.mkdir(parents=True)
    job.store = RunStore(run_dir / STORE_FILE)
    try:
        if method == "parent":  # the reference trains verify.max_iter iterations, whatever its recipe's own
            job.exp["verify"]["max_iter"] = budget
            job.add_reference()
            job.run_pending(job.store.trials(stage="reference"), f"{method} seed {seed} ({budget} iterations)")
            return
        if method == "random":
            job.add({"stage1": sample(job.space, n, method="uniform", seed=seed, **job.exp["constraints"])}, 0)
            job.run_pending(job.store.trials(stage="stage1"), f"{method} seed {seed} search")
        else:
            run_tune(job, {"tune-nevergrad": "nevergrad", "tune-asha": "random"}[method], seed, n,
                     f"{method} seed {seed} search")
        verify_best(job, k, f"{method} seed {seed} verification")
    finally:
        job.store.close()


# -- results --------------------------------------------------------------------------------
def _ap(trial: Mapping[str, Any]) -> float | None:
    return (trial["metrics"] or {}).get(METRIC) if trial["status"] in ("done", "pruned") else None


def anytime(trials: list[dict[str, Any]], parent_only: bool = False) -> list[tuple[int, float]]:
    """(iterations trained so far, best verified segm AP so far) as the run's trials ended, in
    the order they ended: every trial's iterations count, only verified models (the parent
    method's one trial) score, since a stage-1 AP is on a shorter budget."""
    scored = ("reference",) if parent_only else ("verify",)
    spent, best, curve = 0, math.nan, []
    for t in sorted((t for t in trials if t["status"] in ("done", "pruned", "failed")), key=lambda t: t["updated"]):
        spent += t["reached"] or 0
        ap = _ap(t) if t["stage"] in scored else None
        if ap is not None:
            best = ap if math.isnan(best) else max(best, ap)
        curve.append((spent, best))
    return curve


def summarize(run_dir: Path, max_mflops: float) -> dict[str, Any]:
    """One (method, seed) run's figures, read back from its store."""
    store = RunStore(run_dir / STORE_FILE)
    try:
        trials = store.trials()
    finally:
        store.close()
    by_stage = {s: [t for t in trials if t["stage"] == s] for s in ("stage1", "verify", "reference")}
    searched = [a for a in map(_ap, by_stage["stage1"]) if a is not None]
    verified = [{"id": t["candidate_id"], "mflops": t["mflops"], "params": t["params"], "segm_AP": _ap(t),
                 "status": t["status"]} for t in by_stage["verify"]]
    ref = by_stage["reference"][0] if by_stage["reference"] else None
    if ref is not None and not by_stage["stage1"] and not verified:  # the parent method: its one trial
        verified = [{"id": ref["candidate_id"], "mflops": ref["mflops"], "params": ref["params"], "segm_AP": _ap(ref),
                     "status": ref["status"]}]
    points = [v for v in verified if v["segm_AP"] is not None]
    tuned = tuned_parent(trials)
    return {
        "anytime": anytime(trials, parent_only=ref is not None and not by_stage["stage1"] and not by_stage["verify"]),
        "search_trials": len(by_stage["stage1"]),
        "verify_trials": len(by_stage["verify"]),
        "failed": sum(t["status"] == "failed" for t in trials if t["stage"] != "reference"),
        "search_iters": sum(max((h["iteration"] for h in t["history"]), default=0) for t in by_stage["stage1"]),
        "total_iters": sum(t["reached"] or 0 for t in trials),  # every trial, every stage: the compute spent
        "best_search_ap": max(searched, default=math.nan),
        "best_verified_ap": max((v["segm_AP"] for v in points), default=math.nan),
        "hypervolume": hypervolume([v["segm_AP"] for v in points], [v["mflops"] for v in points], ref_cost=max_mflops),
        "verified": verified,
        "reference": None if ref is None else {"mflops": ref["mflops"], "segm_AP": _ap(ref)},
        "tuned_parent": None if tuned is None else {"mflops": tuned["mflops"], "segm_AP": _ap(tuned),
                                                    "stage": tuned["stage"], "id": tuned["candidate_id"]},
    }


def _json(value: Any) -> Any:
    """NaN (no measurement) as null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def table(rows: list[dict[str, Any]], seeds: list[int], methods: tuple[str, ...]) -> str:
    lines = [("| method | seed | trials (search + verify) | search iters | all iters | best search segm AP "
              "| best verified segm AP | hypervolume (AP x MFLOPs) | wall s |"), "|---|---|---|---|---|---|---|---|---|"]
    medians: dict[str, dict[str, float]] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        for r in mine:
            lines.append(f"| {method} | {r['seed']} | {r['search_trials']} + {r['verify_trials']} | {r['search_iters']} "
                         f"| {r['total_iters']} | {r['best_search_ap']:.4f} | {r['best_verified_ap']:.4f} | {r['hypervolume']:.2f} "
                         f"| {r['wall_s']:.0f} |")
        m = {key: _median([r[key] for r in mine]) for key in
             ("search_iters", "total_iters", "best_search_ap", "best_verified_ap", "hypervolume", "wall_s")}
        medians[method] = m
        lines.append(f"| **{method}** | median | | {m['search_iters']:.0f} | {m['total_iters']:.0f} | {m['best_search_ap']:.4f} "
                     f"| **{m['best_verified_ap']:.4f}** | **{m['hypervolume']:.2f}** | {m['wall_s']:.0f} |")
    nars = medians["NARS"]
    lines += ["", ("| method | median best verified AP / NARS's | median hypervolume / NARS's "
                   "| median best search AP / NARS's |"), "|---|---|---|---|"]
    for method in methods[1:]:
        m = medians[method]
        lines.append(f"| {method} | {_ratio(m['best_verified_ap'], nars['best_verified_ap'])} "
                     f"| {_ratio(m['hypervolume'], nars['hypervolume'])} "
                     f"| {_ratio(m['best_search_ap'], nars['best_search_ap'])} |")
    lines += ["", paired_table(rows, methods)]
    refs = [r["reference"] for r in rows if r["method"] == "NARS" and r["reference"]]
    if refs:
        aps = " / ".join(f"{x['segm_AP']:.4f}" if x["segm_AP"] is not None else "failed" for x in refs)
        median = _median([x["segm_AP"] for x in refs])
        lines += ["", (f"Reference FBNetV3_A_dsmask at the verify budget (NARS runs, seeds {', '.join(map(str, seeds))}): "
                       f"segm AP {aps} (median {median:.4f}), {refs[0]['mflops']:,.0f} MFLOPs.")]
    tuned = {r["seed"]: r["tuned_parent"] for r in rows if r["method"] == "recipe" and r["tuned_parent"]}
    if tuned:
        nars = {r["seed"]: r["best_verified_ap"] for r in rows if r["method"] == "NARS"}
        rows_as_method = [{"method": "tuned parent", "seed": s, "best_verified_ap": t["segm_AP"]} for s, t in tuned.items()]
        d = paired([*rows_as_method, *[{"method": "NARS", "seed": s, "best_verified_ap": a} for s, a in nars.items()]],
                   "tuned parent")
        lines += ["", "Tuned parent (the recipe runs' best of the reference and 3 other recipes, verify budget): "
                  + ", ".join(f"seed {s} {t['segm_AP']:.4f} ({t['stage']})" for s, t in sorted(tuned.items()))
                  + f". NARS minus tuned parent: {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] over "
                  f"{d['seeds']} seeds, P(NARS better) {d['p_improvement']:.2f}."]
    return "\n".join(lines)


def paired(rows: list[dict[str, Any]], method: str, key: str = "best_verified_ap", resamples: int = 10_000,
           ) -> dict[str, Any]:
    """NARS minus ``method`` on the same seeds (same data, data order and validation images)."""
    by_seed = {(r["method"], r["seed"]): r[key] for r in rows}
    return {"method": method, **paired_difference({s: v for (m, s), v in by_seed.items() if m == "NARS"},
                                                  {s: v for (m, s), v in by_seed.items() if m == method}, resamples)}


def paired_difference(ours: Mapping[Any, float], theirs: Mapping[Any, float], resamples: int = 10_000) -> dict[str, Any]:
    """``ours`` minus ``theirs`` on the keys (seeds) both have: the mean paired difference, its
    95% bootstrap interval over the keys, and the share of keys on which ours is better (the
    probability of improvement, as rliable reports it)."""
    diffs = np.array([ours[k] - theirs[k] for k in sorted(ours) if k in theirs], dtype=float)
    diffs = diffs[~np.isnan(diffs)]
    if not len(diffs):
        return {"seeds": 0, "mean": math.nan, "ci": [math.nan, math.nan], "p_improvement": math.nan}
    means = np.random.default_rng(0).choice(diffs, size=(resamples, len(diffs))).mean(axis=1)
    return {"seeds": len(diffs), "mean": float(diffs.mean()),
            "ci": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "p_improvement": float(np.mean(diffs > 0) + 0.5 * np.mean(diffs == 0))}


def printed_difference(label: str, ours: Mapping[Any, float], theirs: Mapping[Any, float]) -> dict[str, Any]:
    """``paired_difference``, printed on one line and labelled."""
    d = paired_difference(ours, theirs)
    print(f"{label}: {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] over {d['seeds']}, "
          f"P(better) {d['p_improvement']:.2f}", flush=True)
    return {"comparison": label, **d}


def paired_table(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> str:
    lines = ["| NARS minus | seeds | mean paired difference, best verified segm AP [95% bootstrap CI] "
             "| P(NARS better) |", "|---|---|---|---|"]
    for method in methods[1:]:
        d = paired(rows, method)
        lines.append(f"| {method} | {d['seeds']} | {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] "
                     f"| {d['p_improvement']:.2f} |")
    return "\n".join(lines)


def plot(path: Path, rows: list[dict[str, Any]], max_mflops: float, methods: tuple[str, ...]) -> None:
    """Left: best verified segm AP per method (seeds as points, median as a bar). Middle: every
    verified point in (MFLOPs, segm AP); the reference FBNetV3_A_dsmask as a dashed line. Right:
    anytime curves, the best verified segm AP against the iterations trained so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, when) = plt.subplots(1, 3, figsize=(16, 4.5), dpi=120)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    refs = [r["reference"]["segm_AP"] for r in rows if r["method"] == "NARS" and r["reference"]
            and r["reference"]["segm_AP"] is not None]
    for i, method in enumerate(methods):
        mine = [r for r in rows if r["method"] == method]
        aps = [r["best_verified_ap"] for r in mine]
        left.bar(i, _median(aps), color=colours[method], alpha=0.35, width=0.6)
        left.scatter([i + (j - (len(aps) - 1) / 2) * 0.08 for j in range(len(aps))], aps, color=colours[method], zorder=3)
        for r in mine:
            pts = [v for v in r["verified"] if v["segm_AP"] is not None]
            right.scatter([v["mflops"] for v in pts], [v["segm_AP"] for v in pts], color=colours[method], alpha=0.75,
                          s=26, label=method if r is mine[0] else None)
    top = max([r["best_verified_ap"] for r in rows if not math.isnan(r["best_verified_ap"])] + refs + [0.0])
    for ax in (left, right):
        upper = max(1.15 * top, 1e-3)
        ax.set_ylim(-0.03 * upper, upper)
        if refs:
            ax.axhline(_median(refs), color="crimson", ls="--", lw=1,
                       label="FBNetV3_A_dsmask, verify budget (median)" if ax is right else None)
        ax.grid(alpha=0.3)
    left.set(xticks=range(len(methods)), xticklabels=methods, ylabel="best verified segm AP",
             title="best verified model per seed (bar: median)")
    right.axvline(max_mflops, color="grey", ls=":", lw=1, label=f"max_mflops {max_mflops:g}")
    right.set(xlabel="MFLOPs", ylabel="verified segm AP", title="verified models (hypervolume: AP x MFLOPs)")
    right.legend(fontsize=7)
    for r in rows:  # anytime: best verified AP against the iterations spent so far, one line per seed
        curve = [(x, y) for x, y in r.get("anytime", []) if not math.isnan(y)]
        if curve:
            when.step(*zip(*curve), where="post", color=colours[r["method"]], alpha=0.7,
                      label=r["method"] if r is next(q for q in rows if q["method"] == r["method"]) else None)
    if refs:
        when.axhline(_median(refs), color="crimson", ls="--", lw=1)
    when.set(xlabel="iterations trained (all trials)", ylabel="best verified segm AP so far",
             title="anytime: best verified model against compute")
    when.grid(alpha=0.3)
    when.legend(fontsize=7)
    atomic_save_png(path, fig)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny budget: about 5 minutes on 2 cores")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", help="folder for data, runs and results (default: a new temporary one)")
    parser.add_argument("--experiment", default="quickstart",
                        help="the shared experiment, a name or path (default quickstart; e.g. quickstart_finetune)")
    parser.add_argument("--methods", nargs="+", choices=METHODS[1:], default=list(METHODS[1:]),
                        help="the baselines run beside NARS (default: all)")
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs every method's runs take (after --)")
    args = parser.parse_args()
    methods = ("NARS", *[m for m in METHODS[1:] if m in args.methods])
    source = str(resolve_experiment_path(args.experiment))
    work = Path(args.work or tempfile.mkdtemp(prefix="nars-bench-search-")).resolve()
    runs = {(m, s): work / "runs" / m / f"seed{s}" for m in methods for s in args.seeds}
    work.mkdir(parents=True, exist_ok=True)
    overrides = overrides_for(args, work)
    exp = experiment(source, overrides, args.seeds[0])  # checks the overrides before anything runs
    s1, max_mflops = exp["stage1"], exp["constraints"]["max_mflops"]
    n = s1["rounds"] * s1["trials_per_round"]
    print(f"work {work}; commit {_commit()}; load before {os.getloadavg()[0]:.2f} (1-min average)")
    print(f"experiment {Path(source).name} + {' '.join(overrides)}: space {exp['space']}, constraints {exp['constraints']}, "
          f"N = {n} search trials ({s1['max_iter']} it.), top_k {exp['verify']['top_k']} verified "
          f"({exp['verify']['max_iter']} it.), seeds {args.seeds}")

    start = time.time()
    rows: list[dict[str, Any]] = []
    verify_k: dict[int, int] = {}
    nars_iters: dict[int, int] = {}  # what the parent method trains: as many iterations as NARS did
    bar = tqdm(total=len(runs), desc="method x seed", unit="run", dynamic_ncols=True)

    def record(method: str, seed: int, run: Callable[[], None]) -> dict[str, Any]:
        """Run (method, seed) unless a previous invocation finished it, and summarize it."""
        run_dir = runs[method, seed]
        marker = run_dir / "wall.json"
        if marker.exists():
            wall = json.loads(marker.read_text())["wall_s"]
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run starts over
            bar.set_postfix_str(f"{method} seed {seed}")
            t0 = time.time()
            run()
            wall = time.time() - t0
            atomic_write_text(marker, json.dumps({"wall_s": wall}) + "\n")
        row = {"method": method, "seed": seed, "wall_s": wall, **summarize(run_dir, max_mflops)}
        rows.append(row)
        bar.update(1)
        tqdm.write(f"{method} seed {seed}: best verified segm AP {row['best_verified_ap']:.4f}, hypervolume "
                   f"{row['hypervolume']:.2f}, {row['search_trials']} + {row['verify_trials']} trials, {wall:.0f} s")
        return row

    for seed in args.seeds:  # seed by seed, so that a run cut short still has whole pairs
        for method in [m for m in methods if m in SEARCHES]:  # each search opens and shuts its own Ray session
            row = record(method, seed, partial(search, source, [*overrides, "seed", str(seed), *EXTRA[method]],
                                               out=str(runs[method, seed]), progress=False))
            verify_k.setdefault(seed, row["verify_trials"])
            nars_iters.setdefault(seed, row["total_iters"])
        with ray_session(exp["ray"]):
            for method in [m for m in methods if m not in SEARCHES]:
                record(method, seed, partial(run_baseline, method, source, overrides, seed, runs[method, seed],
                                             verify_k[seed], nars_iters[seed]))
    bar.close()
    wall = time.time() - start

    for seed in args.seeds:
        counts = {r["method"]: (r["search_trials"], r["verify_trials"]) for r in rows
                  if r["seed"] == seed and r["method"] != "parent"}  # parent: one trial of NARS's iterations
        assert len(set(counts.values())) == 1 and counts["NARS"][0] == n, f"unequal budgets, seed {seed}: {counts}"
    text = table(rows, args.seeds, methods)
    print(f"\n{text}\n")
    print(f"wall time {wall / 60:.1f} min; load after {os.getloadavg()[0]:.2f}")
    results = {
        "mode": "quick" if args.quick else "full", "commit": _commit(), "experiment": source,
        "overrides": overrides, "seeds": args.seeds, "search_trials": n, "verify_trials": verify_k,
        "constraints": exp["constraints"], "wall_s": wall, "rows": rows, "table": text,
        "paired": [paired(rows, m) for m in methods[1:]],
    }
    atomic_write_text(work / "results.json", json.dumps(_json(results), indent=2) + "\n")
    plot(work / "search_efficiency.png", rows, max_mflops, methods)
    print(f"wrote {work / 'results.json'} and {work / 'search_efficiency.png'}")


if __name__ == "__main__":
    main()
