"""FBNetV3IS exported to ONNX (nars.deploy.onnx) against the PyTorch model, in real onnxruntime.

The model is the d2go golden checkpoint (tests/data/d2go_golden: FBNetV3_A_dsmask trained on
the shapes, 4 classes, test size 128/160), exported once per module with every detection
kept (SCORE_THRESH_TEST 0). Images: generated shapes scenes at sizes the graph does not
resize (128x128, 128x160: dynamic H and W) and at sizes it resizes (upscaled and
downscaled), and the golden images, whose d2go outputs are matched as well.

Tolerances, and what was measured (2 CPU cores, onnxruntime 1.32, torch 2.14): the graph
folds batch norms and onnxruntime's kernels round differently, nothing else differs (the
resize is PIL's in integers, bit-exact; the mask paste is the same arithmetic), so resized
and unresized images get the same tolerances: boxes 1e-3 px (measured <= 8e-5; 2e-4 for the
random-weight GroupNorm model), scores 1e-5 (<= 1.1e-6; 2.9e-6), masks 1e-5 mean abs
(<= 4e-8; 1.1e-6), binary masks IoU >= 0.99 per detection (a single pixel differed in
about 1 image of 30, IoU 0.999); counts and labels identical.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine_helpers import make_shapes, one_thread
from nars.cli import main
from nars.config import load_config
from nars.deploy.onnx import (
    compare_detections,
    export_onnx,
    onnx_session,
    resize_like_pil,
    resized_shape_tensor,
    run_onnx,
)
from nars.engine.inference import load_predictor, read_rgb, run_image
from nars.errors import UserError
from nars.model.fbnetv3is import build_model
from nars.model.transform import binary_masks, paste_masks, resize_uint8, resized_shape

GOLDEN = Path(__file__).parent / "data" / "d2go_golden"
KEEP_ALL = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0"]
BOX_PX, SCORE, MASK_MEAN_ABS, MASK_IOU = 1e-3, 1e-5, 1e-5, 0.99


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The golden checkpoint (all detections kept), its ONNX session, and shapes images."""
    tmp = tmp_path_factory.mktemp("onnx")
    cfg = load_config(GOLDEN / "nars_config.yaml", KEEP_ALL)
    with one_thread():
        model, device = load_predictor(cfg, str(GOLDEN / "golden_model.pth"))
        export_onnx(model, tmp / "model.onnx")
    shapes = make_shapes(tmp / "shapes", train=1, val=2, size=200)
    images = [read_rgb(p) for p in sorted((shapes / "val").glob("*.png"))]
    return model, device, onnx_session(tmp / "model.onnx", threads=1), images


def assert_parity(reference: dict[str, torch.Tensor], onnx: dict[str, torch.Tensor]) -> None:
    p = compare_detections(reference, onnx)
    assert p.detections[0] == p.detections[1] > 0 and p.labels_equal
    assert onnx["labels"].dtype == torch.int64 and onnx["masks"].shape == reference["masks"].shape
    assert p.box_px <= BOX_PX and p.score <= SCORE and p.mask_mean_abs <= MASK_MEAN_ABS and p.mask_iou >= MASK_IOU


# (left, top, right, bottom) crops of the 200x200 scenes; the test size is 128, at most 160
CROPS = {
    "128x128 as is": (10, 20, 138, 148),
    "128x160 as is": (0, 30, 160, 158),  # another size through the same graph
    "150x97 upscaled": (50, 0, 147, 150),  # 97 -> 128 would make 198 > 160: capped to 103x160
    "200x200 downscaled": (0, 0, 200, 200),
    "90x100 upscaled": (20, 40, 120, 130),
}


@pytest.mark.parametrize("crop", CROPS)
def test_onnx_matches_pytorch_on_shapes(exported, crop):
    model, device, session, images = exported
    for image in images:
        image = image.crop(CROPS[crop])
        with one_thread():
            assert_parity(run_image(model, image, device), run_onnx(session, image))


def test_onnx_matches_d2go_golden(exported):
    """The golden images through the export: PyTorch's outputs, and d2go's top detections."""
    model, device, session, _ = exported
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    for name in ("000000.png", "odd_150x97.png"):  # odd_150x97 is resized
        image = read_rgb(GOLDEN / name)
        with one_thread():
            out = run_onnx(session, image)
            assert_parity(run_image(model, image, device), out)
        g = dict(np.load(GOLDEN / name.replace(".png", ".npz")))
        assert [i["file"] for i in manifest["images"]].count(name) == 1
        n = len(g["scores"])  # d2go's scores are all above the config's 0.05 and well apart
        assert (out["labels"][:n] - 1).tolist() == g["pred_classes"].tolist()
        assert np.abs(out["boxes"][:n].numpy() - g["pred_boxes"]).max() <= 0.5
        assert np.abs(out["scores"][:n].numpy() - g["scores"]).max() <= 1e-3
        masks, golden = binary_masks(out["masks"][:n]).numpy(), g["pred_masks"].astype(bool)
        iou = (masks & golden).sum((1, 2)) / np.maximum((masks | golden).sum((1, 2)), 1)
        assert iou.min() >= 0.98


def test_onnx_takes_images_as_the_model_does(exported):
    """PIL images, uint8 tensors and the model's float [0, 1] tensors give the same result."""
    _, _, session, images = exported
    image = images[0].crop(CROPS["128x160 as is"])
    pixels = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
    outs = [run_onnx(session, x) for x in (image, pixels, pixels.float() / 255, pixels.numpy())]
    for out in outs[1:]:
        assert all(torch.equal(out[k], outs[0][k]) for k in out)


def test_resize_and_size_equal_the_pytorch_path():
    """The graph's resize is PIL's (bit-exact; wide and moderately tall images: Pillow 13
    resizes images taller than about twice their width vertically first) and its size
    arithmetic is detectron2's, at the sizes ResizeShortestEdge asks for."""
    g = torch.Generator().manual_seed(0)
    for h, w, short, longest in [(97, 150, 128, 160), (480, 640, 240, 320), (90, 100, 128, 160), (333, 517, 320, 320),
                                 (300, 200, 128, 1333), (1000, 1333, 800, 1333), (7, 5, 128, 160)]:
        size = resized_shape(h, w, short, longest)
        assert tuple(int(x) for x in resized_shape_tensor(torch.tensor(h), torch.tensor(w), short, longest)) == size
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        assert torch.equal(resize_like_pil(image, *map(torch.tensor, size)), resize_uint8(image, size).float())


def _paste_per_box(masks: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """detectron2's CPU ``paste_masks_in_image`` as written: per box, ``grid_sample`` over the
    box's pixels plus one."""
    out = masks.new_zeros((len(masks), 1, h, w))
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        x0, y0 = (box[:2].floor() - 1).clamp(min=0).to(torch.int64).tolist()
        x1, y1 = int(min(math.ceil(box[2].item()) + 1, w)), int(min(math.ceil(box[3].item()) + 1, h))
        ys = ((torch.arange(y0, y1, dtype=torch.float32) + 0.5) - box[1]) / (box[3] - box[1]) * 2 - 1
        xs = ((torch.arange(x0, x1, dtype=torch.float32) + 0.5) - box[0]) / (box[2] - box[0]) * 2 - 1
        grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))], dim=2)
        out[i, 0, y0:y1, x0:x1] = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
    return out


def test_the_separable_paste_equals_detectron2s_per_box_grid_sample():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 28, 28, generator=g)
    xy = (torch.rand(20, 2, generator=g) * torch.tensor([150.0, 90.0]) - 5).clamp(min=0)
    boxes = torch.cat([xy, torch.minimum(xy + 1 + torch.rand(20, 2, generator=g) * 60, torch.tensor([160.0, 100.0]))], 1)
    boxes[0] = torch.tensor([0.0, 0.0, 160.0, 100.0])  # the whole image
    boxes[1] = torch.tensor([3.3, 4.7, 3.9, 5.2])  # under a pixel
    assert (paste_masks(masks, boxes, (100, 160)) - _paste_per_box(masks, boxes, 100, 160)).abs().max() <= 1e-6
    assert paste_masks(masks[:0], boxes[:0], (100, 160)).shape == (0, 1, 100, 160)


def test_export_random_weights_other_arch_and_norm(tiny_cfg, tmp_path):
    """FBNetV3_A (not dsmask) with GroupNorm (not folded): exports and matches as well; with
    every proposal kept, their number differs from the traced example's (it stays dynamic);
    with none kept, the exported graph returns no detection instead of failing."""
    cfg = tiny_cfg("MODEL.FBNET_V2.ARCH", "FBNetV3_A", "MODEL.FBNET_V2.NORM", "GN", "MODEL.RPN.POST_NMS_TOPK_TEST",
                   "1000", *KEEP_ALL)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.5)  # scores apart, not tied
    rng = np.random.default_rng(0)
    with one_thread():
        export_onnx(model, tmp_path / "tiny.onnx")
        session = onnx_session(tmp_path / "tiny.onnx", 1)
        for hw in ((70, 90), (64, 70)):
            image = Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
            assert_parity(run_image(model, image, torch.device("cpu")), run_onnx(session, image))
        # no detection at all: the GN mask head runs on an empty batch
        model.roi_heads.score_thresh = 1.01
        export_onnx(model, tmp_path / "none.onnx")
        empty = run_onnx(onnx_session(tmp_path / "none.onnx", 1), image)
        assert empty["boxes"].shape == (0, 4) and empty["masks"].shape[0] == 0
        assert run_image(model, image, torch.device("cpu"))["boxes"].shape == (0, 4)


def test_nars_deploy_cli(tmp_path, capsys):
    out = tmp_path / "golden.onnx"
    assert main(["deploy", str(GOLDEN / "nars_config.yaml"), "--weights", str(GOLDEN / "golden_model.pth"),
                 "--onnx", str(out), *KEEP_ALL]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "opset 17" in printed and "labels equal" in printed
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's, for the foreign file
def test_bad_onnx_files_and_images(exported, tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(UserError, match="missing.onnx: no such ONNX file"):
        onnx_session(missing)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="corrupt.onnx: not a loadable ONNX model"):
        onnx_session(corrupt)
    other = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.ReLU(), (torch.zeros(3),), other, dynamo=False)
    with pytest.raises(UserError, match="other.onnx: not an FBNetV3IS export"):
        onnx_session(other)
    session = exported[2]
    for image, message in ((torch.zeros(4, 8, 8, dtype=torch.uint8), r"RGB \[3, H, W\] tensor, got \(4, 8, 8\)"),
                           (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8 .0-255. or float .0-1., got torch.int32"),
                           ("image.png", "got str")):
        with pytest.raises(UserError, match=message):
            run_onnx(session, image)
    assert main(["deploy", str(GOLDEN / "nars_config.yaml"), "--weights", str(GOLDEN / "golden_model.pth"),
                 "--onnx", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "m.onnx: folder" in capsys.readouterr().err
