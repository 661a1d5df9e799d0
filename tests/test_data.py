"""Data: the shapes generator, COCO loading, loaders, and the data CLI's errors."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from nars.cli import main
from nars.config import load_config
from nars.data import shapes
from nars.data.coco import CocoInstances, dataset_from_config
from nars.data.loader import ShardSampler, TrainSampler, build_test_loader, build_train_loader, collate
from nars.errors import UserError

SMALL = dict(train=6, val=3, size=48, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- shapes -------------------------------------------------------------------------------


def test_shapes_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert shapes.generate_shapes(tmp_path / name, seed=seed, **SMALL)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert sorted(a) == ["train.json", *(f"train/{i:06d}.png" for i in range(6)),
                         "val.json", *(f"val/{i:06d}.png" for i in range(3))]
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_shapes_image_does_not_depend_on_count(tmp_path):
    shapes.generate_shapes(tmp_path / "a", **SMALL)
    shapes.generate_shapes(tmp_path / "b", **{**SMALL, "train": 2})
    assert (tmp_path / "a/train/000001.png").read_bytes() == (tmp_path / "b/train/000001.png").read_bytes()


@pytest.mark.parametrize("domain", sorted(shapes.DOMAINS))
def test_shapes_masks_are_the_visible_pixels(tmp_path, domain):
    shapes.generate_shapes(tmp_path, seed=1, domain=domain, **{**SMALL, "train": 12})
    coco = json.loads((tmp_path / "train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(shapes.CATEGORIES)
    assert 12 <= len(coco["annotations"]) <= 12 * shapes.DOMAINS[domain].max_shapes
    assert ("domain" in coco["info"]["params"]) == (domain != "shapes")  # older shapes folders stay valid
    for img in coco["images"]:
        scene = shapes.render(np.random.default_rng([1, 0, img["id"] - 1]), 48, shapes.DOMAINS[domain])
        png = np.asarray(Image.open(tmp_path / "train" / img["file_name"]))
        np.testing.assert_array_equal(png, scene.image)
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert [a["category_id"] for a in anns] == scene.category_ids
        union = np.zeros((48, 48), bool)
        for k, ann in enumerate(anns, start=1):
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            np.testing.assert_array_equal(mask, scene.labels == k)
            assert not (mask & union).any()  # visible masks do not overlap
            union |= mask
            # every pixel of the mask shows this shape's colour (up to the pixel noise)
            assert np.abs(png[mask] - scene.colours[k - 1]).max() <= shapes.DOMAINS[domain].noise + 0.5
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0


def test_shapes_out_folder_rules(tmp_path, capsys):
    out = tmp_path / "out"
    assert shapes.generate_shapes(out, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["data", "shapes", str(out), "--train", "6", "--val", "3", "--size", "48"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main(["data", "shapes", str(out), "--train", "7", "--val", "3", "--size", "48"]) == 2
    assert f"{out}: not empty" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert shapes.generate_shapes(tmp_path / "empty", **SMALL)
    assert main(["data", "shapes", str(tmp_path / "x"), "--size", "8"]) == 2
    assert "--size must be >= 32" in capsys.readouterr().err


# --- COCO loading -------------------------------------------------------------------------

H, W = 16, 20


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(int)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [H, W], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def coco_dir(tmp_path):
    """Four images; categories 7 'dog' and 3 'cat' (labels: cat 1, dog 2)."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 5):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(images / f"{i}.png")
    rle_mask, raw_mask = _box(2, 9, 11, 18), _box(8, 14, 1, 6)
    anns = [
        # image 1: a polygon (pixels x 2..4, y 1..2), a compressed RLE and a crowd region
        dict(image_id=1, category_id=7, segmentation=[[2, 1, 5, 1, 5, 3, 2, 3]], bbox=[2, 1, 3, 2], iscrowd=0),
        dict(image_id=1, category_id=3, segmentation=_rle(rle_mask), bbox=[11, 2, 7, 7], iscrowd=0),
        dict(image_id=1, category_id=3, segmentation=_uncompressed_rle(_box(0, 4, 0, 4)), bbox=[0, 0, 4, 4], iscrowd=1),
        # image 2: an uncompressed RLE, a degenerate box, an empty mask, a too-short polygon
        dict(image_id=2, category_id=7, segmentation=_uncompressed_rle(raw_mask), bbox=[1, 8, 5, 6], iscrowd=0),
        dict(image_id=2, category_id=7, segmentation=_rle(_box(3, 4, 3, 4)), bbox=[3, 3, 0.5, 1], iscrowd=0),
        dict(image_id=2, category_id=3, segmentation=_rle(np.zeros((H, W))), bbox=[3, 3, 4, 4], iscrowd=0),
        dict(image_id=2, category_id=3, segmentation=[[1, 1, 4, 4]], bbox=[1, 1, 3, 3], iscrowd=0),
        # image 3: nothing; image 4: only a crowd region
        dict(image_id=4, category_id=7, segmentation=_rle(_box(0, 5, 0, 5)), bbox=[0, 0, 5, 5], iscrowd=1),
    ]
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in range(1, 5)],
        "annotations": [{"id": i + 1, "area": 1, **a} for i, a in enumerate(anns)],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path, {"rle": rle_mask, "raw": raw_mask}


def test_coco_loading_masks_labels_crowd_and_drops(coco_dir, caplog):
    root, masks = coco_dir
    with caplog.at_level(logging.INFO, logger="nars.data.coco"):
        ds = CocoInstances(root / "coco.json", root / "images")
    assert ds.category_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.label_to_category_id == {1: 3, 2: 7} and ds.category_id_to_label == {3: 1, 7: 2}
    assert ds.stats == {"instances": 3, "empty_images": 2, "crowd": 2, "degenerate_boxes": 1, "empty_masks": 2}
    assert "dropped 1 degenerate boxes and 2 empty masks" in caplog.text and "ignored 2 crowd" in caplog.text
    assert len(ds) == 4  # images without (kept) instances stay

    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W) and 0 <= image.min() and image.max() <= 1
    expected = torch.from_numpy(np.array(Image.open(root / "images/1.png"))).permute(2, 0, 1) / 255
    assert torch.equal(image, expected)
    assert target["image_id"] == 1
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[2, 1, 5, 3], [11, 2, 18, 9]]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (2, H, W)
    assert torch.equal(target["masks"][0].bool(), torch.from_numpy(_box(1, 3, 2, 5)))
    assert torch.equal(target["masks"][1].bool(), torch.from_numpy(masks["rle"]))

    _, target = ds[1]
    assert target["labels"].tolist() == [2]
    assert torch.equal(target["masks"][0].bool(), torch.from_numpy(masks["raw"]))
    for i in (2, 3):
        _, target = ds[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert target["masks"].shape == (0, H, W)


def test_coco_flip(coco_dir):
    root, _ = coco_dir
    plain = CocoInstances(root / "coco.json", root / "images")
    flipped = CocoInstances(root / "coco.json", root / "images", flip_prob=1.0)
    (image, target), (fimage, ftarget) = plain[0], flipped[0]
    assert torch.equal(fimage, image.flip(-1))
    assert torch.equal(ftarget["masks"], target["masks"].flip(-1))
    assert ftarget["boxes"].tolist() == [[W - 5, 1, W - 2, 3], [W - 18, 2, W - 11, 9]]
    for mask, box in zip(ftarget["masks"], ftarget["boxes"]):  # boxes still hug their masks
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    torch.manual_seed(0)
    half = CocoInstances(root / "coco.json", root / "images", flip_prob=0.5)
    flips = [torch.equal(half[0][0], fimage) for _ in range(40)]
    assert 5 < sum(flips) < 35


def test_coco_corrupt_image_skipped_with_warning(coco_dir, caplog):
    root, _ = coco_dir
    (root / "images/2.png").write_bytes(b"not a png")
    Image.new("RGB", (W + 1, H)).save(root / "images/3.png")
    ds = CocoInstances(root / "coco.json", root / "images")
    with caplog.at_level(logging.WARNING, logger="nars.data.coco"):
        _, target = ds[1]
    assert target["image_id"] == 4 and ds.skipped == 2
    assert "2.png: unreadable" in caplog.text and "3.png: is 21x16 but the JSON says 20x16" in caplog.text


def test_dataset_from_config(coco_dir):
    root, _ = coco_dir
    cfg = load_config(None, ["DATASETS.TRAIN.JSON", str(root / "coco.json"), "DATASETS.TRAIN.IMAGES", str(root / "images")])
    assert cfg["DATALOADER"]["NUM_WORKERS"] == 2
    assert dataset_from_config(cfg, "TRAIN", train=True).flip_prob == 0.5
    assert dataset_from_config(cfg, "TRAIN", train=False).flip_prob == 0.0
    with pytest.raises(UserError, match=r"^DATASETS\.TEST\.JSON is not set"):
        dataset_from_config(cfg, "TEST", train=False)
    with pytest.raises(UserError, match=r"^DATASETS\.TRAIN\.JSON is not set"):
        dataset_from_config({}, "TRAIN", train=True)


def test_data_info_cli(coco_dir, capsys):
    root, _ = coco_dir
    assert main(["data", "info", str(root / "coco.json"), str(root / "images"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 4 and info["classes"] == {"cat": 1, "dog": 2} and info["crowd"] == 2


def _edit_json(path: Path, edit) -> None:
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


@pytest.mark.parametrize("case, message", [
    ("missing json", "{root}/nope.json: no such COCO JSON file"),
    ("missing folder", "{root}/nope: no such image folder"),
    ("missing image", "{root}/images/4.png: image file not found"),
    ("malformed json", "{root}/coco.json: malformed JSON"),
    ("not coco", "{root}/coco.json: not a COCO instances file"),
    ("bad entry", "{root}/coco.json: malformed COCO entry (KeyError: 'file_name')"),
    ("unknown image id", "{root}/coco.json: annotation 1 refers to image_id 99"),
])
def test_bad_input_errors(coco_dir, capsys, case, message):
    root, _ = coco_dir
    json_path, images = root / "coco.json", root / "images"
    if case == "missing json":
        json_path = root / "nope.json"
    elif case == "missing folder":
        images = root / "nope"
    elif case == "missing image":
        (images / "4.png").unlink()
    elif case == "malformed json":
        json_path.write_text('{"images": [')
    elif case == "not coco":
        json_path.write_text("[]")
    elif case == "bad entry":
        _edit_json(json_path, lambda c: c["images"][2].pop("file_name"))
    elif case == "unknown image id":
        _edit_json(json_path, lambda c: c["annotations"][0].update(image_id=99))
    assert main(["data", "info", str(json_path), str(images)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nars data: error: " + message.format(root=root)) and err.count("\n") == 1
    assert "Traceback" not in err


# --- loaders ------------------------------------------------------------------------------


def _ids(batches) -> list[list[int]]:
    return [[t["image_id"] for t in targets] for _, targets in batches]


def _take(loader, n: int) -> list:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_collate_lists():
    batch = [(torch.zeros(3, 2, 2), {"a": 1}), (torch.ones(3, 4, 4), {"a": 2})]
    images, targets = collate(batch)
    assert isinstance(images, list) and [i.shape[1] for i in images] == [2, 4] and targets == [{"a": 1}, {"a": 2}]


def test_train_loader_endless_deterministic_and_resumable(tmp_path):
    shapes.generate_shapes(tmp_path, **{**SMALL, "train": 5, "size": 32})
    ds = CocoInstances(tmp_path / "train.json", tmp_path / "train", flip_prob=0.5)
    run = _take(build_train_loader(ds, 2, 0, seed=5, distributed=False), 10)
    assert all(len(images) == 2 for images, _ in run)  # full batches across epoch boundaries
    ids = sum(_ids(run), [])
    assert [sorted(ids[i:i + 5]) for i in range(0, 20, 5)] == [[1, 2, 3, 4, 5]] * 4  # each epoch once each
    assert len({tuple(ids[i:i + 5]) for i in range(0, 20, 5)}) > 1  # reshuffled per epoch
    plain = CocoInstances(tmp_path / "train.json", tmp_path / "train")
    flips = [not torch.equal(img, plain[i - 1][0]) for (images, _), batch in zip(run, _ids(run))
             for img, i in zip(images, batch)]
    assert 0 < sum(flips) < len(flips)

    torch.manual_seed(123)  # the caller's RNG neither matters nor moves
    state = torch.get_rng_state()
    again = _take(build_train_loader(ds, 2, 0, seed=5, distributed=False), 10)
    assert torch.equal(state, torch.get_rng_state())
    for (a, ta), (b, tb) in zip(run, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b)) and _ids([(a, ta)]) == _ids([(b, tb)])
    assert _ids(_take(build_train_loader(ds, 2, 0, seed=6, distributed=False), 10)) != _ids(run)

    resumed = _take(build_train_loader(ds, 2, 1, seed=5, distributed=False, start_iter=7), 3)  # a worker too
    for (a, ta), (b, tb) in zip(run[7:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(a, b)) and _ids([(a, ta)]) == _ids([(b, tb)])


def test_train_sampler_shards_are_disjoint():
    shards = [list(itertools.islice(TrainSampler(10, seed=0, num_replicas=2, rank=r), 10)) for r in (0, 1)]
    for epoch in (slice(0, 5), slice(5, 10)):  # per epoch, the ranks split the dataset
        indices = [[i for i, _ in shard[epoch]] for shard in shards]
        assert sorted(indices[0] + indices[1]) == list(range(10))
    assert [i for i, _ in shards[0][:5]] != [i for i, _ in shards[0][5:]]
    assert len({s for shard in shards for _, s in shard}) == 20  # every sample its own seed


def test_shard_sampler_and_test_loader(tmp_path):
    shards = [list(ShardSampler(7, num_replicas=3, rank=r)) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    shapes.generate_shapes(tmp_path, **{**SMALL, "val": 5, "size": 32})
    ds = CocoInstances(tmp_path / "val.json", tmp_path / "val", flip_prob=0.0)
    assert _ids(build_test_loader(ds, 2, 0, distributed=False)) == [[1, 2], [3, 4], [5]]
