"""The two ends of FBNetV3IS as detectron2 runs them: input resize and batching, output
rescale and mask paste.

Inputs are torchvision's (RGB floats in [0, 1], any size); everything else follows
detectron2's ``DefaultPredictor`` and its training mapper, so that a d2go checkpoint gives
d2go's detections:

- ``ResizeShortestEdge``: the new size is computed in floats and rounded with
  ``int(x + 0.5)``; the image is resized as uint8 by PIL's antialiased bilinear filter, as
  detectron2 does. Images on another device are resized there by torch's antialiased
  bilinear filter in float, rounded: within one grey level of PIL.
  Training masks are resized nearest-neighbour (PIL's NEAREST, torch's ``nearest-exact``).
- Batching pads only to the largest image of the batch (the C4 backbone's
  ``size_divisibility`` is 0), with zeros after normalization.
- ``detector_postprocess``: boxes are scaled to the original size, clipped, and empty ones
  dropped; masks are pasted as detectron2's ``paste_masks_in_image`` pastes them (bilinear
  ``grid_sample`` of the 28x28 probabilities into the box, computed separably). Masks stay probabilities
  ``[N, 1, H, W]`` (torchvision's convention); :func:`binary_masks` is the one threshold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from nars.errors import UserError

MASK_THRESHOLD = 0.5


def binary_masks(masks: Tensor) -> Tensor:
    """``[N, 1, H, W]`` pasted probabilities to ``[N, H, W]`` bool: detectron2's ``>= 0.5``."""
    return masks[:, 0] >= MASK_THRESHOLD


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: (new height, new width)."""
    size = float(short_edge)
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_uint8(image: Tensor, size: tuple[int, int]) -> Tensor:
    """A uint8 ``[C, H, W]`` image resized with PIL's BILINEAR filter (antialiased), as
    detectron2's ``ResizeTransform`` does; by PIL itself on CPU (bit-exact; torch's uint8
    antialiased kernel is off by one grey level on ~0.5% of the pixels of noisy images)."""
    if tuple(image.shape[-2:]) == size:
        return image
    if image.device.type == "cpu" and image.shape[0] in (1, 3):
        pixels = image.permute(1, 2, 0).numpy()
        pil = Image.fromarray(pixels[:, :, 0] if image.shape[0] == 1 else pixels)
        resized = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR))
        return torch.from_numpy(resized.reshape(size[0], size[1], -1).transpose(2, 0, 1).copy())
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def _bilinear_weights(lo: Tensor, hi: Tensor, size: int | Tensor, cells: int, dtype: torch.dtype) -> Tensor:
    """``[N, size, cells]``: for each box ``[lo, hi)`` along one axis and each image pixel,
    ``grid_sample``'s bilinear weights (align_corners False, zero padding) of the mask's
    ``cells`` cells at that pixel's centre, zero outside the box's pixels plus one."""
    pixels = torch.arange(size, device=lo.device, dtype=torch.float32)
    grid = (pixels + 0.5 - lo[:, None]) / (hi - lo)[:, None] * 2 - 1  # [N, size] in the mask's [-1, 1]
    source = ((grid + 1) * cells - 1) / 2  # grid_sample's unnormalised source coordinate
    weights = (1 - (source[:, :, None] - torch.arange(cells, device=lo.device)).abs()).clamp(min=0)
    start = (lo.floor() - 1).clamp(min=0)
    inside = (pixels >= start[:, None]) & (pixels < (hi.ceil() + 1)[:, None])
    return (weights * inside[:, :, None]).to(dtype)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int | Tensor, int | Tensor]) -> Tensor:
    """detectron2's ``paste_masks_in_image`` before its threshold: each ``M x M`` probability
    map (``[N, M, M]``) bilinearly sampled into its box, over the box's pixels (plus one)
    only; ``[N, 1, H, W]`` float.

    Bilinear sampling on a grid whose x depends only on the column and y only on the row is
    separable: ``rows @ mask @ cols^T`` with the 1-D weights of each axis, which equals
    ``grid_sample`` on the box's pixels up to float rounding, for all boxes in two batched
    matrix products (no loop over detections, so it traces into ONNX as it is)."""
    img_h, img_w = image_size
    cells = masks.shape[-1]
    rows = _bilinear_weights(boxes[:, 1], boxes[:, 3], img_h, cells, masks.dtype)  # [N, H, M]
    cols = _bilinear_weights(boxes[:, 0], boxes[:, 2], img_w, cells, masks.dtype)  # [N, W, M]
    return torch.bmm(torch.bmm(rows, masks), cols.transpose(1, 2))[:, None]


def scale_boxes(boxes: Tensor, scale_x: float, scale_y: float) -> Tensor:
    """XYXY boxes scaled per axis (detectron2's ``Boxes.scale``), as a new tensor."""
    boxes = boxes.clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    return boxes


def nonempty(boxes: Tensor) -> Tensor:
    """detectron2's ``Boxes.nonempty()``: positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class FBNetTransform(nn.Module):
    """Resize, normalize and batch the inputs; bring the detections back to each input's size.

    Images come in as RGB floats in [0, 1] (torchvision's convention); they are quantised to
    uint8 (the images the model was trained on), resized, flipped to BGR when
    ``input_format`` is BGR and normalized with pixel mean/std in 0-255 units, as d2go
    weights expect. Training picks a short edge from ``min_size_train`` per image.
    """

    def __init__(
        self,
        min_size_train: Sequence[int],
        max_size_train: int,
        min_size_test: int,
        max_size_test: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        size_divisibility: int = 0,
    ):
        super().__init__()
        if input_format.upper() not in ("RGB", "BGR"):
            raise UserError(f"INPUT.FORMAT must be RGB or BGR, got {input_format!r}")
        if not min_size_train or min(min_size_train) < 1 or min_size_test < 1:
            raise UserError("INPUT.MIN_SIZE_TRAIN and INPUT.MIN_SIZE_TEST must be positive sizes")
        self.train_sizes, self.max_size_train = tuple(int(s) for s in min_size_train), int(max_size_train)
        self.min_size_test, self.max_size_test = int(min_size_test), int(max_size_test)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32)[:, None, None], False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32)[:, None, None], False)
        self.bgr = input_format.upper() == "BGR"
        self.size_divisibility = size_divisibility

    @property
    def min_size(self) -> tuple[int, ...]:
        """The short edges this mode picks from."""
        return self.train_sizes if self.training else (self.min_size_test,)

    @property
    def max_size(self) -> int:
        return self.max_size_train if self.training else self.max_size_test

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The resized (height, width) of an image in this mode (training draws the short edge)."""
        sizes = self.min_size
        short = sizes[int(torch.randint(len(sizes), ()).item())] if len(sizes) > 1 else sizes[0]
        return resized_shape(height, width, short, self.max_size)

    def normalize(self, image: Tensor) -> Tensor:
        """A 0-255 RGB image (any dtype) to the network's input: BGR if asked, mean/std."""
        image = image.float()
        if self.bgr:
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        resized, new_targets = [], []
        for i, image in enumerate(images):
            if image.dim() != 3 or not image.is_floating_point():
                raise ValueError(f"images must be float [C, H, W] tensors in [0, 1], got {tuple(image.shape)}")
            h, w = image.shape[-2:]
            size = self.target_size(h, w)
            pixels = (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)
            resized.append(self.normalize(resize_uint8(pixels, size)))
            if targets is not None:
                new_targets.append(_resize_target(targets[i], (h, w), size))
        return ImageList(self.batch(resized), [tuple(x.shape[-2:]) for x in resized]), (
            new_targets if targets is not None else None
        )

    def batch(self, images: list[Tensor]) -> Tensor:
        """detectron2's ``ImageList.from_tensors``: zero-pad to the largest image (rounded up
        to ``size_divisibility`` when it is positive)."""
        h = max(x.shape[-2] for x in images)
        w = max(x.shape[-1] for x in images)
        if self.size_divisibility > 0:
            d = self.size_divisibility
            h, w = (h + d - 1) // d * d, (w + d - 1) // d * d
        batched = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for x, slot in zip(images, batched):
            slot[:, : x.shape[-2], : x.shape[-1]].copy_(x)
        return batched

    def postprocess(
        self,
        results: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """detectron2's ``detector_postprocess`` for each image (see the module docstring)."""
        if self.training:
            return results
        out = []
        for result, (h, w), (h0, w0) in zip(results, image_sizes, original_sizes):
            boxes = box_ops.clip_boxes_to_image(scale_boxes(result["boxes"], w0 / w, h0 / h), (h0, w0))
            keep = nonempty(boxes)
            result = {k: v[keep] for k, v in result.items()}
            result["boxes"] = boxes[keep]
            if "masks" in result:
                result["masks"] = paste_masks(result["masks"][:, 0], result["boxes"], (h0, w0))
            out.append(result)
        return out


def _resize_target(target: dict[str, Tensor], old: tuple[int, int], new: tuple[int, int]) -> dict[str, Tensor]:
    """Boxes scaled per axis (detectron2's ``ResizeTransform``), masks nearest-neighbour."""
    target = dict(target)
    (h, w), (nh, nw) = old, new
    if (h, w) == (nh, nw):
        return target
    target["boxes"] = scale_boxes(target["boxes"], nw / w, nh / h)
    if "masks" in target:
        masks = target["masks"]
        if len(masks):
            masks = F.interpolate(masks[:, None].float(), size=(nh, nw), mode="nearest-exact")[:, 0]
        else:
            masks = masks.new_zeros((0, nh, nw))
        target["masks"] = masks.to(target["masks"].dtype)
    return target
