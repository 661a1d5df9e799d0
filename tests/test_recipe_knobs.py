"""Training-recipe knobs searched with the architecture: INPUT.RANDOM_FLIP, INPUT.CROP.* and
MODEL.FBNET_V2.DROP_CONNECT_RATE change what training sees, and only training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine_helpers import TINY_TRAIN, data_overrides, one_thread, train_losses
from nars.config import load_config
from nars.data.coco import CocoInstances, RandomCrop, crop_from_config, dataset_from_config
from nars.data.shapes import generate_shapes
from nars.errors import UserError
from nars.model.arch import parse_block
from nars.model.blocks import InvertedResidual
from nars.model.fbnetv3is import build_model
from search_spaces import load_space

SIZE = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=4, val=2, size=SIZE, seed=0, progress=False)
    return root


def _config(shapes, *overrides: str) -> dict:
    data = ["DATASETS.TRAIN.JSON", str(shapes / "train.json"), "DATASETS.TRAIN.IMAGES", str(shapes / "train")]
    return load_config(None, [*data, *overrides])


def _extent(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _assert_consistent(image: torch.Tensor, target: dict) -> None:
    """Masks cover the image, each is non-empty and lies inside its box, and boxes inside the image."""
    h, w = image.shape[-2:]
    boxes, masks = target["boxes"], target["masks"]
    assert masks.shape == (len(boxes), h, w) and target["labels"].shape == (len(boxes),)
    for box, mask in zip(boxes.tolist(), masks):
        x0, y0, x1, y1 = _extent(mask)
        assert box[0] <= x0 and box[1] <= y0 and x1 <= box[2] and y1 <= box[3]
        assert 0 <= box[0] and box[2] <= w and 0 <= box[1] and box[3] <= h and box[2] - box[0] >= 1


# ----- INPUT.RANDOM_FLIP ------------------------------------------------------------------


@pytest.mark.parametrize("mode, dims", [("none", []), ("horizontal", [-1]), ("vertical", [-2]), ("both", [-1, -2])])
def test_flip_modes_mirror_image_masks_and_boxes(shapes, mode, dims):
    plain = CocoInstances(shapes / "train.json", shapes / "train")
    flipped = CocoInstances(shapes / "train.json", shapes / "train", flip=mode, flip_prob=1.0)
    for i in range(len(plain)):
        (image, target), (fimage, ftarget) = plain[i], flipped[i]
        assert torch.equal(fimage, image.flip(dims) if dims else image)
        assert torch.equal(ftarget["masks"], target["masks"].flip(dims) if dims else target["masks"])
        x0, y0, x1, y1 = target["boxes"].unbind(1)
        if -1 in dims:
            x0, x1 = SIZE - x1, SIZE - x0
        if -2 in dims:  # top to bottom
            y0, y1 = SIZE - y1, SIZE - y0
        assert torch.equal(ftarget["boxes"], torch.stack([x0, y0, x1, y1], 1))
        for box, mask in zip(ftarget["boxes"].tolist(), ftarget["masks"]):  # boxes still hug their masks
            assert box == _extent(mask)


def test_random_flip_from_config_draws_each_axis_from_torch(shapes):
    plain = CocoInstances(shapes / "train.json", shapes / "train")[0][0]
    train = dataset_from_config(_config(shapes, "INPUT.RANDOM_FLIP", "both"), "TRAIN", train=True)
    seen = []
    for seed in range(40):
        torch.manual_seed(seed)
        image = train[0][0]
        torch.manual_seed(seed)
        assert torch.equal(train[0][0], image)  # torch's default generator decides
        seen.append(next(d for d in ([], [-1], [-2], [-1, -2]) if torch.equal(image, plain.flip(d) if d else plain)))
    assert all(5 < seen.count(d) < 20 for d in ([], [-1], [-2], [-1, -2]))  # each axis on its own at p=0.5
    test = dataset_from_config(_config(shapes, "INPUT.RANDOM_FLIP", "both"), "TRAIN", train=False)
    assert torch.equal(test[0][0], plain)
    default = dataset_from_config(_config(shapes), "TRAIN", train=True)
    assert (default.flip_dims, default.flip_prob) == ((-1,), 0.5)  # detectron2's default, as before


# ----- INPUT.CROP -------------------------------------------------------------------------


def test_crop_sizes_follow_detectron2():
    assert RandomCrop("relative", (0.5, 0.25)).crop_size(64, 30) == (32, 8)  # int(h * ch + 0.5)
    assert RandomCrop("absolute", (100, 20)).crop_size(64, 30) == (64, 20)  # at most the image
    torch.manual_seed(0)
    ranges = [RandomCrop("relative_range", (0.5, 0.9)).crop_size(100, 100) for _ in range(200)]
    assert {h for h, _ in ranges} <= set(range(50, 101)) and {w for _, w in ranges} <= set(range(90, 101))
    assert len({h for h, _ in ranges}) > 20
    sides = [RandomCrop("absolute_range", (16, 48)).crop_size(32, 100) for _ in range(200)]
    assert {h for h, _ in sides} == set(range(16, 33)) and {w for _, w in sides} == set(range(16, 49))


def test_crop_cuts_a_window_clips_boxes_and_drops_emptied_instances():
    torch.manual_seed(0)
    image, masks = torch.rand(3, 10, 20), torch.zeros(2, 10, 20, dtype=torch.uint8)
    masks[0, 2:6, 0:3] = 1  # left: outside any window starting at x >= 3
    masks[1, 4:8, 8:14] = 1  # middle: inside every 10 x 10 window, clipped at its sides
    boxes, labels = torch.tensor([[0.0, 2, 3, 6], [8, 4, 14, 8]]), torch.tensor([1, 2])
    crop, dropped = RandomCrop("absolute", (10, 10)), set()
    for _ in range(20):
        cimage, cmasks, cboxes, clabels = crop(image, masks, boxes, labels)
        assert cimage.shape == (3, 10, 10)
        x0 = next(x for x in range(11) if torch.equal(cimage, image[:, :, x:x + 10]))
        kept = [i for i in (0, 1) if masks[i, :, x0:x0 + 10].any()]
        assert clabels.tolist() == [i + 1 for i in kept]
        assert torch.equal(cmasks, masks[kept, :, x0:x0 + 10])
        expected = (boxes[kept] - torch.tensor([x0, 0, x0, 0])).clamp(0, 10)
        assert torch.equal(cboxes, expected)
        dropped.add(0 not in kept)
    assert dropped == {False, True}


def test_crop_from_config_on_training_images_only(shapes):
    cfg = _config(shapes, "INPUT.CROP.ENABLED", "true", "INPUT.CROP.SIZE", "[0.5, 0.5]")
    assert crop_from_config(cfg) == RandomCrop("relative_range", (0.5, 0.5))
    assert crop_from_config(_config(shapes)) is None  # disabled by default
    train, test = (dataset_from_config(cfg, "TRAIN", train=t) for t in (True, False))
    sizes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        for i in range(len(train)):
            image, target = train[i]
            assert SIZE // 2 <= min(image.shape[-2:]) and max(image.shape[-2:]) <= SIZE
            _assert_consistent(image, target)
            sizes.add(tuple(image.shape[-2:]))
    assert len(sizes) > 5 and all(test[i][0].shape[-2:] == (SIZE, SIZE) for i in range(len(test)))


# ----- MODEL.FBNET_V2.DROP_CONNECT_RATE ---------------------------------------------------


def _block(rate: float, stride: int = 1) -> InvertedResidual:
    torch.manual_seed(0)  # the same weights for every rate
    spec = parse_block(["ir_k3", 16, stride, 1, {"e": 2}], "test")
    return InvertedResidual(16, spec, lambda c: nn.GroupNorm(4, c), drop_connect_rate=rate)  # GN: train == eval


def test_drop_connect_drops_the_residual_branch_per_sample_in_training():
    x = torch.randn(16, 16, 8, 8)
    off, on = _block(0.0), _block(0.5)
    assert off.use_residual
    with torch.no_grad():
        trained = off.train()(x)
        branch = trained - x
        assert torch.equal(trained, off.eval()(x))  # rate 0: training sees the eval output
        first, second = on.train()(x), on(x)
        assert not torch.equal(first, second)
        for out in (first, second):
            dropped = [torch.equal(o, xi) for o, xi in zip(out, x)]
            assert 0 < sum(dropped) < len(x)  # per sample, kept ones scaled by 1 / keep
            for o, xi, b, d in zip(out, x, branch, dropped):
                assert d or torch.allclose(o, xi + b / 0.5, atol=1e-5)
        assert torch.equal(on.eval()(x), off.eval()(x)) and torch.equal(on(x), on(x))  # eval: unaffected


def test_drop_connect_leaves_blocks_without_a_residual_alone():
    block = _block(0.5, stride=2).train()
    x = torch.randn(8, 16, 8, 8)
    with torch.no_grad():
        assert not block.use_residual and torch.equal(block(x), block(x))


def test_drop_connect_rate_from_config_reaches_every_part_and_not_eval(shapes):
    x = torch.rand(1, 3, 64, 64)
    outputs = []
    for rate in ("0.0", "0.2"):
        torch.manual_seed(0)
        model = build_model(_config(shapes, "MODEL.FBNET_V2.DROP_CONNECT_RATE", rate)).eval()
        blocks = {name: m for name, m in model.named_modules() if isinstance(m, InvertedResidual)}
        assert {b.drop_connect_rate for b in blocks.values()} == {float(rate)}
        parts = {".".join(name.split(".")[:2]) for name in blocks}
        assert parts == {"backbone.body", "rpn.head", "roi_heads.box_head", "roi_heads.mask_head"}
        with torch.no_grad():
            outputs.append(model.backbone(x)["trunk3"])
    assert torch.equal(*outputs)


def test_training_runs_with_every_knob_on(shapes, tmp_path):
    """Cropped images of different sizes, flips on both axes and drop-connect through the loop."""
    knobs = ["INPUT.RANDOM_FLIP", "both", "INPUT.CROP.ENABLED", "true", "INPUT.CROP.SIZE", "[0.6, 0.6]",
             "MODEL.FBNET_V2.DROP_CONNECT_RATE", "0.2"]
    cfg = load_config(None, TINY_TRAIN + data_overrides(shapes, test=False) + knobs)
    with one_thread():
        losses = train_losses(cfg, tmp_path)
    assert len(losses) == 4 and all(np.isfinite(losses))


# ----- errors and the search spaces --------------------------------------------------------


@pytest.mark.parametrize("overrides, key", [
    (["INPUT.RANDOM_FLIP", "diagonal"], r"INPUT\.RANDOM_FLIP must be one of horizontal, vertical, both, none"),
    (["INPUT.CROP.TYPE", "square"], r"INPUT\.CROP\.TYPE must be one of relative, relative_range, absolute"),
    (["INPUT.CROP.SIZE", "[0.5]"], r"INPUT\.CROP\.SIZE must be two numbers"),
    (["INPUT.CROP.SIZE", "[1.5, 0.5]"], r"INPUT\.CROP\.SIZE must be fractions in \(0, 1\]"),
    (["INPUT.CROP.TYPE", "absolute"], r"INPUT\.CROP\.SIZE must be whole pixels"),
    (["INPUT.CROP.TYPE", "absolute_range", "INPUT.CROP.SIZE", "[48, 16]"], r"INPUT\.CROP\.SIZE must be \[min, max\]"),
])
def test_bad_augmentation_values_name_the_key(shapes, overrides, key):
    cfg = _config(shapes, "INPUT.CROP.ENABLED", "true", *overrides)
    with pytest.raises(UserError, match="^" + key):
        dataset_from_config(cfg, "TRAIN", train=True)


@pytest.mark.parametrize("rate", ["1.0", "-0.1"])
def test_bad_drop_connect_rate_names_the_key(shapes, rate):
    with pytest.raises(UserError, match=r"^MODEL\.FBNET_V2\.DROP_CONNECT_RATE must be in \[0, 1\)"):
        build_model(_config(shapes, "MODEL.FBNET_V2.DROP_CONNECT_RATE", rate))


@pytest.mark.parametrize("name", ["fbnetv3is", "fbnetv3is_quick"])
def test_spaces_search_the_knobs_and_references_keep_the_defaults(name):
    space = load_space(name)
    for reference in space.references.values():
        assert {k: reference.get(k) for k in ("flip", "crop", "crop.size", "drop_connect")} == {
            "flip": "horizontal", "crop": False, "crop.size": None, "drop_connect": 0.0}
    candidate = {**next(iter(space.references.values())), "flip": "both", "crop": True, "crop.size": 0.7,
                 "drop_connect": 0.1}
    cfg = space.to_config(candidate)
    assert cfg["INPUT"]["RANDOM_FLIP"] == "both" and cfg["MODEL"]["FBNET_V2"]["DROP_CONNECT_RATE"] == 0.1
    assert crop_from_config(cfg) == RandomCrop("relative_range", (0.7, 0.7))
    assert space.from_config(cfg) == space.canonical(candidate)
