"""The coins dataset (``nars data coins``): real photo pixels, labelled by watershed, made offline."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from nars.cli import main
from nars.data import coins
from nars.data.coco import CocoInstances

TINY = dict(train=3, val=2, size=coins.MIN_SIZE, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_source_labels_the_photo_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the coins dataset must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    coins.source.cache_clear()
    src = coins.source()
    train, val = src.pools
    assert (len(train), len(val)) == (16, 8)  # the photo's 24 coins, every third one for validation
    for coin in train + val:
        assert coin.mask.sum() >= coins.MIN_SOURCE_AREA
        assert coin.pixels[coin.mask].mean() > coin.pixels[coin.alpha == 0].mean() + 50  # the mask is on the coin
    assert not any(np.array_equal(t.pixels, v.pixels) for t in train for v in val)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert coins.generate_coins(tmp_path / name, seed=seed, **TINY)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert sorted(a) == ["train.json", *(f"train/{i:06d}.png" for i in range(3)),
                         "val.json", *(f"val/{i:06d}.png" for i in range(2))]
    assert a == b
    assert all(a[k] != c[k] for k in a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_loads_with_masks_on_coins_inside_their_boxes(tmp_path, capsys):
    assert coins.generate_coins(tmp_path, seed=1, **TINY)
    size = coins.MIN_SIZE
    for split, count in (("train", 3), ("val", 2)):
        coco = json.loads((tmp_path / f"{split}.json").read_text())
        assert [c["name"] for c in coco["categories"]] == list(coins.CATEGORIES)
        dataset = CocoInstances(tmp_path / f"{split}.json", tmp_path / split, flip="none")
        assert len(dataset) == count and dataset.stats["degenerate_boxes"] == dataset.stats["empty_masks"] == 0
        for index in range(count):
            image, target = dataset[index]
            assert image.shape == (3, size, size)
            masks = target["masks"].bool().numpy()
            assert coins.MIN_OBJECTS <= len(masks) <= coins.MAX_OBJECTS
            assert (masks.sum(axis=0) <= 1).all()  # no two coins share a pixel
            for mask, (x0, y0, x1, y1) in zip(masks, target["boxes"].tolist()):
                ys, xs = np.nonzero(mask)
                assert len(ys) > 0
                assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
            grey = np.asarray(Image.open(tmp_path / split / f"{index:06d}.png"), dtype=float)
            assert grey[masks.any(axis=0)].mean() > grey[~masks.any(axis=0)].mean() + 40  # labels are on the coins
        for ann in coco["annotations"]:
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
    assert main(["data", "info", str(tmp_path / "train.json"), str(tmp_path / "train"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 3 and info["classes"] == {"coin": info["instances"]}


@pytest.mark.parametrize("size", [coins.MIN_SIZE, 500])
def test_objects_per_image_in_range(size):
    """Over many images, not just the few written above: the count is drawn, never cut short."""
    src = coins.source()
    counts = []
    for i in range(12):
        _, labels = coins.render(np.random.default_rng([7, 0, i]), size, src, i % 2)
        areas = np.bincount(labels.ravel())[1:]
        assert (areas > 0).all()
        counts.append(len(areas))
    assert all(coins.MIN_OBJECTS <= n <= coins.MAX_OBJECTS for n in counts) and len(set(counts)) > 3


def test_cli_rerun_has_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["data", "coins", str(out), "--train", "3", "--val", "2", "--size", str(coins.MIN_SIZE)]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main([*argv, "--seed", "1"]) == 2
    assert f"{out}: not empty and not a coins dataset" in capsys.readouterr().err
    assert main(["data", "coins", str(tmp_path / "x"), "--size", "100"]) == 2
    assert f"--size must be >= {coins.MIN_SIZE}" in capsys.readouterr().err
