"""Experiment files: what ``nars search`` runs (dataset, space, constraints, stages, Ray).

Validated by the same schema machinery as configs: an unknown key names the closest valid
one; ``KEY VALUE`` overrides use dotted lower-case keys (``stage1.rounds 2``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from nars.deploy import ENGINES as LATENCY_ENGINES
from nars.errors import UserError
from nars.schema import Schema, resolve_file

EXPERIMENT_DIR = Path(__file__).resolve().parents[2] / "experiments"
DEFAULT_EXPERIMENT = "quickstart"
NONE_FLOAT = (float, type(None))
OBJECTIVES = ("mflops", "latency")
FIDELITIES = ("trials", "supernet")

EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "name": "nars",
    # Either shapes (generated when absent) or train + val COCO-format files.
    "dataset": {
        "shapes": {"out": "", "train": 300, "val": 50, "size": 128, "seed": 0, "domain": "shapes"},
        "train": {"json": "", "images": ""},
        "val": {"json": "", "images": ""},
    },
    # The checkpoint every candidate starts from (weight inheritance, nars.model.inherit): a
    # path, a NARS run folder (trial or export), or a named checkpoint; "" trains from scratch.
    # arch: the checkpoint's MODEL.FBNET_V2.ARCH when the file does not record it. config: a
    # config that trains the parent into the folder `weights` names when it holds no
    # checkpoint yet (once: it is kept), on generated shapes when shapes.out is set.
    "parent": {
        "weights": "",
        "arch": "",
        "config": "",
        "shapes": {"out": "", "train": 300, "val": 50, "size": 128, "seed": 0, "domain": "shapes"},
    },
    "space": "fbnetv3is_quick",
    "base_config": "search_shapes",  # the FBNetV3IS config that candidates override
    "config": {},  # dotted FBNetV3IS config keys pinned for every trial (over base_config and the candidate)
    # max_latency_ms: the predicted inference latency on this machine's CPU (the search first
    # measures latency.samples candidates to fit the predictor: predictor.latency)
    "constraints": {"max_mflops": None, "max_params": None, "max_latency_ms": None},
    # the recipe stage (optional; 0: none): before stage 1, this many other recipes (the
    # reference's with one or two recipe parameters moved one step) on the reference's
    # architecture, each trained like the reference; the best of them and the reference is the
    # tuned parent, stage 1's first incumbent
    "recipe": {"trials": 0},
    "stage1": {
        "rounds": 2,
        "trials_per_round": 4,
        "max_iter": 200,
        "eval_period": 50,
        "pool_size": 4096,
        "explore": 0.25,
        # the share of each round that is local search around the incumbent (the reference in
        # round 0, then stage 1's best measured candidate): one or two parameters moved one step
        "local": 0.33,
        # synchronous successive halving (nars.search.halving): rungs at grace_period * rf**k; a
        # rung decides only once earlier rounds' trials showed its Kendall tau against stage 1's
        # end is at least min_tau (null: every rung decides, unchecked). wilcoxon_p: a deciding
        # rung also compares its trials with its leader image by image, and stops one outside the
        # best 1/rf only when it is worse there at Wilcoxon p below this (null: ranked by AP only)
        "early_stop": {"grace_period": 50, "reduction_factor": 2, "min_tau": 0.8, "wilcoxon_p": None},
        "pretrain_samples": 2048,
        # earlier run folders on the same space, setup and dataset whose measured trials feed the
        # predictor from round 0 (nars.search.warm_start); relative to the folder the search starts in
        "warm_start": [],
        # what stage 1 measures: "trials" (each candidate fine-tuned as a Ray trial) or "supernet"
        # (the supernet below is trained first; hundreds of its sub-networks are measured zero-shot
        # and the predictor is pretrained on them; the trials then search the recipe from the
        # supernet's weights)
        "fidelity": "trials",
    },
    # the weight-sharing supernet (nars supernet train; nars.supernet): sandwich steps, the random
    # sub-networks per step besides the largest and the smallest (k), whether the reference's own
    # architecture (the parent's) is trained every step too (anchor), the in-place distillation
    # weight (0: ground truth only; BENCHMARKS.md "Supernet": anchor on and distillation off
    # ranked sub-networks best), iterations between channel re-sorts, checkpoints; zero-shot
    # evaluation: batch-norm recalibration images and, for stage1.fidelity supernet, the number
    # of sub-networks measured, in rounds (1: all at random; more: random first, then each
    # round the predictor's picks from what the earlier ones measured; 4 raised the mean of the
    # best 4 by +0.004 [+0.002, +0.006] over 10 paired seeds, BENCHMARKS.md)
    "supernet": {"max_iter": 400, "k": 2, "anchor": True, "distill": 0.0, "sort_period": 100, "checkpoint_period": 50,
                 "calibration_images": 32, "samples": 128, "rounds": 4},
    # objective: the cost the predicted front trades segm AP against (mflops or latency);
    # optimizer: nsga2 (numpy NSGA-II, nars.search.evolution) or a nevergrad name (DE, TwoPointsDE...)
    "stage2": {"optimizer": "nsga2", "budget": 20000, "batch_size": 1024, "use_params": False, "objective": "mflops"},
    # the latency predictor (when constraints.max_latency_ms is set or stage2.objective is
    # latency): candidates measured per search (added to the machine's cache), threads timed with,
    # engine timed: torch (nars predict's path), onnxruntime (the nars deploy graph) or
    # onnxruntime-int8 (that graph quantized, nars deploy --int8)
    "latency": {"samples": 24, "threads": 2, "engine": "torch"},
    # rescore: extra seeds (the run's seed + 1, + 2, ...) each verified candidate, the reference and
    # the tuned parent train with before the winner is chosen by its mean segm AP over seeds;
    # min_tau: the predictor's front is verified only when its out-of-fold Kendall tau on stage
    # 1's results is at least this (null: always), else stage 1's best measured candidates are
    "verify": {"top_k": 2, "max_iter": 600, "reference": "FBNetV3_A_dsmask", "rescore": 0, "min_tau": 0.8},
    "ray": {
        "address": "",
        "num_cpus": 2,
        "cpus_per_trial": 1,
        "gpus_per_trial": 0.0,
        "max_concurrent": 2,
        # trial checkpoints: a folder every node mounts at the same path, or a URI (s3://...); "" = RUN/ray
        "storage_path": "",
        "max_failures": 2,  # retries of a trial whose worker or node died (a trial that raises is not retried)
    },
    "seed": 0,
}

EXPERIMENT_SCHEMA = Schema(
    EXPERIMENT_DEFAULTS,
    {"constraints.max_mflops": NONE_FLOAT, "constraints.max_params": NONE_FLOAT,
     "constraints.max_latency_ms": NONE_FLOAT, "stage1.early_stop.min_tau": NONE_FLOAT,
     "stage1.early_stop.wilcoxon_p": NONE_FLOAT, "verify.min_tau": NONE_FLOAT, "config": (dict,)},
    kind="experiment",
)


def resolve_experiment_path(name_or_path: str | Path | None) -> Path:
    """A path, or the name of a file in ``experiments/`` (default: quickstart)."""
    return resolve_file(name_or_path or DEFAULT_EXPERIMENT, EXPERIMENT_DIR, "experiment")


def load_experiment(name_or_path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, the experiment file, then overrides; checks the combination makes sense."""
    path = resolve_experiment_path(name_or_path)
    exp = EXPERIMENT_SCHEMA.load(path, overrides)
    exp["source"] = str(path)
    data = exp["dataset"]
    has_files = bool(data["train"]["json"] or data["val"]["json"])
    if has_files == bool(data["shapes"]["out"]):
        raise UserError(f"{path}: dataset needs either shapes.out (generated data) or train and val files, not both")
    if has_files and not all(data[s][k] for s in ("train", "val") for k in ("json", "images")):
        raise UserError(f"{path}: dataset.train and dataset.val each need json and images")
    for key, minimum in (("recipe.trials", 0), ("verify.rescore", 0), ("stage1.rounds", 1), ("stage1.trials_per_round", 1), ("stage1.max_iter", 1),
                         ("verify.top_k", 1), ("verify.max_iter", 1), ("ray.max_concurrent", 1), ("ray.max_failures", 0)):
        section, name = key.split(".")
        if exp[section][name] < minimum:
            raise UserError(f"{path}: {key} must be >= {minimum}, got {exp[section][name]}")
    latency = exp["constraints"]["max_latency_ms"]
    if latency is not None and not latency > 0:
        raise UserError(f"{path}: constraints.max_latency_ms must be > 0 (milliseconds), got {latency}")
    if exp["stage2"]["objective"] not in OBJECTIVES:
        raise UserError(f"{path}: stage2.objective must be one of {', '.join(OBJECTIVES)}, "
                        f"got {exp['stage2']['objective']!r}")
    if exp["latency"]["engine"] not in LATENCY_ENGINES:
        raise UserError(f"{path}: latency.engine must be one of {', '.join(LATENCY_ENGINES)}, "
                        f"got {exp['latency']['engine']!r}")
    for key, minimum in (("latency.samples", 4), ("latency.threads", 1)):
        section, name = key.split(".")
        if exp[section][name] < minimum:
            raise UserError(f"{path}: {key} must be >= {minimum}, got {exp[section][name]}")
    for key in ("explore", "local"):
        if not 0.0 <= exp["stage1"][key] <= 1.0:
            raise UserError(f"{path}: stage1.{key} must be in [0, 1], got {exp['stage1'][key]}")
    warm = exp["stage1"]["warm_start"]
    if not all(isinstance(run, str) and run for run in warm):
        raise UserError(f"{path}: stage1.warm_start is a list of run folders, got {warm!r}")
    for key, minimum in (("supernet.max_iter", 1), ("supernet.k", 0), ("supernet.sort_period", 0),
                         ("supernet.checkpoint_period", 1), ("supernet.calibration_images", 1), ("supernet.samples", 1),
                         ("supernet.rounds", 1)):
        section, name = key.split(".")
        if exp[section][name] < minimum:
            raise UserError(f"{path}: {key} must be >= {minimum}, got {exp[section][name]}")
    if exp["supernet"]["distill"] < 0:
        raise UserError(f"{path}: supernet.distill must be >= 0 (0: no distillation), got {exp['supernet']['distill']}")
    if exp["stage1"]["fidelity"] not in FIDELITIES:
        raise UserError(f"{path}: stage1.fidelity must be one of {', '.join(FIDELITIES)}, "
                        f"got {exp['stage1']['fidelity']!r}")
    early = exp["stage1"]["early_stop"]
    if early["grace_period"] < 1 or early["reduction_factor"] < 2:
        raise UserError(f"{path}: stage1.early_stop needs grace_period >= 1 and reduction_factor >= 2, "
                        f"got {early['grace_period']} and {early['reduction_factor']}")
    for key, tau in (("stage1.early_stop.min_tau", early["min_tau"]), ("verify.min_tau", exp["verify"]["min_tau"])):
        if tau is not None and not -1.0 <= tau <= 1.0:
            raise UserError(f"{path}: {key} must be in [-1, 1] (a Kendall tau) or null, got {tau}")
    if early["wilcoxon_p"] is not None and not 0.0 < early["wilcoxon_p"] <= 1.0:
        raise UserError(f"{path}: stage1.early_stop.wilcoxon_p must be in (0, 1] (a p-value) or null, "
                        f"got {early['wilcoxon_p']}")
    return exp


def latency_engine(exp: Mapping[str, Any] | None) -> str:
    """What a run's latencies were timed with; runs from before ``latency.engine`` timed PyTorch."""
    return ((exp or {}).get("latency") or {}).get("engine", "torch")


def uses_latency(exp: Mapping[str, Any]) -> bool:
    """Whether the search needs the latency predictor (a latency limit or objective)."""
    return exp["constraints"]["max_latency_ms"] is not None or exp["stage2"]["objective"] == "latency"
