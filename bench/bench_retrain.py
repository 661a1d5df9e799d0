"""Does a search's winner still win with a long budget? Retrain it and the run's reference.

    .venv/bin/python bench/bench_retrain.py RUN {winner,reference} OUT [--iters 400]

``winner`` is what ``nars export RUN --best`` picks (the best verified segm AP), ``reference``
the run's reference trial. Each is trained for ``--iters`` iterations with its recipe's own
schedule (``Search.trial_config`` at ``verify.max_iter ITERS``: the schedule stretched as the
search stretches it), from the run's parent when it has one, one thread. Run the two side by
side; prints one JSON line with both budgets' APs.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from nars.engine.trainer import train
from nars.search.driver import EXPERIMENT_FILE, Search
from nars.search.export import pick
from nars.search.store import STORE_FILE, RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("which", choices=("winner", "reference"))
    parser.add_argument("out", type=Path, help="a new folder for the training")
    parser.add_argument("--iters", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = RunStore(args.run / STORE_FILE)
    trials = store.trials()
    store.close()
    if args.which == "winner":
        trial = pick(trials, None, None)
    else:
        trial = next(t for t in trials if t["stage"] == "reference")
    exp = json.loads((args.run / EXPERIMENT_FILE).read_text())
    exp["verify"]["max_iter"] = args.iters
    job = Search(copy.deepcopy(exp), args.out.parent, progress=False)
    cfg = job.trial_config(trial["candidate"], "verify" if args.which == "winner" else "reference")
    metrics = train(cfg, args.out, progress=False)
    print(json.dumps({"which": args.which, "trial": trial["id"], "mflops": trial["mflops"],
                      "search_segm_AP": trial["metrics"].get("segm_AP"), "iters": cfg["SOLVER"]["MAX_ITER"],
                      "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"]}))


if __name__ == "__main__":
    main()
