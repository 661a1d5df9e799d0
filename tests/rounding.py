"""How far float32 rounding can move FBNetV3IS's outputs: tolerances, derived from the
arithmetic, for two computations of the same function that round differently (PyTorch and
onnxruntime, folded and unfolded norms, a zero-padded kernel, another CPU's kernels or
thread count).

The rounding model. Round-to-nearest float32 errs by at most u = EPS/2 relative. A dot
product of K terms errs by about sqrt(K) u times the sum of its terms' magnitudes
(sum |w x|): independent roundings add in quadrature (probabilistic rounding-error analysis,
Higham & Mary 2019), and so do the errors of successive layers, as long as no layer
amplifies relative error (each is normalised). An output of a network of L conv/linear
layers of fan-in <= K thus errs by <= sqrt(L K) u M, with M its own layer's sum |w x| + |b|,
and two computations differ by <= sqrt(L K) EPS M. L counts every layer of the model and K
is the largest fan-in: several times the accumulations on any one path (the margin of the
bound). Measured against float64, FBNetV3IS's heads err by up to 1/4 of sqrt(L K) u M.
The bound is first order: it leaves out discrete flips (a score exactly at an NMS or top-k
cut, an IoU exactly at the NMS threshold), which change which detections exist.

``assert_same_detections`` pushes this through the heads: the softmax, the box decodes,
the sigmoid and the mask paste (each step's derivation is at its line).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nars.model.fbnetv3is import FBNetV3IS

EPS = torch.finfo(torch.float32).eps  # 2^-23, twice the unit roundoff
# Two formulations of one function (folded norms, another memory layout, another upsampling
# order) are compared in float64, which takes rounding out of the question: any amplification
# of rounding that leaves float32 results meaningful (< 1 / EPS) keeps float64 computations
# within EPS64 / EPS = 2^-29 of the values' scale, while a wrong formula moves them by O(1).
SAME_FUNCTION = torch.finfo(torch.float64).eps / EPS


def assert_same_function(actual: Tensor, expected: Tensor) -> None:
    """float64 ``actual`` is ``expected`` up to rounding (``SAME_FUNCTION`` of its scale)."""
    assert actual.dtype == expected.dtype == torch.float64 and actual.shape == expected.shape
    assert (actual - expected).abs().max() <= SAME_FUNCTION * expected.abs().max()


def _fan_in(layer: nn.Conv2d | nn.Linear) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    return layer.in_channels // layer.groups * math.prod(layer.kernel_size)


def rounding_scale(*models: nn.Module) -> float:
    """``sqrt(L K) EPS`` of the largest of ``models``: two float32 computations of an output
    differ by at most this times its magnitude M (module docstring)."""
    scales = []
    for model in models:
        fans = [_fan_in(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        scales.append(math.sqrt(len(fans) * max(fans)) * EPS)
    return max(scales)


def magnitude(layer: nn.Conv2d | nn.Linear, x: Tensor) -> float:
    """``max(sum |w x| + |b|)`` over ``layer``'s outputs for input ``x``: the M of the bound."""
    x, weight = x.detach().abs().double(), layer.weight.detach().abs().double()
    bias = None if layer.bias is None else layer.bias.detach().abs().double()
    if isinstance(layer, nn.Linear):
        return float(F.linear(x, weight, bias).max())
    return float(F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups).max())


@dataclass
class HeadRecord:
    """What one forward pass of FBNetV3IS showed of its output layers."""

    magnitude: dict[str, float] = field(default_factory=dict)  # rpn, cls, box, mask: M (max over runs)
    rpn_log_size: float = 0.0  # the largest RPN width/height delta, over all anchors
    box_delta: float = 0.0  # the largest |delta| of the RoI box regression
    mask_cells: int = 0  # the side of the mask logits (28)


@contextmanager
def recording(model: FBNetV3IS) -> Iterator[HeadRecord]:
    """Records the forward passes of ``model`` run inside the block into a HeadRecord."""
    record = HeadRecord()
    predictor = model.roi_heads.box_predictor
    layers = {"rpn": model.rpn.head.rpn_regressor.bbox_pred, "cls": predictor.cls_score, "box": predictor.bbox_pred,
              "mask": model.roi_heads.mask_head.predictor.mask_fcn_logits}

    def hook(name: str):
        def record_layer(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            record.magnitude[name] = max(record.magnitude.get(name, 0.0), magnitude(layer, inputs[0]))
            if name == "rpn":  # [N, anchors x (dx, dy, dw, dh), H, W]
                deltas = output.detach().unflatten(1, (-1, 4))[:, :, 2:]
                record.rpn_log_size = max([record.rpn_log_size, *deltas.flatten().tolist()])
            elif name == "box":
                record.box_delta = max([record.box_delta, *output.detach().abs().flatten().tolist()])
            elif name == "mask":
                record.mask_cells = output.shape[-1]
        return record_layer

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Tolerances:
    """Per reference detection: how far the other computation's score and box coordinates
    (px) may be."""

    score: Tensor
    box: Tensor


def mask_tolerance(record: HeadRecord, reference_boxes: Tensor, other_boxes: Tensor, image_hw: tuple[int, int],
                   scale: float) -> Tensor:
    """Per detection: how far each pasted mask probability may be, given both computations'
    boxes for it (the paste is exact arithmetic on them, so their actual difference counts).

    The pasted probability is a convex combination (bilinear weights summing to <= 1) of
    sigmoid(logit) cells, sigmoid' <= 1/4: the logits' error over 4. Both edges moved by e
    move a pixel's sampled cell by cells e / side (1 - t + t for a pixel a fraction t across
    the box; window pixels up to 1.5 px outside it: 1 + 3 / side), and its probability by as
    much (neighbouring cells differ by <= 1). The paste's own arithmetic rounds too: a pixel's
    source cell, ``(pixel + 0.5 - x1) / side * cells``, to about 2 EPS image sizes over the
    side (in cells), and its two matrix products like sums of ``cells`` terms <= 1."""
    cells = record.mask_cells
    a, b = reference_boxes.double(), other_boxes.double()
    width, height = (a[:, 2:] - a[:, :2]).unbind(1)
    image_h, image_w = image_hw
    moved_x = (a[:, 0::2] - b[:, 0::2]).abs().amax(1) + 2 * EPS * image_w
    moved_y = (a[:, 1::2] - b[:, 1::2]).abs().amax(1) + 2 * EPS * image_h
    mask = (scale * record.magnitude["mask"] / 4 + cells * moved_x * (1 + 3 / width) / width
            + cells * moved_y * (1 + 3 / height) / height + 2 * math.sqrt(cells) * EPS)
    # The paste covers the pixels from floor(x1) - 1 to ceil(x2) + 1 (detectron2's window).
    # Where the two windows differ, a row or column is in one only; its source coordinate is
    # 1.5 cells / side past the edge cell's centre minus a half, so it holds up to
    # 0.5 - 1.5 cells / side of that cell's probability (nothing for sides up to 3 cells px).
    window = lambda boxes: torch.cat([boxes[:, :2].floor(), boxes[:, 2:].ceil()], 1)  # noqa: E731
    moved_window = (window(a) != window(b)).any(1)
    edge = (0.5 - 1.5 * cells / torch.minimum(width, height)).clamp(min=0)
    return torch.where(moved_window, mask + edge, mask).clamp(max=1.0)


def detection_tolerances(model: FBNetV3IS, record: HeadRecord, reference: Mapping[str, Tensor],
                         scale: float) -> Tolerances:
    """The bounds of the module docstring for ``reference`` (``model``'s output for one image,
    ``record`` of that run), pushed through the heads; ``scale``: ``rounding_scale``."""
    d = {name: scale * m for name, m in record.magnitude.items()}  # each head's output error
    p = reference["scores"].double()
    # softmax: dp_i = p_i (dz_i - sum_j p_j dz_j), so |dp_i| <= 2 p_i (1 - p_i) max |dz|; plus
    # the softmax's own exp, sum and division, a few roundings of p_i
    score = 2 * p * (1 - p) * d["cls"] + 2 * EPS * p

    # boxes, in the resized image (h x w), then scaled back by r per axis
    h0, w0 = reference["masks"].shape[-2:]
    h, w = model.transform.target_size(h0, w0)
    r = torch.tensor([w0 / w, h0 / h] * 2, dtype=torch.float64)
    boxes = reference["boxes"].double() / r
    sides = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    generator = model.rpn.anchor_generator
    anchor = max(s * math.sqrt(max(a, 1 / a)) for sizes, ratios in zip(generator.sizes, generator.aspect_ratios)
                 for s in sizes for a in ratios)  # the longest anchor side
    clip = model.rpn.box_coder.bbox_xform_clip
    longest = anchor * math.exp(min(record.rpn_log_size, clip))  # the longest proposal before clipping
    wx, wy, ww, wh = model.roi_heads.box_coder.weights
    grow = math.exp(min(record.box_delta / min(ww, wh), clip))  # the RoI decode scales a side by at most this
    # A detection's proposal (before clipping) is at most its box grown back, unless it was
    # clipped at the image's border: then only `longest` bounds it.
    border = (boxes[:, :2] <= 0.5).any(1) | (boxes[:, 2] >= w - 0.5) | (boxes[:, 3] >= h - 0.5)
    proposal = torch.where(border, torch.full_like(sides, longest), torch.clamp(sides * grow, max=longest))
    # decode (torchvision's BoxCoder): x1 = cx + dx / wx * side - exp(dw / ww) * side / 2, so a
    # delta error e moves x1 by (side / wx + new side / (2 ww)) e. RPN: weights 1, the anchor's
    # side, then the proposal's.
    proposal_error = (anchor + proposal / 2) * d["rpn"]
    # RoI decode: x1 moves with the proposal's corners by sum |dx1/dcorner| <= 1 + 2 |dx| / wx +
    # (exp(|dw| / ww) - 1), and with its own deltas as above
    follow = 1 + 2 * record.box_delta / min(wx, wy) + (grow - 1)
    box = follow * proposal_error + (proposal / min(wx, wy) + sides / (2 * min(ww, wh))) * d["box"]
    # the coordinates' own roundings (a few, of values up to the image plus the longest proposal)
    box = (box + 2 * EPS * (max(h, w) + longest)) * float(r.max()) + 2 * EPS * max(h0, w0)

    return Tolerances(score, box)


def _pairs(reference: Mapping[str, Tensor], other: Mapping[str, Tensor], tol: Tolerances) -> dict[int, int]:
    """Reference index -> other index: same label, score within the bound, the nearest box
    among those (detections whose scores are within the bound of each other may come out in
    either order), each used once, in reference order."""
    score_ok = (reference["scores"].double()[:, None] - other["scores"].double()[None]).abs() <= tol.score[:, None]
    allowed = score_ok & (reference["labels"][:, None] == other["labels"][None])
    distance = (reference["boxes"].double()[:, None] - other["boxes"].double()[None]).abs().amax(-1)
    pairs: dict[int, int] = {}
    for i in range(len(reference["scores"])):
        free = allowed[i].clone()
        free[list(pairs.values())] = False
        if free.any():
            pairs[i] = int(torch.where(free, distance[i], torch.inf).argmin())
    return pairs


def assert_same_detections(model: FBNetV3IS, record: HeadRecord, reference: Mapping[str, Tensor],
                           other: Mapping[str, Tensor], scale: float) -> dict[str, float]:
    """``other`` is ``reference`` (``model``'s detections for one image, ``record`` of that
    run) up to float32 rounding: the same detections, each score and box within
    ``detection_tolerances``, each pasted mask probability within ``mask_tolerance``. A
    detection may lack a partner only at the cut (top-k or score threshold): its score within
    its bound of the other side's lowest. Returns the largest difference / bound of each field
    (<= 1)."""
    assert other["labels"].dtype == torch.int64 and other["masks"].shape[1:] == reference["masks"].shape[1:]
    assert len(reference["scores"]) > 0
    tol = detection_tolerances(model, record, reference, scale)
    pairs = _pairs(reference, other, tol)
    lost = [i for i in range(len(reference["scores"])) if i not in pairs]
    extra = sorted(set(range(len(other["scores"]))) - set(pairs.values()))
    if lost or extra:
        lowest = float(other["scores"].min()) if len(other["scores"]) else 0.0
        assert len(lost) == len(extra), f"{len(reference['scores'])} vs {len(other['scores'])} detections"
        assert all(float(reference["scores"][i]) <= lowest + float(tol.score[i]) for i in lost), (
            f"reference detections {lost} have no partner within the bounds")
    i, j = (torch.tensor(list(pairs.keys())), torch.tensor(list(pairs.values())))
    ratios = {
        "score": float(((reference["scores"][i] - other["scores"][j]).double().abs() / tol.score[i]).max()),
        "box": float(((reference["boxes"][i] - other["boxes"][j]).double().abs().amax(1) / tol.box[i]).max()),
        "mask": float(((reference["masks"][i] - other["masks"][j]).double().abs().flatten(1).amax(1)
                       / mask_tolerance(record, reference["boxes"][i], other["boxes"][j], reference["masks"].shape[-2:],
                                        scale)).max()),
    }
    assert max(ratios.values()) <= 1.0, f"difference / bound: {ratios} (bounds: {tol})"
    return ratios
