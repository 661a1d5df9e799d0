"""Does the search's winner beat the tuned parent? Issue 23's target: at least as good at
<= 70% of its MFLOPs (median of seeds), or better at equal MFLOPs.

    .venv/bin/python bench/bench_tuned_parent.py --work /tmp/nars-tuned-parent \\
        --seeds 0 1 2 -- constraints.max_mflops 862

Per seed S, one ``nars search EXPERIMENT`` (default ``quickstart``, the main job) with a recipe
stage (``recipe.trials 3``), ``seed S`` and the overrides after ``--``, into
``WORK/seedS``. Each run trains the reference (the parent's architecture with the base
recipe) and three local recipe moves on it, all at the verify budget: the best of those is
the **tuned parent** (``nars.search.fronts.tuned_parent``), the baseline a user gets by
tuning the recipe alone. The search's winner is what ``nars export --best`` takes
(``nars.search.export.pick``). Both train with seed S on the same data order and validation
images, so they pair per seed.

Printed and written to ``WORK/results.json``: per seed the winner, its MFLOPs as a share of
the parent's, its segm AP, the tuned parent's and the reference's; the paired differences
(winner minus tuned parent, winner minus reference) with 95% bootstrap intervals over seeds
and P(winner better). Resumable: a finished seed is read back, an unfinished one is resumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import paired_difference  # noqa: E402

from nars.fileio import atomic_write_text  # noqa: E402
from nars.search.driver import search  # noqa: E402
from nars.search.experiment import resolve_experiment_path  # noqa: E402
from nars.search.export import pick  # noqa: E402
from nars.search.fronts import tuned_parent  # noqa: E402
from nars.search.stage1 import METRIC  # noqa: E402
from nars.search.store import STORE_FILE, read_trials  # noqa: E402


def summarize(run: Path, seed: int) -> dict[str, Any]:
    trials = read_trials(run)
    winner = pick(trials, None, None)
    tuned = tuned_parent(trials)
    reference = next(t for t in trials if t["stage"] == "reference")
    return {"seed": seed, "winner": winner["candidate_id"], "winner_mflops": winner["mflops"],
            "mflops_share": winner["mflops"] / reference["mflops"], "winner_ap": winner["metrics"][METRIC],
            "tuned_parent": tuned["candidate_id"], "tuned_parent_ap": tuned["metrics"][METRIC],
            "reference_ap": reference["metrics"][METRIC]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--experiment", default="quickstart", help="a name or path (default: the main job's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", help="KEY VALUE pairs every run takes (after --)")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    source = str(resolve_experiment_path(args.experiment))
    rows = []
    for seed in args.seeds:
        run = work / f"seed{seed}"
        if not (run / "wall.json").is_file():
            t0 = time.time()
            if (run / STORE_FILE).is_file():
                search(None, [], resume=str(run), progress=False)
            else:
                search(source, [*args.overrides, "recipe.trials", "3", "seed", str(seed)], out=str(run), progress=False)
            atomic_write_text(run / "wall.json", json.dumps({"wall_s": time.time() - t0}) + "\n")
        rows.append(summarize(run, seed))
        r = rows[-1]
        print(f"seed {seed}: winner {r['winner']} at {r['mflops_share']:.0%} of the parent's MFLOPs, segm AP "
              f"{r['winner_ap']:.4f}; tuned parent {r['tuned_parent_ap']:.4f}; reference {r['reference_ap']:.4f}",
              flush=True)

    def against(key: str) -> dict[str, Any]:
        d = paired_difference({r["seed"]: r["winner_ap"] for r in rows}, {r["seed"]: r[key] for r in rows})
        print(f"winner minus {key.removesuffix('_ap').replace('_', ' ')}: {d['mean']:+.4f} "
              f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] over {d['seeds']} seeds, P(winner better) {d['p_improvement']:.2f}")
        return d

    comparisons = [against("tuned_parent_ap"), against("reference_ap")]
    median_share = statistics.median(r["mflops_share"] for r in rows)
    print(f"median MFLOPs share {median_share:.0%}; median winner minus tuned parent "
          f"{statistics.median(r['winner_ap'] - r['tuned_parent_ap'] for r in rows):+.4f}")
    atomic_write_text(work / "results.json", json.dumps({"experiment": source, "overrides": args.overrides,
                                                         "rows": rows, "paired": comparisons}, indent=1) + "\n")


if __name__ == "__main__":
    main()
