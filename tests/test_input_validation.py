"""Bad or unusual dataset and image files (issue 21, input validation): NaN/Inf coordinates,
images over 8 bits, decompression bombs, dataset errors raised in DataLoader workers, and
file_names that leave the image folder. Each is one line from the CLI (exit 2, no traceback)
or a deliberate conversion whose rule the tests check pixel by pixel."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from engine_helpers import TINY_TRAIN, data_overrides
from nars.cli import main
from nars.config import load_config
from nars.data.coco import CocoInstances, dataset_from_config
from nars.errors import UserError
from test_engine_errors import fails
# Fixtures: one intra-op thread (autouse); shapes data, a config.yaml for it and a checkpoint.
from test_predict import _one_thread, setup  # noqa: F401


def edited_json(shapes: Path, split: str, out: Path, edit: Callable[[dict], str | None]) -> Path:
    """A copy of the split's JSON after ``edit(data)``; ``"@BAD@"`` strings become bare JSON tokens."""
    data = json.loads((shapes / f"{split}.json").read_text())
    token = edit(data)
    text = json.dumps(data)
    out.write_text(text.replace('"@BAD@"', token) if token else text)
    return out


def copied_split(shapes: Path, split: str, out: Path) -> Path:
    """The split's JSON and images copied into ``out`` (to replace image files in)."""
    shutil.copytree(shapes / split, out / split)
    shutil.copy(shapes / f"{split}.json", out / f"{split}.json")
    return out


# --- NaN and Inf coordinates -------------------------------------------------------------------

def _poison(field: str, token: str) -> Callable[[dict], str]:
    """An edit putting ``token`` into the first annotation's ``field`` (its mask made a polygon,
    the box's corners, for that); returns the token."""
    def edit(data: dict) -> str:
        ann = data["annotations"][0]
        if field == "bbox":
            ann["bbox"][2] = "@BAD@"
        else:
            x, y, w, h = ann["bbox"]
            ann["segmentation"] = [[x, y, x + w, y, "@BAD@", y + h, x, y + h]]
        return token
    return edit


def _argv(command: str, root: Path, out: Path, shapes: Path, bad: Path, weights: Path) -> list[str]:
    """``command``'s arguments with ``bad`` as its train JSON (eval: as its test JSON); ``root``
    holds config.yaml, ``out`` gets what the command writes."""
    if command == "data info":
        return ["data", "info", str(bad)]
    if command == "data info IMAGES":
        return ["data", "info", str(bad), str(shapes / "train")]
    if command == "train":
        return ["train", "quick_shapes", "--out", str(out / "run"), *TINY_TRAIN, *data_overrides(shapes),
                "DATASETS.TRAIN.JSON", str(bad)]
    if command == "eval":  # the bad JSON as the test set, its images those of train
        return ["eval", str(root / "config.yaml"), "--weights", str(weights), "DATASETS.TEST.JSON", str(bad),
                "DATASETS.TEST.IMAGES", str(shapes / "train")]
    return ["experiment", "new", "--train", str(bad), str(shapes / "train"), "--val", str(shapes / "val.json"),
            str(shapes / "val"), "--out", str(out / "exp.yaml"), "--cpus", "2"]


@pytest.mark.parametrize("command, field, token", [
    ("data info", "bbox", "NaN"),
    ("data info IMAGES", "segmentation", "Infinity"),
    ("train", "bbox", "1e999"),
    ("train", "segmentation", "NaN"),
    ("eval", "segmentation", "-Infinity"),
    ("experiment new", "bbox", "Infinity"),
    ("experiment new", "segmentation", "NaN"),
])
def test_nan_or_inf_coordinates_are_a_dataset_error(setup, tmp_path, capsys, command, field, token):
    root, shapes, weights = setup
    bad = edited_json(shapes, "train", tmp_path / "bad.json", _poison(field, token))
    ann_id = json.loads((shapes / "train.json").read_text())["annotations"][0]["id"]
    value = {"NaN": "nan", "-Infinity": "-inf"}.get(token, "inf")
    fails(capsys, _argv(command, root, tmp_path, shapes, bad, weights),
          f"{bad}: annotation {ann_id}: {field} holds {value}")
    assert not (tmp_path / "run").exists() and not (tmp_path / "exp.yaml").exists()


# --- images over 8 bits ------------------------------------------------------------------------

RAMP = np.arange(256)


def _wide_image(mode: str, path: Path) -> Path:
    """A 4 x 256 image of ``mode`` whose columns rise evenly over a range inside the mode's own."""
    values = {"I;16": 1000 + 100 * RAMP, "I": -70000 + 1000 * RAMP, "F": -0.5 + RAMP / 100}[mode]
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    image = Image.fromarray(np.tile(values.astype(dtype), (4, 1)))
    assert image.mode == mode
    image.save(path)
    return path


@pytest.mark.parametrize("mode, suffix", [("I;16", "png"), ("I;16", "tif"), ("I", "tif"), ("F", "tif")])
def test_wide_images_are_scaled_by_their_own_range(tmp_path, caplog, monkeypatch, mode, suffix):
    from nars.data import images

    monkeypatch.setattr(images, "_warned", False)
    path = _wide_image(mode, tmp_path / f"ramp.{suffix}")
    with caplog.at_level(logging.WARNING, logger="nars.data.images"):
        rgb = np.asarray(images.read_rgb(path))
        images.read_rgb(path)
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    assert (rgb == RAMP[None, :, None]).all()
    rules = [r.getMessage() for r in caplog.records if "own range" in r.getMessage()]
    assert len(rules) == 1 and "min..max -> 0..255" in rules[0], rules


def test_a_constant_wide_image_is_black_and_nan_counts_as_the_minimum(tmp_path):
    from nars.data.images import read_rgb

    Image.fromarray(np.full((3, 5), 40000, np.uint16)).save(tmp_path / "flat.png")
    assert (np.asarray(read_rgb(tmp_path / "flat.png")) == 0).all()
    pixels = np.array([[np.nan, 1.0, 3.0, np.inf]], np.float32)
    Image.fromarray(pixels).save(tmp_path / "nan.tif")
    assert np.asarray(read_rgb(tmp_path / "nan.tif"))[0, :, 0].tolist() == [0, 0, 255, 255]


def test_training_reads_a_16bit_png_scaled(setup, tmp_path):
    _, shapes, _ = setup
    root = copied_split(shapes, "val", tmp_path)
    first = json.loads((root / "val.json").read_text())["images"][0]
    h, w = first["height"], first["width"]
    ramp = (RAMP[:w] * 65535 // (w - 1)).astype(np.uint16)  # 0..65535 across the image
    Image.fromarray(np.tile(ramp, (h, 1))).save(root / "val" / first["file_name"])
    image, _ = CocoInstances(root / "val.json", root / "val")[0]
    expected = np.round(ramp / 65535 * 255)
    assert torch.equal(image * 255, torch.from_numpy(np.tile(expected, (3, h, 1))).float())


def test_predict_reads_a_16bit_png_scaled(setup, tmp_path, capsys):
    root, _, weights = setup
    _wide_image("I;16", tmp_path / "ramp.png")
    out = tmp_path / "out"
    # Threshold 1: no detection is drawn, so the overlay is the image as the model saw it.
    assert main(["predict", str(root / "config.yaml"), "--weights", str(weights), str(tmp_path / "ramp.png"),
                 "--out", str(out), "--score-threshold", "1.0"]) == 0
    overlay = np.asarray(Image.open(out / "ramp.png").convert("RGB"))
    assert (overlay == RAMP[None, :, None]).all()


# --- decompression bombs -----------------------------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb(path: Path, side: int) -> Path:
    """A PNG whose header declares side x side grey pixels; its data is a few bytes (PIL refuses it
    from the header alone)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [
    10_000,  # 1e8 pixels: over Image.MAX_IMAGE_PIXELS, where PIL only warns
    20_000,  # 4e8: over twice the limit, where PIL raises
])
def test_decompression_bomb_is_one_line_in_predict(setup, tmp_path, capsys, side):
    root, _, weights = setup
    bomb = _bomb(tmp_path / "bomb.png", side)
    fails(capsys, ["predict", str(root / "config.yaml"), "--weights", str(weights), str(bomb),
                   "--out", str(tmp_path / "out")], f"{bomb}: refused: Image size")
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_decompression_bomb_in_training_with_workers_is_one_line(setup, tmp_path, capsys):
    _, shapes, _ = setup
    root = copied_split(shapes, "train", tmp_path)
    for name in ("000000.png", "000001.png"):
        _bomb(root / "train" / name, 20_000)
    fails(capsys, ["train", "quick_shapes", "--out", str(tmp_path / "run"), *TINY_TRAIN, *data_overrides(shapes),
                   "DATASETS.TRAIN.IMAGES", str(root / "train"), "DATALOADER.NUM_WORKERS", "2"],
          f"{root / 'train'}/00000", "refused: Image size")


# --- errors raised in DataLoader workers -------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "eval"])
def test_worker_errors_read_as_without_workers(setup, tmp_path, capsys, command):
    root, shapes, weights = setup
    broken = copied_split(shapes, "train", tmp_path)
    for png in (broken / "train").iterdir():
        png.write_bytes(b"not a png")
    count = len(list((broken / "train").iterdir()))
    data = ["DATASETS.TRAIN.JSON", str(broken / "train.json"), "DATASETS.TRAIN.IMAGES", str(broken / "train"),
            "DATASETS.TEST.JSON", str(broken / "train.json"), "DATASETS.TEST.IMAGES", str(broken / "train")]
    def argv(workers: int) -> list[str]:
        if command == "train":
            return ["train", "quick_shapes", "--out", str(tmp_path / f"run{workers}"), *TINY_TRAIN, *data,
                    "DATALOADER.NUM_WORKERS", str(workers)]
        return ["eval", str(root / "config.yaml"), "--weights", str(weights), *data,
                "DATALOADER.NUM_WORKERS", str(workers)]
    lines = [fails(capsys, argv(n), f"none of its {count} images can be read") for n in (2, 0)]
    assert lines[0] == lines[1] == (f"nars {command}: error: {broken / 'train.json'}: "
                                    f"none of its {count} images can be read")


# --- file_names outside the image folder -------------------------------------------------------

def _outside(shapes: Path, tmp_path: Path, how: str) -> tuple[Path, dict]:
    """A copy of val.json (images in shapes/val) whose first image is train's first, named by
    ``../train/...`` or its absolute path."""
    def edit(data: dict) -> None:
        data["images"][0]["file_name"] = {"up": "../train/000000.png",
                                          "absolute": str(shapes / "train" / "000000.png")}[how]
    path = edited_json(shapes, "val", tmp_path / f"{how}.json", edit)
    return path, json.loads(path.read_text())["images"][0]


@pytest.mark.parametrize("how", ["up", "absolute"])
def test_file_name_leaving_the_image_folder_is_refused(setup, tmp_path, capsys, how):
    root, shapes, weights = setup
    path, image = _outside(shapes, tmp_path, how)
    needle = f"{path}: image {image['id']}: file_name {image['file_name']!r} leaves the image folder"
    with pytest.raises(UserError, match="DATASETS.ALLOW_OUTSIDE_IMAGES"):
        CocoInstances(path, shapes / "val")
    fails(capsys, ["data", "info", str(path), str(shapes / "val")], needle)
    fails(capsys, ["eval", str(root / "config.yaml"), "--weights", str(weights), "DATASETS.TEST.JSON", str(path)],
          needle)
    fails(capsys, ["experiment", "new", "--train", str(shapes / "train.json"), str(shapes / "train"),
                   "--val", str(path), str(shapes / "val"), "--out", str(tmp_path / "exp.yaml")], needle)
    # A name that normalises to one inside is read.
    inside = edited_json(shapes, "val", tmp_path / "inside.json",
                         lambda d: d["images"][0].update(file_name="./" + d["images"][0]["file_name"]))
    assert len(CocoInstances(inside, shapes / "val")) == len(json.loads(inside.read_text())["images"])


@pytest.mark.parametrize("how", ["up", "absolute"])
def test_file_name_outside_is_read_when_the_key_allows_it(setup, tmp_path, capsys, how):
    _, shapes, _ = setup
    path, _ = _outside(shapes, tmp_path, how)
    cfg = load_config(None, TINY_TRAIN + data_overrides(shapes) + [
        "DATASETS.TEST.JSON", str(path), "DATASETS.ALLOW_OUTSIDE_IMAGES", "true"])
    image, _ = dataset_from_config(cfg, "TEST", train=False)[0]
    expected = np.asarray(Image.open(shapes / "train" / "000000.png").convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(image * 255, torch.from_numpy(expected.copy()).float())
    assert main(["data", "info", str(path), str(shapes / "val"), "--allow-outside-images"]) == 0
    out = tmp_path / "exp.yaml"
    assert main(["experiment", "new", "--train", str(shapes / "train.json"), str(shapes / "train"), "--val",
                 str(path), str(shapes / "val"), "--out", str(out), "--allow-outside-images"]) == 0
    assert "DATASETS.ALLOW_OUTSIDE_IMAGES: true" in out.read_text()
