"""Does re-scoring the finalists with more seeds (``verify.rescore``) pick a better winner than
one verification seed?

    .venv/bin/python bench/bench_rescore.py --work /work/bench_search/coins50 --out /tmp/nars-rescore --rescore 2 --holdout 3

``--work`` is a finished ``bench/bench_search.py`` folder. Each of its NARS runs is copied to
``--out`` and resumed with ``verify.rescore`` = ``--rescore`` + ``--holdout``: every finalist
(the verified candidates, the reference) trains again at the verify budget with the run's seed
+ 1, + 2, ... Stage 1, stage 2 and verification are the stored ones, so both rules choose among
the same finalists:

- **one seed** (``verify.rescore 0``): the verified candidate with the best AP at the run's seed;
- **re-scored** (``verify.rescore R``): the best mean over the run's seed and the next R.

The last ``--holdout`` seeds are neither rule's: their mean is each finalist's held-out score,
what its fine-tuning gives on another data order and start. Printed, per run, both picks and
their held-out scores; over runs (95% bootstrap CI, P(better)): re-scored pick minus one-seed
pick, and each pick minus the reference, on held-out seeds. Both rules pick on the same
validation images, which the held-out seeds reuse: the seeds are held out, the images are not.
``--out/results.json`` keeps everything. Resumable: a run whose re-scoring finished is read back.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import printed_difference  # noqa: E402
from bench_verify_gate import set_verify  # noqa: E402

from nars.fileio import atomic_write_text  # noqa: E402
from nars.search.driver import EXPERIMENT_FILE, search  # noqa: E402
from nars.search.fronts import seed_offset  # noqa: E402
from nars.search.stage1 import METRIC  # noqa: E402
from nars.search.store import STORE_FILE, RunStore  # noqa: E402


def finalist_seeds(run: Path) -> tuple[dict[str, dict[int, float]], list[str], str | None]:
    """Each finalist's segm AP per seed offset, the verified candidates' ids and the reference's."""
    store = RunStore(run / STORE_FILE, readonly=True)
    try:
        trials = [t for t in store.trials() if t["status"] == "done" and METRIC in (t["metrics"] or {})]
    finally:
        store.close()
    aps: dict[str, dict[int, float]] = {}
    for t in trials:
        if t["stage"] in ("verify", "reference", "rescore"):
            aps.setdefault(t["candidate_id"], {})[seed_offset(t)] = t["metrics"][METRIC]
    verified = sorted({t["candidate_id"] for t in trials if t["stage"] == "verify"})
    reference = next((t["candidate_id"] for t in trials if t["stage"] == "reference"), None)
    return aps, verified, reference


def picks(aps: dict[str, dict[int, float]], verified: list[str], rescore: int, holdout: int) -> dict[str, Any]:
    """Each rule's pick among the verified candidates and every finalist's held-out mean."""
    def mean(cid: str, offsets: range) -> float:
        return float(np.mean([aps[cid][j] for j in offsets]))

    one = max(verified, key=lambda c: aps[c][0])
    rescored = max(verified, key=lambda c: mean(c, range(rescore + 1)))
    held = {cid: mean(cid, range(rescore + 1, rescore + holdout + 1)) for cid in aps}
    return {"one_seed": one, "rescored": rescored, "held_out": held}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a finished bench/bench_search.py folder")
    parser.add_argument("--out", required=True, help="where the re-scored copies go")
    parser.add_argument("--rescore", type=int, default=2, help="the re-scored rule's extra seeds")
    parser.add_argument("--holdout", type=int, default=3, help="seeds after those, neither rule's: the held-out score")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    rows: list[dict[str, Any]] = []
    finished = [p.parent for p in work.glob("runs/NARS/seed*/wall.json")]  # bench_search's mark of a finished run
    for source in sorted(finished, key=lambda p: int(p.name.removeprefix("seed"))):
        seed, run = int(source.name.removeprefix("seed")), out / "runs" / "NARS" / source.name
        if not (run / "done").is_file():
            shutil.rmtree(run, ignore_errors=True)  # an interrupted copy starts over
            # the experiment file comes back from the store's copy when the run resumes
            dropped = ("ray", "wall.json", EXPERIMENT_FILE)
            shutil.copytree(source, run, ignore=lambda d, names: [n for n in names if n in dropped]
                            if Path(d) == source else [])
            set_verify(run, rescore=args.rescore + args.holdout)
            search(None, [], resume=str(run), progress=False)
            atomic_write_text(run / "done", "re-scored\n")
        aps, verified, reference = finalist_seeds(run)
        row = {"seed": seed, "aps": aps, "reference": reference, **picks(aps, verified, args.rescore, args.holdout)}
        rows.append(row)
        held = row["held_out"]
        print(f"seed {seed}: one seed picks {row['one_seed']} (held out {held[row['one_seed']]:.4f}), re-scored picks "
              f"{row['rescored']} (held out {held[row['rescored']]:.4f}); reference held out "
              f"{held[reference]:.4f}", flush=True)

    def held(rule: str) -> dict[int, float]:
        return {r["seed"]: r["held_out"][r[rule]] for r in rows}

    reference = {r["seed"]: r["held_out"][r["reference"]] for r in rows}
    comparisons = [printed_difference("held out: re-scored pick minus one-seed pick", held("rescored"), held("one_seed")),
                   printed_difference("held out: one-seed pick minus the reference", held("one_seed"), reference),
                   printed_difference("held out: re-scored pick minus the reference", held("rescored"), reference)]
    print(f"the rules picked differently on {sum(r['one_seed'] != r['rescored'] for r in rows)} of {len(rows)} runs")
    atomic_write_text(out / "results.json", json.dumps({"work": str(work), "rescore": args.rescore, "holdout": args.holdout,
                                                        "rows": rows, "paired": comparisons}, indent=1) + "\n")


if __name__ == "__main__":
    main()
