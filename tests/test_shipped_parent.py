"""The parent shipped in experiments/parents/shapes_dsmask (the main job's, made by ``nars train
parent_shapes``): its files say what it is, and they are what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nars.config import load_config
from nars.data.shapes import generate_shapes
from nars.engine.evaluator import evaluate_checkpoint
from nars.model.weights import FINAL_WEIGHTS
from nars.search.experiment import EXPERIMENT_DIR, load_experiment

PARENT = EXPERIMENT_DIR / "parents" / "shapes_dsmask"


@pytest.mark.parametrize("name", ["quickstart", "quickstart_finetune"])
def test_the_quickstarts_start_from_the_shipped_parent(name):
    exp = load_experiment(name)
    assert (Path(EXPERIMENT_DIR).parent / exp["parent"]["weights"]).resolve() == PARENT.resolve()
    assert exp["parent"]["config"] == "parent_shapes"  # what remakes it where the folder is missing


def test_the_shipped_parent_is_parent_shapes_weights_only():
    shipped = load_config(PARENT / "config.yaml")
    recipe = load_config("parent_shapes")
    for section in ("MODEL", "SOLVER", "INPUT"):  # the config it was trained with is parent_shapes'
        for key in recipe[section]:
            if key not in ("DEVICE", "WEIGHTS"):
                assert shipped[section][key] == recipe[section][key], f"{section}.{key}"
    ckpt = torch.load(PARENT / FINAL_WEIGHTS, weights_only=True)
    assert set(ckpt) == {"model", "arch", "categories", "iteration", "seed"}  # no optimizer state: 10 MB, not 30
    assert ckpt["iteration"] + 1 == recipe["SOLVER"]["MAX_ITER"]


def test_the_shipped_parent_scores_what_its_eval_json_says(tmp_path):
    """Re-evaluated on the same generated validation images (seed 0: an image does not depend on
    how many are asked for). The tolerance is not float noise in the weights (there is none:
    the same file), but thread counts that reorder float sums can move a borderline detection
    across a score or IoU threshold; one such flip moves a 50-image AP by well under 0.01."""
    data = tmp_path / "shapes"
    generate_shapes(data, train=1, val=50, size=128, seed=0, domain="shapes")
    cfg = load_config(PARENT / "config.yaml", ["DATASETS.TEST.JSON", str(data / "val.json"),
                                               "DATASETS.TEST.IMAGES", str(data / "val")])
    recorded = json.loads((PARENT / "eval.json").read_text())
    metrics = evaluate_checkpoint(cfg, str(PARENT / FINAL_WEIGHTS)).metrics
    assert metrics["segm"]["AP"] == pytest.approx(recorded["segm"]["AP"], abs=0.01)
    assert metrics["bbox"]["AP"] == pytest.approx(recorded["bbox"]["AP"], abs=0.01)
