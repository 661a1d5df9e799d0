"""Bad input to ``nars train``/``eval``/``predict``: one line, exit code 2, no traceback, and
nothing already in the run folder is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_helpers import TINY_TRAIN, data_overrides, make_shapes, one_thread
from nars.cli import main
from nars.config import load_config
from nars.model.fbnetv3is import build_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", train=2, val=2)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def fails(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with a one-line error (after any log lines) containing
    every needle, and no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_argv(shapes: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "quick_shapes", "--out", str(out), *TINY_TRAIN, *data_overrides(shapes), *extra]


def test_unknown_key_names_the_closest_valid_one(shapes, tmp_path, capsys):
    fails(capsys, train_argv(shapes, tmp_path / "run", "SOLVER.BASE_LRR", "0.1"),
          "nars train: error:", "unknown config key SOLVER.BASE_LRR", "did you mean SOLVER.BASE_LR?")
    assert not (tmp_path / "run").exists()


def test_wrong_type_names_the_key_and_the_type(shapes, tmp_path, capsys):
    fails(capsys, train_argv(shapes, tmp_path / "run", "SOLVER.MAX_ITER", "many"), "SOLVER.MAX_ITER expects int")
    fails(capsys, train_argv(shapes, tmp_path / "run", "MODEL_EMA.ENABLED", "3"), "MODEL_EMA.ENABLED expects bool")


@pytest.mark.parametrize("extra, needle", [
    (["DATASETS.TRAIN.JSON", "missing.json"], "missing.json: no such COCO JSON file"),
    (["DATASETS.TEST.IMAGES", "no_such_folder"], "no_such_folder: no such image folder"),
    (["SOLVER.OPTIMIZER", "lamb"], "SOLVER.OPTIMIZER: unknown optimizer 'lamb'"),
    (["--num-workers", "2", "SOLVER.IMS_PER_BATCH", "3"], "SOLVER.IMS_PER_BATCH 3 (the global batch) must be"),
    (["MODEL.ROI_HEADS.NUM_CLASSES", "80"], "MODEL.ROI_HEADS.NUM_CLASSES is 80 but"),
    (["MODEL.DEVICE", "cuda"], "MODEL.DEVICE cuda: no CUDA device"),
])
def test_bad_values_leave_an_existing_run_untouched(shapes, tmp_path, capsys, extra, needle):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("SEED: 1\n")
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n')
    before = snapshot(run)
    fails(capsys, train_argv(shapes, run, "--resume", *extra), needle)
    assert snapshot(run) == before


def test_annotation_pointing_at_a_missing_image_names_the_file(shapes, tmp_path, capsys):
    data = json.loads((shapes / "train.json").read_text())
    data["images"][0]["file_name"] = "gone.png"
    (tmp_path / "train.json").write_text(json.dumps(data))
    fails(capsys, train_argv(shapes, tmp_path / "run", "DATASETS.TRAIN.JSON", str(tmp_path / "train.json")),
          "gone.png: image file not found")


def test_a_non_empty_folder_needs_resume(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    fails(capsys, train_argv(shapes, run), f"{run}: not empty", "--resume")
    assert snapshot(run) == {"notes.txt": b"mine"}


def test_a_checkpoint_of_another_architecture_lists_the_mismatch(shapes, tmp_path, capsys):
    cfg = load_config(None, TINY_TRAIN + ["MODEL.FBNET_V2.ARCH", "FBNetV3_A"])
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "other.pth")
    run = tmp_path / "run"
    line = fails(capsys, train_argv(shapes, run, "MODEL.WEIGHTS", str(tmp_path / "other.pth")),
                 "other.pth does not fit the model of this config (MODEL.FBNET_V2.ARCH FBNetV3_A_dsmask",
                 "with another shape: backbone.body.", "not in the model:")
    assert "more)" in line
    assert not run.exists()
    fails(capsys, ["eval", "quick_shapes", "--weights", str(tmp_path / "other.pth"), *TINY_TRAIN,
                   *data_overrides(shapes)], "nars eval: error:", "with another shape")
    fails(capsys, ["predict", "quick_shapes", "--weights", str(tmp_path / "other.pth"), str(shapes / "val"),
                   "--out", str(tmp_path / "pred")], "nars predict: error:", "does not fit")


def test_other_command_errors(shapes, tmp_path, capsys):
    fails(capsys, ["eval", "quick_shapes", *data_overrides(shapes)], "--weights CKPT is required")
    fails(capsys, ["eval", "quick_shapes", "--weights", str(tmp_path / "none.pth")], "none.pth does not exist")
    torch.save({"model": build_model(load_config("quick_shapes")).state_dict()}, tmp_path / "m.pth")
    fails(capsys, ["predict", "quick_shapes", "--weights", str(tmp_path / "m.pth"), str(tmp_path / "nope.png"),
                   "--out", str(tmp_path / "pred")], "nope.png: no such image file or folder")
    assert not (tmp_path / "pred").exists()


def test_a_diverging_recipe_stops_every_worker_with_one_line(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    fails(capsys, train_argv(shapes, run, "--num-workers", "2", "SOLVER.BASE_LR", "1.0e+9", "SOLVER.MAX_ITER", "6"),
          "the recipe diverged", "lower SOLVER.BASE_LR")
