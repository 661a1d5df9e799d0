"""``nars predict`` and ``nars eval`` on a checkpoint: overlays, COCO results, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine_helpers import TINY_TRAIN, data_overrides, make_shapes, one_thread
from nars.cli import main
from nars.config import load_config
from nars.engine.inference import draw_overlay
from nars.model.fbnetv3is import build_model

CATEGORIES = [{"id": 11, "name": "circle"}, {"id": 12, "name": "square"}, {"id": 13, "name": "triangle"},
              {"id": 14, "name": "star"}]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Shapes data, a config file for it, and a checkpoint (random weights, stored categories)."""
    root = tmp_path_factory.mktemp("predict")
    shapes = make_shapes(root / "shapes", train=2, val=3)
    cfg = load_config(None, TINY_TRAIN + data_overrides(shapes))
    (root / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "iteration": 0, "categories": CATEGORIES}, root / "model.pth")
    return root, shapes, root / "model.pth"


def test_predict_writes_overlays_and_coco_results(setup, capsys):
    root, shapes, weights = setup
    out = root / "out"
    (root / "broken.png").write_bytes(b"not a png")
    images = [str(shapes / "val"), str(shapes / "train" / "000000.png"), str(root / "broken.png")]
    code = main(["predict", str(root / "config.yaml"), "--weights", str(weights), *images, "--out", str(out),
                 "--score-threshold", "0.0"])
    assert code == 0
    assert "4 overlays, 1 unreadable skipped" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000000.png", "000000_1.png", "000001.png", "000002.png", "predictions.json"]
    assert Image.open(out / "000001.png").size == (64, 64)
    results = json.loads((out / "predictions.json").read_text())
    assert results, "a random model scores above 0 somewhere"
    assert {r["category_id"] for r in results} <= {c["id"] for c in CATEGORIES}
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4}
    first = results[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score", "segmentation", "file_name"}
    assert first["file_name"].endswith(".png") and len(first["bbox"]) == 4


def test_overlay_paints_masks_boxes_and_labels():
    image = Image.fromarray(np.full((40, 60, 3), 128, np.uint8))
    masks = torch.zeros(1, 1, 40, 60)
    masks[0, 0, 10:30, 20:40] = 1.0
    output = {"boxes": torch.tensor([[20.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([2]),
              "scores": torch.tensor([0.9]), "masks": masks}
    drawn = np.asarray(draw_overlay(image, output, ["a", "b"])).astype(int)
    assert drawn.shape == (40, 60, 3)
    assert (drawn[20, 30] != 128).any()  # mask tint inside
    assert (drawn[35, 5] == 128).all()  # untouched outside
    assert (drawn[20, 20] != drawn[20, 30]).any()  # the box outline differs from the tint


def test_eval_prints_metrics_json(setup, capsys):
    root, _, weights = setup
    assert main(["eval", str(root / "config.yaml"), "--weights", str(weights), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"bbox", "segm"}
    for values in metrics.values():
        assert set(values) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in values.values())
    assert main(["eval", str(root / "config.yaml"), "--weights", str(weights)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"] and table[1].startswith("bbox")
