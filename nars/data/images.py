"""Image files as 8-bit RGB: the one reader training, evaluation and ``nars predict`` share.

Why one reader: how a file becomes the model's pixels must not depend on the command.

- EXIF orientation is applied (photos come out upright).
- Images with more than 8 bits per pixel (16-bit PNGs and TIFFs, 32-bit integer or float
  TIFFs: PIL modes ``I;16*``, ``I``, ``F``) are scaled by their own range, as microscopy tools
  such as ImageJ set an automatic display range: the smallest value becomes 0, the largest
  255, linearly in between (rounded); a constant image becomes 0; NaN pixels count as the
  smallest value and +-Inf as the ends. PIL's own ``convert("RGB")`` would saturate them to
  white. A warning states the rule once per process.
- An image over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, left as PIL sets
  it) is a UserError naming the file; a file PIL cannot decode raises ``UnreadableImage``,
  which the callers turn into a skip.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from nars.errors import UserError

logger = logging.getLogger(__name__)

WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits per pixel
_warned = False


class UnreadableImage(Exception):
    """A file PIL cannot decode (corrupt, truncated, not an image); the message says why."""


def _scaled_to_8bit(image: Image.Image, path: str | Path) -> Image.Image:
    """A single-channel wide image as mode L by its own range (see the module docstring)."""
    global _warned
    if not _warned:
        _warned = True
        logger.warning("%s: %s image (more than 8 bits per pixel); such images are scaled by their own range "
                       "(min..max -> 0..255, a constant image -> 0)", path, image.mode)
    pixels = np.asarray(image, dtype=np.float64)
    finite = pixels[np.isfinite(pixels)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    pixels = np.nan_to_num(pixels, nan=lo, posinf=hi, neginf=lo)
    scaled = (pixels - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(pixels)
    return Image.fromarray(np.round(scaled).astype(np.uint8))  # 2-D uint8: mode L


def read_rgb(path: str | Path) -> Image.Image:
    """The file as an upright 8-bit RGB image (rules in the module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                image = ImageOps.exif_transpose(im)
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"{path}: refused: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(str(e)) from None
    if image.mode in WIDE_MODES:
        image = _scaled_to_8bit(image, path)
    return image.convert("RGB")
