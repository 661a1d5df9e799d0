"""FBNetV3IS as one ONNX graph, pre- and post-processing included, for stock onnxruntime.

The graph takes ONE image, ``image``: uint8 RGB ``[3, H, W]`` (any H and W; a decoded
image file as it is), and returns what the PyTorch model returns for it, in the image's
own pixels:

- ``boxes`` float ``[N, 4]`` (XYXY), ``scores`` float ``[N]``, ``labels`` int64 ``[N]``
  (1..C), ``masks`` float ``[N, 1, H, W]`` probabilities (threshold them with
  :func:`nars.model.transform.binary_masks`).

Inside: ResizeShortestEdge to the model's test size, BGR flip and pixel mean/std, trunk,
RPN, RoI heads, NMS, box rescale and mask paste, with standard ONNX ops only (default
opset 17; 16 is the least: ``GridSample``, half-pixel ``RoiAlign``).

The model's own submodules run unchanged (batch norms folded first:
``nars.model.fuse``). The steps of ``FBNetTransform`` that use Python numbers, which
tracing would freeze at the example's size, are computed from shape tensors instead, with
the same arithmetic: :func:`resized_shape_tensor` (detectron2's float64 size and
``int(x + 0.5)``), :func:`resize_like_pil` (PIL's uint8 antialiased bilinear resize, in
integers; ONNX's float ``Resize`` differs from PIL by a grey level on ~10% of pixels,
enough to reorder near-tied detections); ``transform.paste_masks`` has no loop over the
detections and traces as it is.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from PIL import Image
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from nars.data.shapes import render
from nars.engine.inference import load_predictor, read_categories, run_image
from nars.engine.loading import checkpoint_categories
from nars.errors import UserError
from nars.fileio import atomic_write_bytes
from nars.model.fbnetv3is import FBNetV3IS
from nars.model.fuse import fuse_for_inference
from nars.model.transform import binary_masks, nonempty, paste_masks

OPSET = 17
MIN_OPSET = 16  # GridSample; RoiAlign's coordinate_transformation_mode (torchvision's aligned=True)
MAX_OPSET = 20  # torch's TorchScript exporter (dynamo=False, which exports batched NMS)
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels", "masks")
# the graph's own description, in its metadata_props: what runs it needs to know
PRECISION_KEY = "nars.precision"  # fp32, or int8 (nars.deploy.quantize)
SCORE_KEY = "nars.score_threshold"  # MODEL.ROI_HEADS.SCORE_THRESH_TEST, fixed at export
CATEGORIES_KEY = "nars.categories"  # JSON [{"id", "name"}] in label order, as training stored them


PRECISION_BITS = 22  # Pillow's fixed-point coefficients (32 - 8 - 2 bits)


def _as_double(size: Tensor) -> Tensor:
    """A 0-d size as a 1-element float64 tensor: the exporter's type analysis would compute
    with a 0-d one in float32."""
    return size.reshape(1).to(torch.float64)


def _pil_coefficients(in_size: Tensor, out_size: Tensor) -> tuple[Tensor, Tensor]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for its BILINEAR filter on
    one axis: for each output pixel, the ``K`` input indices and int32 fixed-point weights
    (``K = 2 ceil(support) + 1``; weights past Pillow's ``xmax`` are 0). In float64 with
    Pillow's operations (times ``1 / filterscale``, not divided by it)."""
    n_in = _as_double(in_size)
    scale = n_in / _as_double(out_size)
    support = torch.maximum(scale, torch.ones_like(scale))  # the filter's support (1) times the filter scale
    taps = torch.arange((torch.ceil(support) * 2 + 1).to(torch.int64)[0]).to(torch.float64)
    center = (torch.arange(out_size).to(torch.float64) + 0.5) * scale
    first = torch.floor(center - support + 0.5).clamp(min=0)
    count = torch.minimum(torch.floor(center + support + 0.5), n_in) - first
    weights = (1.0 - ((taps + first[:, None] - center[:, None] + 0.5) * torch.reciprocal(support)).abs()).clamp(min=0)
    weights = torch.where(taps < count[:, None], weights, torch.zeros_like(weights))
    weights = weights / weights.sum(1, keepdim=True)
    fixed = torch.floor(weights * (1 << PRECISION_BITS) + 0.5).to(torch.int32)
    index = torch.minimum(taps + first[:, None], n_in - 1).to(torch.int64)
    return index, fixed


def _resample_first_axis(pixels: Tensor, out_size: Tensor) -> Tensor:
    """One Pillow pass along the first axis of an int32 ``[N, A, B]`` image: fixed-point sums,
    rounded (``1 << 21`` added, then floor-divided) and clipped to 0..255, as ``clip8``. The
    taps are gathered as whole rows (an element-wise gather along the last axis made the
    resize of a 480x640 photo 4.8x slower in onnxruntime)."""
    index, fixed = _pil_coefficients(torch.as_tensor(pixels.shape[0]), out_size)
    taps = pixels[index.reshape(-1)].reshape(index.shape[0], index.shape[1], pixels.shape[1], pixels.shape[2])
    total = (taps * fixed[:, :, None, None]).sum(1) + (1 << (PRECISION_BITS - 1))
    return torch.div(total, 1 << PRECISION_BITS, rounding_mode="floor").clamp(0, 255)


def resize_like_pil(image: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """A uint8 ``[C, H, W]`` image resized as ``transform.resize_uint8`` resizes it on the
    CPU (PIL's BILINEAR, antialiased): Pillow's two passes, horizontal first, each rounded to
    integers, in integer arithmetic; traceable at any size. Pillow 13 resizes some tall
    images (height above about twice the width) vertically first: those differ by one grey
    level on some pixels. Returns float ``[C, height, width]`` with integer values."""
    pixels = _resample_first_axis(image.to(torch.int32).permute(2, 0, 1), width)  # [width, C, H]
    pixels = _resample_first_axis(pixels.permute(2, 0, 1), height)  # [height, width, C]
    return pixels.permute(2, 0, 1).to(torch.float32)


def resized_shape_tensor(height: Tensor, width: Tensor, short_edge: int, max_size: int) -> tuple[Tensor, Tensor]:
    """``transform.resized_shape`` on 0-d shape tensors: in float64 as Python's floats, then
    ``floor(x + 0.5)`` (``int()`` of a positive number); 0-d int64 (new height, new width)."""
    h, w = _as_double(height), _as_double(width)
    size = torch.full_like(h, float(short_edge))
    scale = size / torch.minimum(h, w)
    portrait = h < w
    new_h = torch.where(portrait, size, scale * h)
    new_w = torch.where(portrait, scale * w, size)
    longest = torch.maximum(new_h, new_w)
    limit = torch.full_like(h, float(max_size))
    shrink = torch.where(longest > limit, limit / longest, torch.ones_like(longest))
    new_h, new_w = torch.floor(new_h * shrink + 0.5), torch.floor(new_w * shrink + 0.5)
    return new_h.to(torch.int64)[0], new_w.to(torch.int64)[0]


class ExportableFBNet(nn.Module):
    """FBNetV3IS's inference for one uint8 RGB ``[3, H, W]`` image, traceable at any size:
    ``GeneralizedRCNN.forward`` with FBNetTransform's resize and post-processing on shape
    tensors (module docstring). Shares ``model``'s submodules."""

    def __init__(self, model: FBNetV3IS):
        super().__init__()
        self.transform, self.backbone, self.rpn, self.roi_heads = model.transform, model.backbone, model.rpn, model.roi_heads

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h0, w0 = torch.as_tensor(image.shape[-2]), torch.as_tensor(image.shape[-1])
        t = self.transform
        h, w = resized_shape_tensor(h0, w0, t.min_size_test, t.max_size_test)
        x = t.normalize(resize_like_pil(image, h, w))[None]
        features = self.backbone(x)
        images = ImageList(x, [(h, w)])
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        det = detections[0]
        # Python's float64 ratios, cast to float32 as a float32 tensor times a Python float is
        scale_x = (_as_double(w0) / _as_double(w)).to(torch.float32)
        scale_y = (_as_double(h0) / _as_double(h)).to(torch.float32)
        boxes = det["boxes"] * torch.cat([scale_x, scale_y, scale_x, scale_y])
        boxes = box_ops.clip_boxes_to_image(boxes, (h0, w0))
        keep = nonempty(boxes)
        boxes = boxes[keep]
        masks = paste_masks(det["masks"][keep][:, 0], boxes, (h0, w0))
        return boxes, det["scores"][keep], det["labels"][keep], masks


def _checked_target(path: str | Path, opset: int) -> Path:
    """``path`` as a Path, once it and ``opset`` can be written."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset}: must be in [{MIN_OPSET}, {MAX_OPSET}] (GridSample and half-pixel "
                        f"RoiAlign need {MIN_OPSET}; torch's TorchScript exporter stops at {MAX_OPSET})")
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    return path


class GroupNormForExport(nn.Module):
    """``nn.GroupNorm`` without a Reshape. torch exports GroupNorm as a Reshape to
    ``(0, G, -1)``, which onnxruntime cannot resolve for an empty batch (the mask head of an
    image with no detections), and a regrouping with its sizes would meet Reshape's rule that
    a target size of 0 copies the input's. Here the group statistics are the
    per-channel ones averaged by a (channels x groups) matrix product, in float64 (as exact as
    PyTorch's Welford sums); the same normalization and affine otherwise."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.eps, self.weight, self.bias = norm.eps, norm.weight, norm.bias
        size = norm.num_channels // norm.num_groups
        member = torch.arange(norm.num_channels)[:, None] // size == torch.arange(norm.num_groups)[None, :]
        self.register_buffer("member", member.double(), persistent=False)  # [C, G]: channel c is in group g

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(2, x.dim()))
        wide = x.double()
        share = self.member / self.member.sum(0)  # a group's mean is the mean of its channels' means
        mean = wide.mean(dims) @ share @ self.member.T  # [N, C]: each channel's group mean
        square = (wide * wide).mean(dims) @ share @ self.member.T
        spread = (square - mean * mean).clamp(min=0.0)
        per_channel = (slice(None), slice(None)) + (None,) * len(dims)
        y = ((wide - mean[per_channel]) / torch.sqrt(spread[per_channel] + self.eps)).to(x.dtype)
        if self.weight is None:
            return y
        return y * self.weight[per_channel[1:]] + self.bias[per_channel[1:]]


def _exportable_norms(model: nn.Module) -> nn.Module:
    """Every GroupNorm of ``model`` (a copy) as ``GroupNormForExport``."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.GroupNorm:
                setattr(module, child_name, GroupNormForExport(child))
    return model


def with_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """``model`` with ``metadata`` as its metadata_props (replacing any)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return model


def read_metadata(model: onnx.ModelProto | ort.InferenceSession) -> dict[str, str]:
    """A graph's metadata_props, from the model or a session of it."""
    if isinstance(model, ort.InferenceSession):
        return dict(model.get_modelmeta().custom_metadata_map)
    return {entry.key: entry.value for entry in model.metadata_props}


def export_onnx(model: FBNetV3IS, path: str | Path, opset: int = OPSET,
                categories: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Write ``model``'s inference for one image to ``path`` (atomically; the module
    docstring has the graph's inputs and outputs), with its precision, score threshold and
    ``categories`` as metadata. ``model`` itself is left as it is: a copy is folded
    (``fuse_for_inference``) and traced on the CPU."""
    path = _checked_target(path, opset)
    fused = _exportable_norms(fuse_for_inference(copy.deepcopy(model).cpu()))
    t = fused.transform
    example = torch.zeros(3, t.min_size_test, t.min_size_test, dtype=torch.uint8)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            ExportableFBNet(fused), (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {1: "height", 2: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES},
                          "masks": {0: "detections", 2: "height", 3: "width"}},
        )
    exported = onnx.load_model_from_string(buffer.getvalue())
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in exported.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:  # a bug here, not the user's: stock onnxruntime could not run the file
        raise RuntimeError(f"export used non-standard ONNX ops: {', '.join(foreign)}")
    metadata = {PRECISION_KEY: "fp32", SCORE_KEY: repr(float(model.roi_heads.score_thresh))}
    if categories:
        metadata[CATEGORIES_KEY] = json.dumps([{"id": int(c["id"]), "name": str(c["name"])} for c in categories])
    atomic_write_bytes(path, with_metadata(exported, metadata).SerializeToString(), "the ONNX model")


_LOAD_ERRORS = (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
                ort_errors.NoSuchFile, ort_errors.NotImplemented)


def onnx_session(path: str | Path, threads: int | None = None, profile: str | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session of an :func:`export_onnx` file; ``threads``: intra-op
    threads (None: onnxruntime's default, one per core); ``profile``: a file prefix for
    onnxruntime's per-node profile (``session.end_profiling()`` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # idle threads sleep, as OMP_WAIT_POLICY=PASSIVE makes PyTorch's: spinning ones made 2-thread
    # runs on a shared CPU 1.7x slower (BENCHMARKS.md, int8)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _LOAD_ERRORS as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable ONNX model ({first})") from None
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(uint8)" or outputs != list(OUTPUT_NAMES):
        raise UserError(f"{path}: not an FBNetV3IS export (wants input {INPUT_NAME} uint8, outputs "
                        f"{', '.join(OUTPUT_NAMES)}; see nars deploy)")
    return session


def image_array(image: Image.Image | Tensor | np.ndarray) -> np.ndarray:
    """The graph's input: uint8 RGB ``[3, H, W]``, from a PIL image, a uint8 ``[3, H, W]``
    tensor or array, or the PyTorch model's float ``[3, H, W]`` in [0, 1] (quantised as
    ``FBNetTransform`` does)."""
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
        shape = tuple(image.shape) if isinstance(image, (Tensor, np.ndarray)) else type(image).__name__
        raise UserError(f"image must be a PIL image or an RGB [3, H, W] tensor, got {shape}")
    if image.is_floating_point():
        image = (image * 255.0).round().clamp(0, 255)
    elif image.dtype != torch.uint8:
        raise UserError(f"image must be uint8 (0-255) or float (0-1), got {image.dtype}")
    return np.ascontiguousarray(image.detach().cpu().to(torch.uint8).numpy())


def run_onnx(session: ort.InferenceSession, image: Image.Image | Tensor | np.ndarray) -> dict[str, Tensor]:
    """One image's detections, as the PyTorch model's output dict (CPU tensors)."""
    outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image_array(image)})
    return {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, outputs)}


class OnnxDetector:
    """An exported graph called as the PyTorch model is: a list of images (float ``[3, H, W]``
    in [0, 1], or uint8) in, one output dict per image out; so evaluation and prediction run
    exactly the file that is deployed."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = onnx_session(path, threads)
        self.metadata = read_metadata(self.session)

    @property
    def precision(self) -> str:
        return self.metadata.get(PRECISION_KEY, "fp32")

    @property
    def score_threshold(self) -> float | None:
        """The SCORE_THRESH_TEST the graph was exported with (None: a file without NARS metadata)."""
        return float(self.metadata[SCORE_KEY]) if SCORE_KEY in self.metadata else None

    @property
    def categories(self) -> list[dict[str, Any]] | None:
        return json.loads(self.metadata[CATEGORIES_KEY]) if CATEGORIES_KEY in self.metadata else None

    def __call__(self, images: Sequence[Tensor | np.ndarray | Image.Image]) -> list[dict[str, Tensor]]:
        return [run_onnx(self.session, image) for image in images]


@dataclass(frozen=True)
class Parity:
    """onnxruntime's detections against PyTorch's for one image, detection by detection in
    score order (over the first ``min`` of both counts)."""

    image_hw: tuple[int, int]
    detections: tuple[int, int]  # PyTorch, ONNX
    labels_equal: bool
    box_px: float  # max |difference| of box coordinates, in pixels
    score: float  # max |difference| of scores
    mask_mean_abs: float  # mean |difference| of the pasted probabilities
    mask_iou: float  # least IoU of the binary masks (1.0 when no detections)
    mask_px: int  # binary-mask pixels that differ, all detections together

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the CLI."""
        (n_torch, n_onnx), (h, w) = self.detections, self.image_hw
        return (f"onnxruntime vs PyTorch on a {h}x{w} image: {n_onnx} vs {n_torch} detections, labels "
                f"{'equal' if self.labels_equal else 'DIFFER'}, max box diff {self.box_px:.2e} px, max score diff "
                f"{self.score:.2e}, mask mean abs diff {self.mask_mean_abs:.2e}, binary mask IoU >= {self.mask_iou:.4f} "
                f"({self.mask_px} px differ)")


def compare_detections(reference: Mapping[str, Tensor], exported: Mapping[str, Tensor]) -> Parity:
    """:class:`Parity` of ``exported`` (``run_onnx``) against ``reference`` (the model's dict)."""
    n = min(len(reference["scores"]), len(exported["scores"]))
    ref, out = ({k: v[:n].float() for k, v in d.items()} for d in (reference, exported))
    ref_bits, out_bits = binary_masks(ref["masks"]), binary_masks(out["masks"])
    union = (ref_bits | out_bits).flatten(1).sum(1)
    iou = torch.where(union > 0, (ref_bits & out_bits).flatten(1).sum(1) / union.clamp(min=1), torch.ones(n))
    worst = lambda t: float(t.abs().max()) if t.numel() else 0.0  # noqa: E731
    return Parity(
        image_hw=tuple(reference["masks"].shape[-2:]), detections=(len(reference["scores"]), len(exported["scores"])),
        labels_equal=torch.equal(ref["labels"], out["labels"]), box_px=worst(ref["boxes"] - out["boxes"]),
        score=worst(ref["scores"] - out["scores"]),
        mask_mean_abs=float((ref["masks"] - out["masks"]).abs().mean()) if n else 0.0,
        mask_iou=float(iou.min()) if n else 1.0, mask_px=int((ref_bits ^ out_bits).sum()),
    )


def synthetic_image(height: int = 240, width: int = 320, seed: int = 0) -> Image.Image:
    """A shapes scene (``nars.data.shapes``) cropped to ``height x width``: something to
    detect, at a size most test sizes resize."""
    side = max(height, width)
    return Image.fromarray(render(np.random.default_rng(seed), side).image[:height, :width])


def export_checked(cfg: Mapping[str, Any], weights: str, path: str | Path, opset: int = OPSET,
                   threads: int | None = None) -> Parity:
    """``nars deploy``: the config's model with ``weights`` (as ``nars predict`` loads it)
    exported to ``path``, then run once by onnxruntime and by PyTorch on
    :func:`synthetic_image`; their :class:`Parity`."""
    _checked_target(path, opset)  # before the model loads
    model, device = load_predictor(cfg, weights)
    export_onnx(model, path, opset, read_categories(cfg, checkpoint_categories(weights)))
    image = synthetic_image()
    return compare_detections(run_image(model, image, device), run_onnx(onnx_session(path, threads), image))
