"""Do the searches' winners still win after a long retrain, on images no search saw?

    .venv/bin/python bench/bench_retrain.py --work /work/bench_search/retrain --iters 640 \\
        --model winner=winner:/work/bench_search/tp70/seed{seed} \\
        --model tuned=tuned_parent:/work/bench_search/tp70/seed{seed} \\
        --model reference=reference:/work/bench_search/tp70/seed{seed} \\
        --compare winner tuned --compare winner reference

Each ``--model LABEL=WHICH:RUN`` names one model per seed (``{seed}`` in RUN is replaced by
each of ``--seeds``): ``winner`` is what ``nars export --best`` picks
(``nars.search.export.pick``), ``tuned_parent`` the run's tuned parent
(``nars.search.fronts.tuned_parent``), ``reference`` its reference. Each is trained again from
the run's parent for ``--iters`` iterations, all of them alike, with its own recipe's schedule
stretched to fit (``Search.trial_config`` at ``verify.max_iter ITERS``, as the search stretches it
for its reference) and the run's seed, one thread, ``--jobs`` at a time. A ``bench_search.py`` work folder's
baselines work too (``random=winner:WORK/runs/random/seed{seed}``: its verified best). It is then evaluated on a **test split**:
``--test-images`` new images generated like the runs' dataset with another seed, which no
search (and no parent) saw. For the coins (``coins_finetune``) they are new composites of the
validation coins: coin faces no training image shows, in layouts no search evaluated.

Models of one seed pair up: same data order, same test images. For each ``--compare A B``:
A minus B in test segm AP over seeds (mean, 95% bootstrap interval, P(A better)), and per seed
the per-image paired difference on the test images (``nars.search.paired.paired_images``).
Written to ``WORK/results.json``; resumable (a model with its ``result.json`` is read back).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import paired_difference  # noqa: E402

from nars.data.coins import generate_coins  # noqa: E402
from nars.data.shapes import generate_shapes  # noqa: E402
from nars.fileio import atomic_write_text  # noqa: E402
from nars.search.driver import EXPERIMENT_FILE, Search  # noqa: E402
from nars.search.experiment import load_experiment  # noqa: E402
from nars.search.export import pick  # noqa: E402
from nars.search.fronts import tuned_parent  # noqa: E402
from nars.search.paired import paired_images, per_image  # noqa: E402
from nars.search.stage1 import METRIC  # noqa: E402
from nars.search.store import STORE_FILE, RunStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEST_SEED = 1_000_003  # the test split's generator seed: no run's dataset uses it
RESULT = "result.json"


def chosen_trial(run: Path, which: str) -> dict[str, Any]:
    """The run's trial that ``which`` names."""
    store = RunStore(run / STORE_FILE, readonly=True)  # not read_trials: a bench_search baseline's store has no experiment
    try:
        trials = store.trials()
    finally:
        store.close()
    if which == "winner":
        return pick(trials, None, None)
    trial = tuned_parent(trials) if which == "tuned_parent" else next(t for t in trials if t["stage"] == "reference")
    if trial is None:
        raise SystemExit(f"{run}: no {which} (a run without a recipe stage has no tuned parent)")
    return trial


def run_experiment(run: Path, seed: int) -> dict[str, Any]:
    """The experiment a run trained with: a search's stored copy, or for one of
    ``bench_search.py``'s baselines (``WORK/runs/METHOD/seedS``, no copy of its own) the
    benchmark's experiment with its overrides and the seed (``WORK/results.json``)."""
    if (run / EXPERIMENT_FILE).is_file():
        return json.loads((run / EXPERIMENT_FILE).read_text())
    bench = json.loads((run.parents[2] / "results.json").read_text())
    return load_experiment(bench["experiment"], [*bench["overrides"], "seed", str(seed)])


def test_split(exp: dict[str, Any], work: Path, images: int) -> tuple[Path, Path]:
    """The test images: the runs' generated dataset (``dataset.shapes``, or COCO files that
    ``nars data coins`` wrote: their ``info.params``) made again with ``TEST_SEED``."""
    shapes = exp["dataset"]["shapes"]
    if shapes["out"]:
        out = work / f"test_{shapes['domain']}_{shapes['size']}px_{images}"
        generate_shapes(out, train=1, val=images, size=shapes["size"], seed=TEST_SEED, domain=shapes["domain"],
                        progress=False)
        return out / "val.json", out / "val"
    val = Path(exp.get("workdir", REPO)) / exp["dataset"]["val"]["json"]
    params = json.loads(val.read_text()).get("info", {}).get("params", {})
    if params.get("generator") != "nars.data.coins":
        raise SystemExit(f"{val}: not a generated dataset (shapes or nars data coins): no test split to draw")
    out = work / f"test_coins_{params['size']}px_{images}"
    generate_coins(out, train=1, val=images, size=params["size"], seed=TEST_SEED, progress=False)
    return out / "val.json", out / "val"


def retrain(label: str, which: str, run: Path, seed: int, iters: int, test: tuple[Path, Path], out: Path) -> dict[str, Any]:
    """One model trained ``iters`` iterations and scored on the test split (one thread)."""
    import torch

    from nars.engine.trainer import train

    torch.set_num_threads(1)
    result_file = out / RESULT
    if result_file.is_file():
        return json.loads(result_file.read_text())
    shutil.rmtree(out, ignore_errors=True)  # a half-trained model starts over
    trial = chosen_trial(run, which)
    exp = run_experiment(run, seed)
    exp["verify"]["max_iter"] = iters
    if not Path(exp.get("workdir", ".")).is_dir():  # the run's clone is gone: its parent is this repo's, same bytes
        exp["workdir"] = str(REPO)
    job = Search(copy.deepcopy(exp), run, progress=False, latency=False)
    # every model gets the same ITERS (the reference's rule: a recipe's own MAX_ITER, 400 in
    # fbnetv3is_finetune, would cap a candidate below it), each with its schedule stretched to fit
    cfg = job.trial_config(trial["candidate"], "reference")
    cfg["DATASETS"]["TEST"] = {"JSON": str(test[0]), "IMAGES": str(test[1])}
    metrics = train(cfg, out, progress=False)
    result = {"label": label, "which": which, "seed": seed, "run": str(run), "trial": trial["id"],
              "candidate": trial["candidate_id"], "mflops": trial["mflops"],
              "search_segm_AP": trial["metrics"].get(METRIC), "iters": cfg["SOLVER"]["MAX_ITER"],
              "test_segm_AP": metrics["segm"]["AP"], "test_bbox_AP": metrics["bbox"]["AP"]}
    atomic_write_text(result_file, json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=WHICH:RUN",
                        help="WHICH is winner, tuned_parent or reference; {seed} in RUN takes each seed")
    parser.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=640)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    work = args.work.resolve()
    models = []
    for spec in args.model:
        label, _, rest = spec.partition("=")
        which, _, pattern = rest.partition(":")
        if which not in ("winner", "tuned_parent", "reference") or not pattern:
            raise SystemExit(f"--model {spec!r}: expected LABEL=WHICH:RUN with WHICH winner, tuned_parent or reference")
        models += [(label, which, Path(pattern.format(seed=s)), s) for s in args.seeds]
    test = test_split(run_experiment(models[0][2], models[0][3]), work, args.test_images)
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(retrain, label, which, run, s, args.iters, test, work / label / f"seed{s}")
                for label, which, run, s in models]
        rows = []
        for job in jobs:
            rows.append(job.result())
            r = rows[-1]
            print(f"{r['label']} seed {r['seed']}: {r['candidate']} ({r['mflops']:.0f} MFLOPs), search segm AP "
                  f"{r['search_segm_AP']:.4f}; {r['iters']} iterations: test segm AP {r['test_segm_AP']:.4f}", flush=True)
    ap = {label: {r["seed"]: r["test_segm_AP"] for r in rows if r["label"] == label} for label, *_ in models}
    comparisons = []
    for a, b in args.compare:
        d = paired_difference(ap[a], ap[b])
        images = {s: paired_images(per_image(work / a / f"seed{s}"), per_image(work / b / f"seed{s}"))
                  for s in args.seeds}
        comparisons.append({"a": a, "b": b, **d, "per_image": images})
        print(f"{a} minus {b}: {d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}] over {d['seeds']} seeds, "
              f"P({a} better) {d['p_improvement']:.2f}")
        for s, p in images.items():
            if p:
                print(f"  seed {s}, per test image: {p['mean']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}], "
                      f"Wilcoxon p {p['p']:.3f}, better on {p['better']}, worse on {p['worse']} of {p['images']}")
    atomic_write_text(work / "results.json", json.dumps({"iters": args.iters, "test_images": args.test_images,
                                                         "rows": rows, "paired": comparisons}, indent=1) + "\n")


if __name__ == "__main__":
    main()
