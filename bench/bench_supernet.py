"""Reference figures for the weight-sharing supernet: sub-networks fine-tuned standalone.

    .venv/bin/python bench/bench_supernet.py standalone --work DIR [--n 24] [--iters 320] [--seeds-spread 4]
    .venv/bin/python bench/bench_supernet.py stage1-cost --work DIR [--iters 320]
    .venv/bin/python bench/bench_supernet.py trials --work DIR [--supernet DIR]

Run it with one thread (``OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE``; the script also calls
``torch.set_num_threads(1)``), as the search's trials train (``ray.cpus_per_trial: 1``).

A sub-network (``nars.supernet.subnets``) is the architecture part of a candidate of the
experiment's space, completed with the recipe of the experiment's reference candidate
(``verify.reference``: the parent's own recipe). Its config is the one the search trains
(``Search.trial_config(candidate, "verify")``: the experiment's dataset, pinned keys, seed and
MODEL.WEIGHTS = the parent, inherited onto the sub-network's architecture), with the schedule
stretched to ``--iters`` (``budget.scale_schedule``; default 320 = 4x verify.max_iter).

Phases (each resumable: rerun the same command to continue):

``standalone``
    1. Draws ``64 * n`` architectures of the space (``sample_archs``, seed 0, *without* the
       experiment's constraints), costs each completed candidate (``space.cost``) and keeps
       ``n`` at evenly spaced MFLOPs ranks (min .. max), the parent's own architecture
       replacing the one nearest to it in MFLOPs. Saved first to ``DIR/subnets.json`` (id,
       arch, mflops, params); a rerun reuses it (the same set).
    2. Fine-tunes each standalone from the parent, one at a time, lowest and highest MFLOPs
       first and then the gaps between (partial results already cover the range); each result
       is appended to ``DIR/standalone.jsonl`` as it finishes (id, mflops, params, segm_AP,
       bbox_AP, seconds, iters, seed). Runs live in ``DIR/runs/<id>-s<seed>`` (their
       checkpoints are deleted once read unless ``--keep-checkpoints``).
    3. Then ``--seeds-spread`` of them (spread over MFLOPs) again with seed 1: the reference's
       own seed-to-seed spread (mean |AP difference| and Kendall tau of seed 0 vs seed 1),
       written to ``DIR/seed_spread.json``.

``stage1-cost``
    Times 3 of the chosen sub-networks as stage 1 trains them today
    (``trial_config(candidate, "stage1")``, successive halving's rungs: trained to the first
    rung with its evaluation, then continued from that checkpoint to stage1.max_iter with
    the final evaluation, as a Ray trial does, here in-process) -> ``DIR/stage1_cost.json``
    (seconds per trial, trials per CPU-hour on 1 thread). Then the parent's own architecture
    fine-tuned for ``--iters`` -> ``DIR/parent_cost.json`` ("one parent fine-tuning": the
    denominator of "supernet training time vs one parent fine-tuning").

``trials [--supernet DIR]``
    The fidelity the supernet replaces: every chosen sub-network measured as a search without
    a supernet measures it (a stage-1 trial through its rungs) -> ``DIR/trials_stage1.jsonl``
    and ``DIR/fidelity_trial_stage1.json``, which ``compare``
    ranks against the reference beside the supernets. With ``--supernet``, stage-1 trials
    start from that supernet's weights, as a search with the supernet fidelity trains them.

``zeroshot --supernet DIR [--label L]``
    The zero-shot AP of every chosen sub-network from a trained supernet (``nars supernet
    train quickstart_finetune --out DIR``; cached in its ``zero_shot.json``) against the
    standalone reference: Kendall tau and Spearman rho (segm, bbox), the median zero-shot /
    standalone ratio, the parent's architecture against the parent fine-tuned alone
    (``stage1-cost --iters`` = the supernet's iterations), and the costs as ratios: supernet
    training time / one parent fine-tuning of as many iterations, zero-shot evaluations /
    stage-1 trials per CPU-hour -> ``DIR/fidelity_L.json``.

``sandwich-cost [--sandwiches N]``
    The members of the supernet trainer's first N sandwiches, each trained alone on one batch:
    its step time and MFLOPs against the parent's, and a sandwich's sum
    -> ``DIR/sandwich_cost.json``. Where test-time MFLOPs misjudge a training step.

``memory [--iters N] [--repeats R]``
    The supernet's cost ratios measured in one run: peak RSS and seconds per iteration of a
    supernet training and of one parent fine-tuning, each a fresh process of N iterations,
    alternated R times -> ``DIR/memory.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Mapping, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nars.config import dump  # noqa: E402
from nars.engine.evaluator import recipe_metrics  # noqa: E402
from nars.engine.events import read_metrics  # noqa: E402
from nars.engine.trainer import START_WEIGHTS_FILE, train  # noqa: E402
from nars.fileio import atomic_save_png, atomic_write_text  # noqa: E402
from nars.model.weights import FINAL_WEIGHTS, named_checkpoint  # noqa: E402
from nars.search.budget import scale_schedule  # noqa: E402
from nars.search.driver import Search  # noqa: E402
from nars.search.experiment import load_experiment  # noqa: E402
from nars.search.halving import milestones  # noqa: E402
from nars.supernet.subnets import arch_part, complete, sample_archs, subnet_id  # noqa: E402
from search_spaces import SearchSpace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "quickstart_finetune"
SUBNETS_FILE = "subnets.json"
STANDALONE_FILE = "standalone.jsonl"
SEED_SPREAD_FILE = "seed_spread.json"
STAGE1_COST_FILE = "stage1_cost.json"
PARENT_COST_FILE = "parent_cost.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the experiment, its space and configs ------------------------------------------------

def experiment(name: str) -> dict[str, Any]:
    exp = load_experiment(name)
    exp["workdir"] = str(REPO)  # its relative paths (parent, dataset) are the repository's
    return exp


def wait_for_parent(exp: Mapping[str, Any], poll_s: float = 30.0) -> None:
    """Until the parent's final checkpoint exists. ``Search`` trains a parent whose folder holds
    none yet; this bench must never start a second training of a parent being trained."""
    value = exp["parent"]["weights"]
    if not value or named_checkpoint(value) is not None:
        return
    path = (Path(exp["workdir"]) / value).resolve()
    final = path if path.suffix == ".pth" else path / FINAL_WEIGHTS
    waited = 0.0
    while not final.is_file():
        if waited % 600 == 0:
            log(f"waiting for the parent's checkpoint {final}")
        time.sleep(poll_s)
        waited += poll_s
    if waited:
        time.sleep(poll_s)  # the parent's process may still be writing next to it


def search_job(exp: dict[str, Any], work: Path) -> Search:
    """The search's view of the experiment: its bound space and ``trial_config``."""
    wait_for_parent(exp)
    return Search(copy.deepcopy(exp), work, progress=False)


def reference(job: Search) -> dict[str, Any]:
    """The candidate whose recipe completes every sub-network (verify.reference)."""
    name = job.exp["verify"]["reference"]
    if name not in job.space.references:
        raise SystemExit(f"space {job.space.name} has no reference {name!r}")
    return job.space.references[name]


def subnet_config(job: Search, arch: Mapping[str, Any], iters: int, seed: int) -> dict[str, Any]:
    """The sub-network's verify config, stretched to ``iters``, evaluated only at the end."""
    cfg = job.trial_config(complete(job.space, arch, reference(job)), "verify")
    scale_schedule(cfg, iters)
    cfg["TEST"]["EVAL_PERIOD"] = 0
    cfg["SOLVER"]["CHECKPOINT_PERIOD"] = iters + 1
    cfg["SEED"] = seed
    return cfg


# -- choosing the sub-networks --------------------------------------------------------------

def choose_subnets(space: SearchSpace, ref: Mapping[str, Any], n: int, seed: int = 0,
                   draws_per_pick: int = 64) -> list[dict[str, Any]]:
    """``n`` architectures at evenly spaced MFLOPs ranks of ``draws_per_pick * n`` uniform
    draws (no constraints), the parent's architecture replacing the nearest in MFLOPs; sorted
    by MFLOPs. Each: id, arch, mflops, params, parent (bool)."""
    def entry(arch: Mapping[str, Any]) -> dict[str, Any]:
        mflops, params = space.cost(complete(space, arch, ref))
        return {"id": subnet_id(arch), "arch": dict(arch), "mflops": float(mflops), "params": int(params)}

    pool = sorted((entry(a) for a in sample_archs(space, draws_per_pick * n, seed=seed)), key=lambda e: e["mflops"])
    if len(pool) < n:
        raise SystemExit(f"the space holds only {len(pool)} distinct architectures, fewer than --n {n}")
    ranks = sorted({int(round(i * (len(pool) - 1) / max(1, n - 1))) for i in range(n)})
    chosen = [pool[r] for r in ranks]
    parent = entry(arch_part(space, ref))
    if parent["id"] not in {c["id"] for c in chosen}:
        nearest = min(range(len(chosen)), key=lambda i: abs(chosen[i]["mflops"] - parent["mflops"]))
        chosen[nearest] = parent
    for c in chosen:
        c["parent"] = c["id"] == parent["id"]
    return sorted(chosen, key=lambda c: c["mflops"])


def spread_order(n: int) -> list[int]:
    """Indices 0..n-1 (sorted by MFLOPs) so that every prefix covers the range: both ends,
    then always the index farthest from those already taken (ties: the lower)."""
    if n <= 2:
        return list(range(n))
    order = [0, n - 1]
    while len(order) < n:
        order.append(max((i for i in range(n) if i not in order), key=lambda i: min(abs(i - j) for j in order)))
    return order


def spread_picks(n: int, k: int) -> list[int]:
    """``k`` indices evenly spaced over 0..n-1 (both ends included)."""
    k = min(k, n)
    if k <= 0:
        return []
    if k == 1:
        return [n // 2]
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


# -- the files (later phases read them) -------------------------------------------------------

def load_subnets(work: str | Path) -> list[dict[str, Any]]:
    """``WORK/subnets.json``: the chosen sub-networks (id, arch, mflops, params, parent), by MFLOPs."""
    return json.loads((Path(work) / SUBNETS_FILE).read_text())["subnets"]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's rows (none if it is absent); a torn last line (a killed append) is skipped."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def load_standalone(work: str | Path, seed: int | None = None) -> list[dict[str, Any]]:
    """``WORK/standalone.jsonl``'s finished runs (one row per run; ``seed``: only that seed's)."""
    return [r for r in read_rows(Path(work) / STANDALONE_FILE) if seed is None or r["seed"] == seed]


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def subnets_file(work: Path, job: Search, n: int) -> list[dict[str, Any]]:
    path = work / SUBNETS_FILE
    if path.is_file():
        chosen_for = json.loads(path.read_text())["experiment"]
        if chosen_for != job.exp["name"]:
            raise SystemExit(f"{path} holds sub-networks of experiment {chosen_for}, not {job.exp['name']}: "
                             "use another --work folder")
        subnets = load_subnets(work)
        if len(subnets) != n:
            log(f"{path} holds {len(subnets)} sub-networks (not --n {n}); using them as they are")
        return subnets
    subnets = choose_subnets(job.space, reference(job), n, seed=job.exp["seed"])
    atomic_write_text(path, json.dumps({"experiment": job.exp["name"], "space": job.space.name,
                                        "reference": job.exp["verify"]["reference"], "seed": job.exp["seed"],
                                        "subnets": subnets}, indent=1) + "\n")
    return subnets


# -- training ---------------------------------------------------------------------------------

def _ap(metrics: Mapping[str, Any] | None, task: str) -> float:
    value = ((metrics or {}).get(task) or {}).get("AP")
    return float(value) if value is not None and value >= 0 else 0.0


def train_seconds(out: Path) -> float:
    """The training loop's own time (data + step, from the logged per-iteration means)."""
    total, prev = 0.0, -1
    for r in read_metrics(out):
        if "time" in r and "iteration" in r:
            total += r["time"] * (r["iteration"] - prev)
            prev = r["iteration"]
    return total


def run_one(cfg: Mapping[str, Any], out: Path, keep_checkpoints: bool) -> dict[str, Any]:
    """Train ``cfg`` into ``out`` (from scratch: a leftover folder is removed); its results."""
    if out.exists():
        shutil.rmtree(out)
    start = time.time()
    metrics = train(cfg, out, progress=False)
    seconds = time.time() - start
    metrics = recipe_metrics(metrics or {})
    loop = train_seconds(out)
    inherited = out / START_WEIGHTS_FILE
    row = {"segm_AP": _ap(metrics, "segm"), "bbox_AP": _ap(metrics, "bbox"), "seconds": round(seconds, 1),
           "train_seconds": round(loop, 1), "s_per_iter": round(loop / cfg["SOLVER"]["MAX_ITER"], 4),
           "inherited": json.loads(inherited.read_text()).get("fraction") if inherited.is_file() else None}
    if not keep_checkpoints:
        for p in out.glob("*.pth"):
            p.unlink()
    return row


def _claim(work: Path, arch_id: str, seed: int, iters: int) -> bool:
    """Whether this process takes the run: not finished yet and not claimed by another live
    worker (``runs/ID-sSEED.claim`` holds its pid), so several workers share one work folder."""
    if (arch_id, seed, iters) in {(r["id"], r["seed"], r["iters"]) for r in load_standalone(work)}:
        return False
    claim = work / "runs" / f"{arch_id}-s{seed}.claim"
    claim.parent.mkdir(parents=True, exist_ok=True)
    if claim.is_file():
        try:
            os.kill(int(claim.read_text()), 0)
            return False  # its worker is alive
        except (ProcessLookupError, ValueError):
            claim.unlink()
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def standalone(args: argparse.Namespace) -> None:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    exp = experiment(args.experiment)
    job = search_job(exp, work)
    subnets = subnets_file(work, job, args.n)
    lo, hi = subnets[0]["mflops"], subnets[-1]["mflops"]
    log(f"{len(subnets)} sub-networks, {lo:.0f}..{hi:.0f} MFLOPs (parent: "
        f"{next((s['mflops'] for s in subnets if s.get('parent')), float('nan')):.0f}); {args.iters} iterations each")
    seed0 = exp["seed"]
    jobs = [(subnets[i], seed0) for i in spread_order(len(subnets))]
    again = set(spread_picks(len(subnets), args.seeds_spread))
    jobs += [(subnets[i], seed0 + 1) for i in spread_order(len(subnets)) if i in again]  # a prefix spans the range
    results = work / STANDALONE_FILE
    done = {(r["id"], r["seed"], r["iters"]) for r in load_standalone(work)}
    todo = [(s, seed) for s, seed in jobs if (s["id"], seed, args.iters) not in done]
    log(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in {results}; {len(todo)} to train")
    spent: list[tuple[float, float]] = []  # (mflops, seconds) of the runs of this process
    for k, (s, seed) in enumerate(todo, 1):
        if not _claim(work, s["id"], seed, args.iters):  # another worker (a second process) has it
            continue
        cfg = subnet_config(job, pinned(job.space, s["arch"]), args.iters, seed)
        row = run_one(cfg, work / "runs" / f"{s['id']}-s{seed}", args.keep_checkpoints)
        row = {"id": s["id"], "mflops": s["mflops"], "params": s["params"], **row, "iters": args.iters, "seed": seed,
               "parent": bool(s.get("parent"))}
        append_row(results, row)
        spent.append((s["mflops"], row["seconds"]))
        eta = _eta(spent, [t[0]["mflops"] for t in todo[k:]])
        log(f"{len(jobs) - len(todo) + k}/{len(jobs)} {s['id']} seed {seed}: {s['mflops']:.0f} MFLOPs, "
            f"segm AP {row['segm_AP']:.2f}, bbox AP {row['bbox_AP']:.2f}, {row['seconds']:.0f} s "
            f"({row['s_per_iter']:.2f} s/it); ETA {eta / 60:.0f} min")
    report_spread(work, exp["seed"], args.iters)


def _eta(spent: Sequence[tuple[float, float]], left: Sequence[float]) -> float:
    """Seconds left: a line (seconds vs MFLOPs) fitted to the runs so far, once two differ."""
    x, y = np.array([m for m, _ in spent]), np.array([s for _, s in spent])
    if len(spent) >= 2 and np.ptp(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        return float(sum(max(icpt + slope * m, 0.25 * y.min()) for m in left))
    return float(y.mean() * len(left))


def report_spread(work: Path, seed: int, iters: int) -> dict[str, Any] | None:
    """Seed ``seed`` vs ``seed + 1`` over the sub-networks run with both."""
    from scipy.stats import kendalltau

    rows = [r for r in load_standalone(work) if r["iters"] == iters]
    a = {r["id"]: r for r in rows if r["seed"] == seed}
    b = {r["id"]: r for r in rows if r["seed"] == seed + 1}
    ids = sorted((i for i in a if i in b), key=lambda i: a[i]["mflops"])
    if not ids:
        return None
    out: dict[str, Any] = {"seeds": [seed, seed + 1], "iters": iters, "n": len(ids), "ids": ids}
    for task in ("segm", "bbox"):
        x = np.array([a[i][f"{task}_AP"] for i in ids])
        y = np.array([b[i][f"{task}_AP"] for i in ids])
        tau = float(kendalltau(x, y).statistic) if len(ids) >= 2 else float("nan")
        tau = None if np.isnan(tau) else tau  # fewer than 2 runs, or constant APs
        out[task] = {"mean_abs_diff": float(np.abs(x - y).mean()), "max_abs_diff": float(np.abs(x - y).max()),
                     "kendall_tau": tau, f"seed{seed}": x.tolist(), f"seed{seed + 1}": y.tolist()}
    atomic_write_text(work / SEED_SPREAD_FILE, json.dumps(out, indent=1) + "\n")
    for task in ("segm", "bbox"):
        t = out[task]
        tau = "n/a" if t["kendall_tau"] is None else f"{t['kendall_tau']:.3f}"
        log(f"seed spread ({len(ids)} sub-networks, {task} AP): mean |diff| {t['mean_abs_diff']:.2f}, "
            f"max {t['max_abs_diff']:.2f}, Kendall tau {tau}")
    return out


# -- stage-1 cost -------------------------------------------------------------------------------

def stage1_trial(job: Search, arch: Mapping[str, Any], out: Path, weights: Path | None = None) -> dict[str, Any]:
    """One stage-1 trial as the search trains it: each successive-halving rung a train() call
    to the rung (evaluation and checkpoint there), the next continuing from that checkpoint.
    ``weights``: start from these (a supernet's, inherited onto ``arch``, as a search with
    ``stage1.fidelity supernet`` starts its trials) instead of the parent's."""
    cfg = job.trial_config(complete(job.space, arch, reference(job)), "stage1")
    if weights is not None:
        cfg["MODEL"]["WEIGHTS"], cfg["MODEL"]["WEIGHTS_ARCH"] = str(weights), ""
    es = job.exp["stage1"]["early_stop"]
    rungs = milestones(es["grace_period"], es["reduction_factor"], cfg["SOLVER"]["MAX_ITER"])
    if out.exists():
        shutil.rmtree(out)
    times, aps = [], []
    for k, stop in enumerate(rungs):
        start = time.time()
        metrics = recipe_metrics(train(cfg, out, resume=k > 0, progress=False, stop_at=stop) or {})
        times.append(time.time() - start)
        aps.append(_ap(metrics, "segm"))
    shutil.rmtree(out)
    return {"max_iter": cfg["SOLVER"]["MAX_ITER"], "eval_period": cfg["TEST"]["EVAL_PERIOD"], "rungs": rungs,
            "rung_seconds": [round(t, 1) for t in times], "seconds": round(sum(times), 1),
            "seconds_to_first_rung": round(times[0], 1), "segm_AP_at_rungs": aps}


def stage1_cost(args: argparse.Namespace) -> None:
    work = Path(args.work).resolve()
    exp = experiment(args.experiment)
    job = search_job(exp, work)
    if not (work / SUBNETS_FILE).is_file():
        raise SystemExit(f"{work / SUBNETS_FILE} does not exist: run the standalone phase first")
    subnets = load_subnets(work)
    picks = [subnets[i] for i in spread_picks(len(subnets), 3)]
    trials = []
    for s in picks:
        t = stage1_trial(job, s["arch"], work / "runs" / f"stage1-{s['id']}")
        trials.append({"id": s["id"], "mflops": s["mflops"], "params": s["params"], **t})
        log(f"stage-1 trial {s['id']} ({s['mflops']:.0f} MFLOPs): {t['seconds']:.0f} s "
            f"(rungs {t['rungs']}: {t['rung_seconds']} s)")
    mean = float(np.mean([t["seconds"] for t in trials]))
    first = float(np.mean([t["seconds_to_first_rung"] for t in trials]))
    out = {"threads": torch.get_num_threads(), "trials": trials, "mean_seconds_per_trial": round(mean, 1),
           "trials_per_cpu_hour": round(3600 / mean, 2),
           "mean_seconds_pruned_at_first_rung": round(first, 1),
           "note": "full trials (every rung); a trial pruned at the first rung costs mean_seconds_pruned_at_first_rung"}
    atomic_write_text(work / STAGE1_COST_FILE, json.dumps(out, indent=1) + "\n")
    log(f"stage 1: {mean:.0f} s per trial -> {3600 / mean:.1f} trials per CPU-hour (1 thread)")

    parent = next((s for s in subnets if s.get("parent")), None)
    if parent is None:
        raise SystemExit(f"{work / SUBNETS_FILE} holds no parent architecture")
    cfg = subnet_config(job, parent["arch"], args.iters, exp["seed"])
    row = run_one(cfg, work / "runs" / f"parent-cost-{parent['id']}", keep_checkpoints=False)
    shutil.rmtree(work / "runs" / f"parent-cost-{parent['id']}")
    out = {"id": parent["id"], "mflops": parent["mflops"], "params": parent["params"], "iters": args.iters,
           "threads": torch.get_num_threads(), **row,
           "note": "seconds: build + train + final evaluation; train_seconds / s_per_iter: the training loop only"}
    atomic_write_text(work / PARENT_COST_FILE, json.dumps(out, indent=1) + "\n")
    log(f"one parent fine-tuning ({args.iters} iterations): {row['seconds']:.0f} s, "
        f"{row['s_per_iter']:.3f} s per iteration (segm AP {row['segm_AP']:.2f})")


def trials(args: argparse.Namespace) -> None:
    """The fidelity the supernet replaces: every chosen sub-network measured by a stage-1
    trial through its rungs, as a search without a supernet measures a candidate (or, with
    ``--supernet``, started from that supernet's weights, as the supernet fidelity's recipe
    trials start), one row each in ``DIR/trials_NAME.jsonl`` (resumable), then
    ``DIR/fidelity_trial_NAME.json`` in zeroshot's row format, so that ``compare`` pairs its
    Kendall tau with a supernet's on the same sub-networks."""
    work = Path(args.work).resolve()
    job = search_job(experiment(args.experiment), work)
    subnets = load_subnets(work)
    weights = Path(args.supernet).resolve() / FINAL_WEIGHTS if args.supernet else None
    name = "stage1" + (f"_from_{Path(args.supernet).name}" if weights is not None else "")
    path = work / f"trials_{name}.jsonl"
    done = {r["id"] for r in read_rows(path)}
    for k, i in enumerate(spread_order(len(subnets)), 1):
        s = subnets[i]
        if s["id"] in done:
            continue
        t = stage1_trial(job, pinned(job.space, s["arch"]), work / "runs" / f"{name}-{s['id']}", weights)
        row = {"id": s["id"], "mflops": s["mflops"], "segm_AP": t["segm_AP_at_rungs"][-1], "seconds": t["seconds"]}
        append_row(path, row)
        log(f"{k}/{len(subnets)} {s['id']} ({s['mflops']:.0f} MFLOPs): stage-1 trial segm AP "
            f"{row['segm_AP']:.4f}, {row['seconds']:.0f} s")
    rows = read_rows(path)
    out = {"label": f"trial_{name}", "n": len(rows), "rows": rows,
           "seconds_median": float(np.median([r["seconds"] for r in rows]))}
    atomic_write_text(work / f"fidelity_trial_{name}.json", json.dumps(out, indent=1) + "\n")
    log(f"{len(rows)} {name} trials, median {out['seconds_median']:.0f} s; compare --labels trial_{name} ...")


def pinned(space: SearchSpace, arch: Mapping[str, Any]) -> dict[str, Any]:
    """``arch`` with the space's fixed parameters at their values. The chosen sub-networks were
    drawn from an earlier version of the space, which let the box head's later kernels be 5:
    on the 2x2 map of box.pooler 4 that computes what the pinned 3 does (identical training
    losses), so a sub-network's reference stands for its pinned architecture."""
    return {**arch, **{p.name: p.fixed for p in space.params if p.kind == "fixed" and p.name in arch}}


def zeroshot(args: argparse.Namespace) -> None:
    """Zero-shot AP of every chosen sub-network from a trained supernet (``--supernet DIR``,
    cached in its ``zero_shot.json``), against the standalone reference: Kendall tau, the
    zero-shot / standalone ratio, the parent's architecture, and the costs as ratios."""
    from scipy.stats import kendalltau, spearmanr

    from nars.supernet.zero_shot import Cache, Evaluator

    work, net_dir = Path(args.work).resolve(), Path(args.supernet).resolve()
    subnets = load_subnets(work)
    evaluator = Evaluator(net_dir)
    if args.calibration_images:
        evaluator.images = args.calibration_images  # a part of the cache key
    cache = Cache(net_dir)
    rows = []
    for k, s in enumerate(subnets):
        arch = pinned(evaluator.net.space, s["arch"])
        key = evaluator.key(arch)
        if key not in cache.entries:
            cache.put(key, evaluator.evaluate(arch))
        rec = cache.entries[key]
        # paired with the reference by the chosen sub-network's id, also where the supernet's
        # space pinned one of its parameters (then its id and MFLOPs are the pinned arch's)
        rows.append({**rec, "id": s["id"], "subnet_id": rec["id"], "parent": bool(s.get("parent"))})
        log(f"{k + 1}/{len(subnets)} {s['id']}: {rec['mflops']:.0f} MFLOPs, zero-shot segm AP {rec['segm_AP']:.4f}, "
            f"bbox AP {rec['bbox_AP']:.4f} ({rec['seconds']:.1f} s)")
    seed = evaluator.net.exp["seed"]
    reference = {r["id"]: r for r in load_standalone(work, seed=seed)}
    paired = [(r, reference[r["id"]]) for r in rows if r["id"] in reference]
    out: dict[str, Any] = {"supernet": str(net_dir), "label": args.label, "n": len(paired), "rows": rows,
                           "calibration_images": evaluator.images,
                           "reference_iters": sorted({ref["iters"] for _, ref in paired})}
    if len(paired) >= 3:
        for task in ("segm_AP", "bbox_AP"):
            z, s = [r[task] for r, _ in paired], [ref[task] for _, ref in paired]
            out[f"kendall_tau_{task}"] = float(kendalltau(z, s).statistic)
            out[f"spearman_{task}"] = float(spearmanr(z, s).statistic)
            # the free baseline a zero-shot ranking has to beat: MFLOPs alone
            out[f"kendall_tau_mflops_{task}"] = float(kendalltau([r["mflops"] for r, _ in paired], s).statistic)
        ratios = [r["segm_AP"] / ref["segm_AP"] for r, ref in paired if ref["segm_AP"] > 0]
        out["median_ratio_segm"] = float(np.median(ratios))
        out["median_zero_shot_segm"] = float(np.median([r["segm_AP"] for r, _ in paired]))
        out["median_standalone_segm"] = float(np.median([ref["segm_AP"] for _, ref in paired]))
    parent = next((r for r in rows if r["parent"]), None)
    supernet_seconds = train_seconds(net_dir)
    iters = evaluator.net.exp["supernet"]["max_iter"]
    cost = _read_json(work / PARENT_COST_FILE)  # the parent fine-tuned alone (stage1-cost --iters: the supernet's)
    if parent is not None and cost is not None:
        out["parent"] = {"zero_shot_segm_AP": parent["segm_AP"], "alone_segm_AP": cost["segm_AP"],
                         "alone_iters": cost["iters"], "difference": round(parent["segm_AP"] - cost["segm_AP"], 4)}
    stage1 = _read_json(work / STAGE1_COST_FILE)
    eval_seconds = float(np.median([r["seconds"] for r in rows]))
    out["cost"] = {"supernet_seconds": round(supernet_seconds, 1), "supernet_iters": iters,
                   "zero_shot_seconds_median": round(eval_seconds, 2),
                   "zero_shot_per_cpu_hour": round(3600 / eval_seconds, 1)}
    if cost is not None:
        out["cost"]["parent_s_per_iter"] = cost["s_per_iter"]
        out["cost"]["supernet_vs_parent_finetuning"] = round(supernet_seconds / (cost["s_per_iter"] * iters), 2)
    if stage1 is not None:
        out["cost"]["stage1_trials_per_cpu_hour"] = stage1["trials_per_cpu_hour"]
        out["cost"]["evaluations_vs_trials_per_cpu_hour"] = round(3600 / eval_seconds / stage1["trials_per_cpu_hour"], 1)
    atomic_write_text(work / f"fidelity_{args.label}.json", json.dumps(out, indent=1) + "\n")
    log(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def memory(args: argparse.Namespace) -> None:
    """The cost ratios in one run: a supernet training and one parent fine-tuning, each a fresh
    process of ``--iters`` iterations, alternated ``--repeats`` times (so load drifts hit both):
    peak resident memory (os.wait4's ru_maxrss of that child alone) and the training loop's
    seconds per iteration (its logged means, start-up and the final evaluation left out);
    medians over the repeats -> ``DIR/memory.json``."""
    work = Path(args.work).resolve()
    job = search_job(experiment(args.experiment), work)
    config = work / "mem_parent.yaml"
    parent = arch_part(job.space, reference(job))
    atomic_write_text(config, dump(subnet_config(job, parent, args.iters, job.exp["seed"])))
    nars = [sys.executable, "-m", "nars.cli"]
    folders = {"supernet": work / "mem_supernet", "parent_finetuning": work / "mem_parent"}
    runs = {
        "supernet": nars + ["supernet", "train", args.experiment, "--out", str(folders["supernet"]),
                            "supernet.max_iter", str(args.iters)],
        "parent_finetuning": nars + ["train", str(config), "--out", str(folders["parent_finetuning"])],
    }
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, cmd in runs.items():
            shutil.rmtree(folders[name], ignore_errors=True)
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)})")
            measured[name].append((usage.ru_maxrss / 1024, train_seconds(folders[name]) / args.iters))
            shutil.rmtree(folders[name])
            log(f"{repeat + 1}/{args.repeats} {name}: peak RSS {measured[name][-1][0]:.0f} MiB, "
                f"{measured[name][-1][1]:.2f} s/it")
    out: dict[str, Any] = {"iters": args.iters, "repeats": args.repeats, "threads": 1}
    for name, rows in measured.items():
        out[name] = {"peak_rss_mib": round(float(np.median([r for r, _ in rows])), 1),
                     "s_per_iter": round(float(np.median([t for _, t in rows])), 3),
                     "runs": [{"peak_rss_mib": round(r, 1), "s_per_iter": round(t, 3)} for r, t in rows]}
    out["memory_ratio"] = round(out["supernet"]["peak_rss_mib"] / out["parent_finetuning"]["peak_rss_mib"], 2)
    out["time_ratio"] = round(out["supernet"]["s_per_iter"] / out["parent_finetuning"]["s_per_iter"], 2)
    atomic_write_text(work / "memory.json", json.dumps(out, indent=1) + "\n")
    log(f"supernet / parent fine-tuning: memory {out['memory_ratio']}x, time per iteration {out['time_ratio']}x")


def sandwich_cost(args: argparse.Namespace) -> None:
    """Why a supernet step costs what it does: the members of the trainer's own first
    ``--sandwiches`` sandwiches (``SupernetTrainer.sandwich``), each trained alone on one batch
    with its extracted weights, its step's median seconds and MFLOPs against the parent's
    architecture's; and each sandwich's sum, averaged -> ``DIR/sandwich_cost.json``."""
    from nars.supernet.subnets import smallest
    from nars.supernet.setup import build
    from nars.supernet.train import SupernetTrainer

    work = Path(args.work).resolve()
    net = build(experiment(args.experiment), work / "sandwich_cost", progress=False)
    trainer = SupernetTrainer(net, work / "sandwich_cost", resume=False, progress=False)
    batch = [trainer.train_set[i] for i in range(trainer.cfg["SOLVER"]["IMS_PER_BATCH"])]
    images, targets = [b[0] for b in batch], [b[1] for b in batch]
    parent = arch_part(net.space, net.base)
    roles = {subnet_id(net.largest): "largest", subnet_id(smallest(net.space)): "smallest", subnet_id(parent): "parent"}
    drawn = [trainer.sandwich(it) for it in range(args.sandwiches)]
    sandwiches = [[subnet_id(a) for a in members] for members in drawn]
    archs = {subnet_id(a): a for members in drawn for a in members} | {subnet_id(parent): parent}  # the parent: the unit
    rows: dict[str, dict[str, Any]] = {}
    for key, arch in archs.items():
        child = trainer.supernet.extract(trainer.child(arch)).train()
        times = []
        for _ in range(args.repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            sum(child(images, targets).values()).backward()
            times.append(time.perf_counter() - start)
        rows[key] = {"role": roles.get(key, "random"), "mflops": float(net.space.cost(complete(net.space, arch, net.base))[0]),
                     "step_seconds": float(np.median(times[1:]))}
    base = rows[subnet_id(parent)]
    for row in rows.values():
        row["mflops_vs_parent"] = round(row["mflops"] / base["mflops"], 2)
        row["step_vs_parent"] = round(row["step_seconds"] / base["step_seconds"], 2)

    def mean_sum(key: str) -> float:
        return float(np.mean([sum(rows[m][key] for m in members) for members in sandwiches])) / base[key]

    out = {"members": rows, "sandwiches": sandwiches, "sandwich_mflops_vs_parent": round(mean_sum("mflops"), 2),
           "sandwich_step_vs_parent": round(mean_sum("step_seconds"), 2)}
    atomic_write_text(work / "sandwich_cost.json", json.dumps(out, indent=1) + "\n")
    shutil.rmtree(work / "sandwich_cost", ignore_errors=True)
    for key, row in sorted(rows.items(), key=lambda kv: -kv[1]["mflops"]):
        log(f"{row['role']} {key}: {row['mflops']:.0f} MFLOPs ({row['mflops_vs_parent']}x the parent's), "
            f"training step {row['step_seconds']:.2f} s ({row['step_vs_parent']}x)")
    log(f"a sandwich (mean of {len(sandwiches)}): {out['sandwich_mflops_vs_parent']}x the parent's MFLOPs, "
        f"{out['sandwich_step_vs_parent']}x its training step")


def _tau(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y).statistic)


def seed_aps(work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The standalone references' segm AP by sub-network id: seed 0's, seed 1's."""
    seed0, seed1 = ({r["id"]: r["segm_AP"] for r in load_standalone(work, seed=s)} for s in (0, 1))
    return seed0, seed1


def reference_aps(work: Path, which: str) -> dict[str, float]:
    """Each sub-network's reference segm AP: its seed-0 run (``seed0``), or the mean of its
    seed-0 and seed-1 runs where it has both (``mean``: half the noise variance)."""
    seed0, seed1 = seed_aps(work)
    if which == "seed0":
        return seed0
    return {i: (seed0[i] + seed1[i]) / 2 for i in seed0 if i in seed1}


def measured(work: Path, label: str) -> dict[str, float]:
    """A ranking to compare, by sub-network id: ``fidelity_LABEL.json``'s segm AP, or for the
    label ``mflops`` the free baseline, each sub-network's cost."""
    if label == "mflops":
        return {s["id"]: s["mflops"] for s in load_subnets(work)}
    return {r["id"]: r["segm_AP"] for r in json.loads((work / f"fidelity_{label}.json").read_text())["rows"]}


def compare(args: argparse.Namespace) -> None:
    """Kendall tau of each ``fidelity_LABEL.json`` against the reference (``--reference``) with a 95%
    bootstrap interval over the sub-networks, the paired differences between labels (the same
    resamples), and how well two seeds of the reference itself would agree: simulated from the
    seed spread the seed-1 reruns measured."""
    work = Path(args.work)
    ref = reference_aps(work, args.reference)
    runs = {label: measured(work, label) for label in args.labels}
    ids = sorted(set(ref).intersection(*runs.values()))
    rng = np.random.default_rng(args.seed)
    samples = [rng.integers(0, len(ids), len(ids)) for _ in range(args.resamples)]

    def taus(z: Mapping[str, float]) -> np.ndarray:
        return np.array([_tau([z[ids[i]] for i in idx], [ref[ids[i]] for i in idx]) for idx in samples])

    def interval(v: np.ndarray) -> list[float]:
        v = v[~np.isnan(v)]  # a resample of ties only
        return [round(float(q), 3) for q in np.percentile(v, [2.5, 97.5])]

    boot = {label: taus(z) for label, z in runs.items()}
    out: dict[str, Any] = {"n": len(ids), "reference": args.reference, "resamples": args.resamples, "tau": {},
                           "differences": {}}
    for label, z in runs.items():
        out["tau"][label] = {"tau": round(_tau([z[i] for i in ids], [ref[i] for i in ids]), 3),
                             "ci95": interval(boot[label])}
    for a, b in itertools.combinations(args.labels, 2):
        d = boot[a] - boot[b]
        out["differences"][f"{a} - {b}"] = {"ci95": interval(d), "p_greater": round(float(np.nanmean(d > 0)), 3)}
    seed0, seed1 = seed_aps(work)
    diffs = [seed0[i] - seed1[i] for i in seed1 if i in seed0]
    if diffs:
        # one run's noise: a difference holds two; a mean of two seeds, half its variance
        sd = float(np.sqrt(np.mean(np.square(diffs)) / 2 / (2 if args.reference == "mean" else 1)))
        v = np.array([ref[i] for i in ids])
        sim = np.array([_tau(v + rng.normal(0, sd, len(v)), v + rng.normal(0, sd, len(v))) for _ in range(args.resamples)])
        out["reference_repeatability"] = {"noise_sd": round(sd, 4), "tau_median": round(float(np.median(sim)), 3),
                                          "ci95": interval(sim)}
    stem = "compare" if args.reference == "seed0" else f"compare_{args.reference}"
    atomic_write_text(work / f"{stem}.json", json.dumps(out, indent=1) + "\n")
    plot_fidelity(work / f"{stem}.png", ids, ref, runs, out)
    log(json.dumps(out, indent=1))


def plot_fidelity(path: Path, ids: Sequence[str], ref: Mapping[str, float], runs: Mapping[str, Mapping[str, float]],
                  stats: Mapping[str, Any]) -> None:
    """One scatter per measurement (a supernet's zero-shot AP, a trial's AP) against the
    reference, coloured by MFLOPs: where a ranking goes wrong, and at what size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mflops = {s["id"]: s["mflops"] for s in load_subnets(path.parent)}
    fig, axes = plt.subplots(1, len(runs), figsize=(4.4 * len(runs), 4), dpi=120, squeeze=False)
    for ax, (label, z) in zip(axes[0], runs.items()):
        points = ax.scatter([z[i] for i in ids], [ref[i] for i in ids], c=[mflops[i] for i in ids], cmap="viridis")
        tau = stats["tau"][label]
        ax.set(title=f"{label}: tau {tau['tau']:.2f} [{tau['ci95'][0]:.2f}, {tau['ci95'][1]:.2f}]",
               xlabel="MFLOPs" if label == "mflops" else "measured segm AP", ylabel=f"reference segm AP ({stats['reference']})")
        ax.grid(alpha=0.3)
    fig.colorbar(points, ax=axes[0, -1], label="MFLOPs")
    atomic_save_png(path, fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=EXPERIMENT,
                        help=f"the experiment whose space, parent and data are measured (default {EXPERIMENT}); "
                             "one per --work folder")
    sub = parser.add_subparsers(dest="phase", required=True)
    p = sub.add_parser("standalone", help="fine-tune the chosen sub-networks standalone from the parent")
    p.add_argument("--work", required=True)
    p.add_argument("--n", type=int, default=24, help="how many sub-networks (default 24)")
    p.add_argument("--iters", type=int, default=320, help="iterations per fine-tuning (default 320)")
    p.add_argument("--seeds-spread", type=int, default=4, help="sub-networks trained again with seed 1 (default 4)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's model_final.pth")
    p.set_defaults(func=standalone)
    c = sub.add_parser("stage1-cost", help="time stage-1 trials and one parent fine-tuning")
    c.add_argument("--work", required=True)
    c.add_argument("--iters", type=int, default=320, help="iterations of the parent fine-tuning timed (default 320)")
    c.set_defaults(func=stage1_cost)
    t = sub.add_parser("trials", help="every chosen sub-network measured by a stage-1 trial "
                                      "(the fidelity the supernet replaces)")
    t.add_argument("--work", required=True)
    t.add_argument("--supernet", metavar="DIR", help="stage-1 trials from this trained supernet's weights "
                                                     "(results: trials_stage1_from_DIRNAME)")
    t.set_defaults(func=trials)
    z = sub.add_parser("zeroshot", help="a trained supernet's zero-shot APs of the chosen sub-networks against the "
                                        "standalone reference (tau, ratios, costs)")
    z.add_argument("--work", required=True)
    z.add_argument("--supernet", required=True, metavar="DIR", help="a folder of nars supernet train")
    z.add_argument("--label", default="kd", help="names the result file fidelity_LABEL.json (default kd)")
    z.add_argument("--calibration-images", type=int, default=0,
                   help="batch-norm recalibration images (default: the experiment's supernet.calibration_images)")
    z.set_defaults(func=zeroshot)
    k = sub.add_parser("compare", help="bootstrap intervals of the supernets' Kendall tau and their paired "
                                       "differences, and the reference's own repeatability")
    k.add_argument("--work", required=True)
    k.add_argument("--labels", nargs="+", required=True, help="fidelity_LABEL.json files to compare; "
                                                                  "mflops: the free baseline, ranking by cost")
    k.add_argument("--reference", choices=("seed0", "mean"), default="seed0",
                   help="the seed-0 fine-tunings (default), or the mean of seeds 0 and 1 where both ran")
    k.add_argument("--resamples", type=int, default=2000)
    k.add_argument("--seed", type=int, default=0)
    k.set_defaults(func=compare)
    m = sub.add_parser("memory", help="peak RSS and seconds per iteration of a supernet training and of one "
                                      "parent fine-tuning, alternated in one run")
    m.add_argument("--work", required=True)
    m.add_argument("--iters", type=int, default=8, help="iterations of each (default 8)")
    m.add_argument("--repeats", type=int, default=1, help="alternations of the two (default 1)")
    m.set_defaults(func=memory)
    w = sub.add_parser("sandwich-cost", help="each sandwich member's training step against the parent's")
    w.add_argument("--work", required=True)
    w.add_argument("--sandwiches", type=int, default=3, help="the trainer's first N sandwiches (default 3)")
    w.add_argument("--repeats", type=int, default=3, help="timed steps per member (default 3)")
    w.set_defaults(func=sandwich_cost)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    log(f"{' '.join(sys.argv)} (torch threads: {torch.get_num_threads()})")
    args.func(args)


if __name__ == "__main__":
    main()
