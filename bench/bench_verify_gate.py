"""Which candidates should verification train? The predictor's front against stage 1's best
measured candidates, on identical stage-1 results.

    .venv/bin/python bench/bench_verify_gate.py --work /work/bench_search/q23b --out /tmp/nars-verify-gate

``--work`` is a finished ``bench/bench_search.py`` folder. Each of its NARS-family runs
(methods NARS, local, recipe) is copied to ``--out``, its verification is cleared (the
verified trials, their folders, the gate) and the run is resumed with ``verify.min_tau``
(default 0.8): ``nars.search.stage1.predictor_gate`` then decides from the same stage-1
results, the same stage-2 front and the same seed what verification trains. Stage 1, the
reference and the recipe stage are not trained again, so the comparison is paired on
everything but the rule. A candidate both rules pick trains the same model (same seed, same
start); the script checks that its AP repeats, which is the measurement's determinism.

Printed: per run, each rule's picks and APs and the gate's out-of-fold tau; paired differences
(95% bootstrap CI over seeds, P(better)) of the best verified segm AP: new rule minus old rule,
NARS with the new rule minus random search (same ``--work``), and the ``recipe`` runs' winner
minus their tuned parent. Also the second verified model of each rule (paired over runs), and,
to tell a weak predictor from a hard ranking: the gate's out-of-fold tau on random subsets
(6, 12, 24) of every run's stage-1 results pooled (distinct candidates from all seeds and
methods, random search's uniform draws among them), against MFLOPs alone on the same subsets.
Everything lands in ``--out/results.json``. Resumable: a run whose verification finished is
read back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import printed_difference  # noqa: E402

from nars.fileio import atomic_write_text  # noqa: E402
from nars.search.driver import EXPERIMENT_FILE, Search, search  # noqa: E402
from nars.search.experiment import EXPERIMENT_DEFAULTS  # noqa: E402
from nars.search.fronts import tuned_parent  # noqa: E402
from nars.search.halving import kendall_tau  # noqa: E402
from nars.search.stage1 import METRIC, measured, predictor_gate  # noqa: E402
from nars.search.store import STORE_FILE, RunStore  # noqa: E402

SEARCHES = ("NARS", "local", "recipe")  # bench_search's methods that run nars.search.driver


def _verified(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
    store = RunStore(run / STORE_FILE, readonly=True)
    try:
        trials = store.trials()
        gate = store.get_meta("verify_gate")
    finally:
        store.close()
    verified = [{"id": t["candidate_id"], "mflops": t["mflops"], METRIC: (t["metrics"] or {}).get(METRIC)}
                for t in trials if t["stage"] == "verify"]
    tuned = tuned_parent(trials)
    return verified, gate, None if tuned is None else {"id": tuned["candidate_id"], METRIC: tuned["metrics"][METRIC]}


def _cleared_copy(source: Path, run: Path) -> None:
    """``source`` without its verification."""
    store = RunStore(source / STORE_FILE, readonly=True)
    try:
        gone = [t["id"] for t in store.trials() if t["stage"] in ("verify", "rescore")]
    finally:
        store.close()
    # the experiment file comes back from the store's copy when the run resumes
    dropped = {*gone, "ray", "wall.json", EXPERIMENT_FILE}
    shutil.copytree(source, run, ignore=lambda d, names: [n for n in names if n in dropped]
                    if Path(d).name == "trials" or Path(d) == source else [])
    db = sqlite3.connect(run / STORE_FILE)  # RunStore never deletes a trial: this surgery is the benchmark's own
    with contextlib.closing(db), db:
        db.execute("DELETE FROM trials WHERE stage IN ('verify', 'rescore')")
        db.execute("DELETE FROM meta WHERE key = 'verify_gate'")
        db.execute("UPDATE meta SET value = ? WHERE key = 'state'", (json.dumps("verify"),))


def set_verify(run: Path, **keys: Any) -> None:
    """The stored experiment with these ``verify`` keys, and today's defaults for the verify keys
    it predates (``rescore``: 0, as it ran); the run then resumes under them."""
    db = sqlite3.connect(run / STORE_FILE)
    with contextlib.closing(db), db:
        exp = json.loads(db.execute("SELECT value FROM meta WHERE key = 'experiment'").fetchone()[0])
        exp["verify"] = {**EXPERIMENT_DEFAULTS["verify"], **exp["verify"], **keys}
        db.execute("UPDATE meta SET value = ? WHERE key = 'experiment'", (json.dumps(exp),))
    (run / EXPERIMENT_FILE).unlink(missing_ok=True)


def pooled_tau(work: Path, sizes: tuple[int, ...] = (6, 12, 24), repeats: int = 5) -> dict[int, dict[str, float]]:
    """The gate's out-of-fold tau on random subsets of every run's stage-1 results pooled,
    against MFLOPs alone: median over ``repeats`` subsets per size."""
    results: dict[str, dict[str, Any]] = {}
    exp = None
    for db in sorted(work.glob(f"runs/*/seed*/{STORE_FILE}")):
        store = RunStore(db, readonly=True)
        try:
            exp = exp or store.get_meta("experiment")
            results.update({t["candidate_id"]: t for t in measured(store.trials(stage="stage1"))})
        finally:
            store.close()
    pool = list(results.values())
    job = Search(exp, work, progress=False, latency=False)  # its space and pretrained encoder, as the search's
    rng, out = np.random.default_rng(0), {}
    for n in sizes:
        taus, flops = [], []
        for _ in range(repeats):
            subset = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
            taus.append(predictor_gate(job.space, job.encoder, subset, exp["seed"], min_tau=-1.0)["tau"])
            flops.append(kendall_tau([(t["mflops"], t["metrics"][METRIC]) for t in subset]))
        out[n] = {"predictor": float(np.median(taus)), "mflops": float(np.median(flops))}
        print(f"pooled stage-1 results ({len(pool)} candidates), {n} at a time: out-of-fold tau "
              f"{out[n]['predictor']:+.2f}, MFLOPs alone {out[n]['mflops']:+.2f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a finished bench/bench_search.py folder")
    parser.add_argument("--out", required=True, help="where the re-verified copies go")
    parser.add_argument("--min-tau", type=float, default=0.8)
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    results = json.loads((work / "results.json").read_text())
    rows: list[dict[str, Any]] = []
    for source in sorted(work.glob("runs/*/seed*")):
        method, seed = source.parent.name, int(source.name.removeprefix("seed"))
        if method not in SEARCHES:
            continue
        run = out / "runs" / method / source.name
        if not (run / "done").is_file():
            if not run.is_dir():
                _cleared_copy(source, run)
            set_verify(run, min_tau=args.min_tau)
            search(None, [], resume=str(run), progress=False)
            atomic_write_text(run / "done", "re-verified\n")
        old, _, tuned = _verified(source)
        new, gate, _ = _verified(run)
        repeated = {v["id"]: (v[METRIC], w[METRIC]) for v in old for w in new if v["id"] == w["id"]}
        rows.append({"method": method, "seed": seed, "old": old, "new": new, "gate": gate, "tuned_parent": tuned,
                     "repeated": repeated, "old_best": max(v[METRIC] for v in old),
                     "new_best": max(v[METRIC] for v in new)})
        print(f"{method} seed {seed}: gate tau {gate['tau']} -> {'front' if gate['trusted'] else 'measured'}; "
              f"old {[(v['id'], round(v[METRIC], 4)) for v in old]} new {[(v['id'], round(v[METRIC], 4)) for v in new]}"
              f"; repeated {repeated}", flush=True)

    def of(method: str, key: str) -> dict[int, float]:
        return {r["seed"]: r[key] for r in rows if r["method"] == method}

    comparisons = [printed_difference(f"{m}: new rule minus old rule", of(m, "new_best"), of(m, "old_best"))
                   for m in sorted({r["method"] for r in rows})]
    random = {r["seed"]: r["best_verified_ap"] for r in results["rows"] if r["method"] == "random"}
    if random:
        comparisons.append(printed_difference("NARS (new rule) minus random", of("NARS", "new_best"), random))
    tuned = {r["seed"]: r["tuned_parent"][METRIC] for r in rows if r["method"] == "recipe" and r["tuned_parent"]}
    if tuned:
        comparisons.append(printed_difference("recipe (new rule) minus its tuned parent", of("recipe", "new_best"), tuned))
    comparisons.append(printed_difference("the second verified model, new rule minus old rule (over runs)",
                               {i: min(v[METRIC] for v in r["new"]) for i, r in enumerate(rows)},
                               {i: min(v[METRIC] for v in r["old"]) for i, r in enumerate(rows)}))
    pooled = pooled_tau(work)
    atomic_write_text(out / "results.json", json.dumps({"work": str(work), "min_tau": args.min_tau, "rows": rows,
                                                        "paired": comparisons, "pooled": pooled}, indent=1) + "\n")

if __name__ == "__main__":
    main()
