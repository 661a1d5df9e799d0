"""``nars experiment new``: an experiment file derived from a COCO dataset and this machine.

Why: the shipped space and base config pin the synthetic shapes' settings (128-160 px
inputs, 16-96 px anchors, 10 detections per image); on other data, objects shrink to a few
pixels and most of them can never be detected. This module reads the dataset and writes
every setting that depends on it, and on the machine's cores, as a plain key with a one-line
comment saying where its value came from: the file runs as is and is easy to edit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from nars.config import load_config
from nars.data.coco import CocoInstances
from nars.data.stats import DatasetStats, dataset_stats
from nars.errors import UserError
from nars.model.arch import TRUNK_OUTPUT_STRIDE
from nars.model.weights import named_checkpoint
from nars.search.experiment import EXPERIMENT_DEFAULTS
from search_spaces import load_space

SPACE = "fbnetv3is_quick"  # CPU-sized widths, depths and recipes; fbnetv3is is for GPU clusters
FINETUNE_SPACE = "fbnetv3is_finetune"  # the same with a fine-tuning recipe, for a --parent
BASE_CONFIG = "search_shapes"  # the quick space's reference (FBNetV3_A_dsmask, short AdamW recipe)

MAX_INPUT_SIDE = 800  # longer input side: CPU training cost grows with pixels
MIN_INPUT_SIDE = 64
SIZE_MULTIPLE = 32
MIN_ANCHOR = 4  # px

DETECTION_MARGIN = 1.2  # over the most objects seen in one image
MIN_DETECTIONS = 10
PROPOSALS_PER_DETECTION = 3  # NMS at 0.7 leaves a few proposals on each object
MIN_PROPOSALS_TEST = 100  # the box head on 100 RoIs costs little next to the trunk
TRAIN_OVER_TEST_PROPOSALS = 2  # the RoI sampler also needs background proposals
PRE_OVER_POST_NMS = 3  # NMS keeps a fraction of the dense top-scoring proposals

# The search-time estimate: core-seconds per training image of a quick-space trial, a line
# through two measurements in BENCHMARKS.md (the quickstart, whole search, 128 px: ~0.08 s;
# quick_shapes training, 320 px: ~0.15 s). Rough: real trials vary several-fold with the candidate.
SECONDS_PER_IMAGE = 0.065
SECONDS_PER_MEGAPIXEL = 0.8
TARGET_MINUTES = 30
OVERHEAD_MINUTES = 2  # Ray start-up, the predictor's pretraining, stage 2
MAX_CONCURRENT = 8
MIN_TRIALS_PER_ROUND = 3  # fewer measurements per round leave the predictor little to fit
EVAL_STEP = 10
MIN_EVAL_PERIOD = 20  # stage 1 at 40 iterations: most APs were still 0 (BENCHMARKS.md)


@dataclass(frozen=True)
class Split:
    """A COCO instances JSON and the image folder its file names are relative to."""

    json: Path
    images: Path


@dataclass(frozen=True)
class Derived:
    """A value written to the experiment, and the comment saying where it came from."""

    value: Any
    why: str


@dataclass(frozen=True)
class InputSize:
    """INPUT.*_SIZE_* and the factor they resize a median image by."""

    short: int
    long: int
    scale: float
    pixels: float  # of a median image once resized


@dataclass(frozen=True)
class Budget:
    concurrent: int
    cpus_per_trial: int
    trials_per_round: int
    eval_period: int
    iteration_seconds: float
    minutes: float


def split_stats(split: Split) -> DatasetStats:
    """The split's statistics (UserErrors name the file)."""
    stats = dataset_stats(split.json)
    if not stats.instances:
        raise UserError(f"{split.json}: has no (non-crowd) annotations; a detector needs objects to learn and score")
    return stats


def _multiple(x: float) -> int:
    return SIZE_MULTIPLE * max(1, round(x / SIZE_MULTIPLE))


def input_size(stats: DatasetStats) -> InputSize:
    """The median image's sides to multiples of 32, the longer one at most MAX_INPUT_SIDE."""
    short_side, long_side = stats.shorter_side.median, stats.longer_side.median
    shrink = min(1.0, MAX_INPUT_SIDE / long_side)
    short = max(MIN_INPUT_SIDE, _multiple(short_side * shrink))
    long = max(short, _multiple(long_side * shrink))
    scale = min(short / short_side, long / long_side)  # what the resize does to a median image
    return InputSize(short, long, scale, short_side * long_side * scale**2)


def anchor_sizes(box_size: Mapping[int, float], scale: float, cap: int) -> list[int]:
    """Box-size quantiles at the input scale, rounded, strictly increasing, within [MIN_ANCHOR, cap]."""
    sizes = [max(MIN_ANCHOR, round(v * scale)) for v in box_size.values()]
    for i in range(1, len(sizes)):
        sizes[i] = max(sizes[i], sizes[i - 1] + 1)
    sizes[-1] = min(sizes[-1], cap)
    for i in range(len(sizes) - 2, -1, -1):
        sizes[i] = min(sizes[i], sizes[i + 1] - 1)
    return sizes


def detections_per_image(most_objects: float) -> int:
    """Room for the most crowded image, with a margin, in tens."""
    return max(MIN_DETECTIONS, 10 * math.ceil(most_objects * DETECTION_MARGIN / 10))


def _recipe(reference: str) -> tuple[int, int]:
    """(images per iteration, iterations) of the space's reference trial: the budgets' unit and ceiling."""
    space = load_space(SPACE)
    solver = space.to_config(space.references[reference], base=load_config(BASE_CONFIG))["SOLVER"]
    return solver["IMS_PER_BATCH"], solver["MAX_ITER"]


def budget(cpus: int, pixels: float, batch: int, max_iter: int, rounds: int, top_k: int) -> Budget:
    """Trials side by side on single- (or few-) threaded workers, iterations for ~TARGET_MINUTES.

    Stage 1 runs ``rounds`` rounds of one wave of trials at 2 x eval_period iterations;
    verification runs top_k picks and the reference at twice that.
    """
    concurrent = min(cpus, MAX_CONCURRENT)
    per_trial = cpus // concurrent
    trials = max(MIN_TRIALS_PER_ROUND, concurrent)
    seconds = batch * (SECONDS_PER_IMAGE + SECONDS_PER_MEGAPIXEL * pixels / 1e6) / per_trial
    waves = rounds * math.ceil(trials / concurrent) + 2 * math.ceil((top_k + 1) / concurrent)  # in stage-1 lengths
    stage1 = (TARGET_MINUTES - OVERHEAD_MINUTES) * 60 / (seconds * waves)
    period = max(MIN_EVAL_PERIOD, EVAL_STEP * min(int(stage1 / 2 / EVAL_STEP), max_iter // 4 // EVAL_STEP))
    minutes = OVERHEAD_MINUTES + seconds * 2 * period * waves / 60
    return Budget(concurrent, per_trial, trials, period, seconds, minutes)


def _names(stats: DatasetStats) -> str:
    return ", ".join(f"{name} ({count})" for name, count in stats.classes.items())


def _data_config(stats: Mapping[str, DatasetStats], size: InputSize) -> dict[str, Derived]:
    """The config keys that follow the data, pinned over every candidate."""
    train = stats["train"]
    sides = f"median image {train.shorter_side.median:g} x {train.longer_side.median:g} px (train)"
    anchors = anchor_sizes(train.box_size, size.scale, size.long)
    quantiles = "/".join(f"{q}" for q in train.box_size)
    hint = (f"; below the RPN's {TRUNK_OUTPUT_STRIDE} px stride: consider larger INPUT sizes"
            if anchors[len(anchors) // 2] < TRUNK_OUTPUT_STRIDE else "")
    crowded = max(stats, key=lambda s: stats[s].instances_per_image.max)
    most = stats[crowded].instances_per_image.max
    detections = detections_per_image(most)
    post_test = max(MIN_PROPOSALS_TEST, PROPOSALS_PER_DETECTION * detections)
    post_train = TRAIN_OVER_TEST_PROPOSALS * post_test
    return {
        "MODEL.ROI_HEADS.NUM_CLASSES": Derived(len(train.classes), f"train categories (instances): {_names(train)}"),
        "INPUT.MIN_SIZE_TRAIN": Derived([size.short], f"{sides}: shorter side to a multiple of {SIZE_MULTIPLE}; "
                                                      "a list of sizes trains at a random one"),
        "INPUT.MAX_SIZE_TRAIN": Derived(size.long, f"longer side to a multiple of {SIZE_MULTIPLE}, "
                                                   f"capped at {MAX_INPUT_SIDE} for CPU training"),
        "INPUT.MIN_SIZE_TEST": Derived(size.short, "as INPUT.MIN_SIZE_TRAIN"),
        "INPUT.MAX_SIZE_TEST": Derived(size.long, "as INPUT.MAX_SIZE_TRAIN"),
        "MODEL.ANCHOR_GENERATOR.SIZES": Derived(
            [anchors], f"box sizes sqrt(w*h) at {quantiles} % (train) x {size.scale:.3g} input scale, "
                       f"increasing, at least {MIN_ANCHOR} px{hint}"),
        "TEST.DETECTIONS_PER_IMAGE": Derived(detections, f"most objects in one image: {most:g} ({crowded}) "
                                                         f"x {DETECTION_MARGIN}, up in tens"),
        "MODEL.RPN.POST_NMS_TOPK_TEST": Derived(post_test, f"{PROPOSALS_PER_DETECTION} per detection (NMS leaves "
                                                           f"a few per object), at least {MIN_PROPOSALS_TEST}"),
        "MODEL.RPN.PRE_NMS_TOPK_TEST": Derived(PRE_OVER_POST_NMS * post_test,
                                               f"{PRE_OVER_POST_NMS} x POST_NMS_TOPK_TEST: NMS keeps a fraction"),
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": Derived(post_train, f"{TRAIN_OVER_TEST_PROPOSALS} x POST_NMS_TOPK_TEST: "
                                                             "the RoI sampler also needs background"),
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN": Derived(PRE_OVER_POST_NMS * post_train,
                                                f"{PRE_OVER_POST_NMS} x POST_NMS_TOPK_TRAIN"),
    }


def _budgets(b: Budget, cpus: int, size: InputSize, batch: int) -> dict[str, Any]:
    """stage1, verify and ray keys for ~TARGET_MINUTES on this machine."""
    cost = (f"~{b.iteration_seconds:.2g} s per iteration ({batch} images of ~{size.pixels / 1e6:.2g} MPx at "
            f"{SECONDS_PER_IMAGE} s + {SECONDS_PER_MEGAPIXEL} s/MPx per image and core)")
    return {
        "stage1": {
            "trials_per_round": Derived(b.trials_per_round, f"one wave of ray.max_concurrent trials, at least "
                                                            f"{MIN_TRIALS_PER_ROUND} for the predictor"),
            "max_iter": Derived(2 * b.eval_period, "half of verify.max_iter; two ASHA rungs"),
            "eval_period": Derived(b.eval_period, "stage1.max_iter / 2"),
            "early_stop": {"grace_period": Derived(b.eval_period, "the first rung: stage1.eval_period")},
        },
        "verify": {"max_iter": Derived(4 * b.eval_period, f"search ~{b.minutes:.0f} min (aim {TARGET_MINUTES}, at "
                                                          f"most the recipes' length): {cost}")},
        "ray": {
            "num_cpus": Derived(cpus, "cores of the machine that wrote this file"),
            "cpus_per_trial": Derived(b.cpus_per_trial, "num_cpus / max_concurrent: small models train fastest "
                                                        "as few-threaded trials side by side"),
            "max_concurrent": Derived(b.concurrent, f"min(num_cpus, {MAX_CONCURRENT}); each trial holds a model "
                                                    "and a batch: lower it if memory runs short"),
        },
    }


def _complete(derived: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Every key of ``defaults``, with the derived values in place of theirs."""
    out: dict[str, Any] = {}
    for key, default in defaults.items():
        mine = derived.get(key)
        if isinstance(default, dict) and default and not isinstance(mine, Derived):
            out[key] = _complete(mine or {}, default)
        else:
            out[key] = mine if key in derived else default
    return out


def _render(tree: Mapping[str, Any], indent: int = 0) -> list[str]:
    """YAML lines, one key each; values as JSON (a subset of YAML), comments after derived ones."""
    lines = []
    for key, node in tree.items():
        pad = "  " * indent
        if isinstance(node, dict) and node:
            lines += [f"{pad}{key}:", *_render(node, indent + 1)]
            continue
        value, why = (node.value, node.why) if isinstance(node, Derived) else (node, "")
        comment = f"  # {' '.join(why.split())}" if why else ""
        lines.append(f"{pad}{key}: {json.dumps(value)}{comment}")
    return lines


def _flag(value: Any, flag: str, otherwise: str) -> Derived:
    """A value given by a command-line flag, or its default's meaning."""
    return Derived(value, f"from --{flag}" if value not in (None, "") else otherwise)


def new_experiment(train: Split, val: Split, *, cpus: int, name: str, parent: str = "", parent_arch: str = "",
                   max_mflops: float | None = None, max_params: int | None = None,
                   allow_outside_images: bool = False) -> str:
    """The experiment file's text for ``nars search``, derived from the two splits and ``cpus`` cores."""
    stats = {"train": split_stats(train), "val": split_stats(val)}
    space = FINETUNE_SPACE if parent else SPACE
    if parent and named_checkpoint(parent) is None:
        parent = str(Path(parent).resolve())  # searches may run from another folder
    if list(stats["val"].classes) != list(stats["train"].classes):
        raise UserError(f"{val.json}: categories {list(stats['val'].classes)} differ from {train.json}'s "
                        f"{list(stats['train'].classes)}")
    for split in (train, val):  # loads as training will read it; last, as the loader logs a summary line
        CocoInstances(split.json, split.images, allow_outside_images=allow_outside_images)
    size = input_size(stats["train"])
    config = _data_config(stats, size)
    if allow_outside_images:
        config["DATASETS.ALLOW_OUTSIDE_IMAGES"] = Derived(True, "from --allow-outside-images: file_names may "
                                                                "leave the image folders")
    batch, max_iter = _recipe(EXPERIMENT_DEFAULTS["verify"]["reference"])
    b = budget(cpus, size.pixels, batch, max_iter, EXPERIMENT_DEFAULTS["stage1"]["rounds"],
               EXPERIMENT_DEFAULTS["verify"]["top_k"])
    derived = {
        "name": Derived(name, "runs go to runs/NAME-N"),
        "dataset": {s: {"json": Derived(str(split.json.resolve()), f"--{s}"),
                        "images": Derived(str(split.images.resolve()), f"--{s}")}
                    for s, split in (("train", train), ("val", val))},
        "parent": {"weights": _flag(parent, "parent", "none: candidates train from scratch"),
                   "arch": _flag(parent_arch, "parent-arch", "read from the checkpoint")},
        "space": Derived(space, "CPU-sized FBNetV3IS widths and recipes (fbnetv3is: GPU clusters)"
                                + ("; fine-tuning recipes, for the parent" if parent else "")
                                + "; config below replaces its shapes-specific keys"),
        "base_config": Derived(BASE_CONFIG, "the quick space's reference, FBNetV3_A_dsmask"),
        "config": config,
        "constraints": {
            "max_mflops": _flag(max_mflops, "max-mflops", "no limit"),
            "max_params": _flag(max_params, "max-params", "no limit"),
        },
        **_budgets(b, cpus, size, batch),
    }
    tree = _complete(derived, EXPERIMENT_DEFAULTS)
    del tree["dataset"]["shapes"]  # the files replace the generated data
    return "\n".join(_header(stats, b, cpus, space) + _render(tree)) + "\n"


def _header(stats: Mapping[str, DatasetStats], b: Budget, cpus: int, space: str) -> list[str]:
    described = "; ".join(f"{s} {st.images} images, {st.instances} objects" for s, st in stats.items())
    return [
        f"# Written by `nars experiment new` ({described}; {cpus} cores).",
        "# Run it with `nars search FILE`.",
        "# A comment says where each derived value came from; uncommented keys are nars' defaults",
        "# (nars/search/experiment.py). `config` keys are pinned over every candidate, so these data",
        f"# settings win over {space}'s own (made for 128 px shapes) and the MFLOPs constraint counts them.",
        f"# Estimated search time ~{b.minutes:.0f} min: a rough guess, see verify.max_iter.",
        "# `nars data info JSON IMAGES` prints the statistics these values come from.",
    ]
