"""Coins: real photo pixels, 10 to 40 objects per image, instance masks, in COCO format.

Why: the shapes (``nars.data.shapes``) are flat colours with exact masks; a benchmark also needs
textured objects, many per image, whose masks come from a real labelling step, still without a
download. scikit-image's wheel ships ``coins.png`` (24 coins on a grey background, 303x384):
``skimage.data.coins()`` reads it from the installed package, without pooch or the network.

Labels, made once from the photo by the classical method of scikit-image's coins gallery
example: markers where the grey level is below 30 (background) or above 150 (coin), a watershed
of the Sobel elevation map from them, holes filled, and the connected components of at least
``MIN_SOURCE_AREA`` px. That yields the 24 coins, one category "coin".

Images (``size`` x ``size``, grey PNG) are copy-paste compositions (as in Ghiasi et al.,
"Simple Copy-Paste", 2021) of those coins on the photo's own background:
- the plate: the photo's illumination (its background, coins and their shadows left out,
  smoothed by normalised Gaussian convolution), per image flipped, rotated by a multiple of 90
  degrees and a random square window of it scaled to the image, plus grain of the strength of
  the background's fine detail. (Filling the coins' holes with real background left visible
  ghost discs: unlabelled look-alikes that would teach false positives.);
- ``MIN_OBJECTS`` to ``MAX_OBJECTS`` coins drawn with replacement from the split's pool, each
  flipped, rotated by a multiple of 90 degrees, scaled (an image-wide scale that makes the coins
  cover about ``COVERAGE`` of the image, times a per-coin jitter: boxes grow with ``size`` and
  the count fits at any size) and given its own brightness and contrast. A coin is pasted with a
  feathered edge (its mask grown by ``RING`` px and blurred) so that its rim and shadow blend into the plate,
  at a place where that edge overlaps no other coin's, its centre at least half its radius
  inside the image (border coins are cut, as in a crop). Its mask is transformed with its pixels
  (the same resampling, thresholded at one half) and clipped to the image;
- the whole image gets brightness and contrast jitter and Gaussian pixel noise.
Masks are compressed RLE; ``bbox`` and ``area`` are those of the visible mask.

Split: validation images are made only of coins that training images never show (every third
coin, 8 of 24, in ``scipy.ndimage.label`` order), so validation AP measures coin faces the model
has not seen rather than copies of training crops. The plate, which holds no objects, is shared.

Determinism, writing and OUT as in ``nars.data.shapes``: image i of a split comes from its own
generator seeded with (seed, split, i), so the same parameters give byte-identical files (for
given numpy, SciPy, Pillow and scikit-image versions) and an image does not depend on how many
are asked for; the dataset is built in a hidden sibling folder and renamed to OUT once
complete; an OUT that already holds this dataset is left alone, any other non-empty OUT refused.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from scipy import ndimage as ndi
from tqdm import tqdm

from nars.data.shapes import SPLITS, write_generated
from nars.errors import UserError

CATEGORIES = ("coin",)
VERSION = 1  # bump when the composition changes, so old folders no longer count as "the same dataset"
MIN_SIZE = 200
MIN_SOURCE_AREA = 500  # px of the photo: drops specks the watershed leaves
MIN_OBJECTS, MAX_OBJECTS = 10, 40
COVERAGE = (0.2, 0.3)  # fraction of the image the coins' masks cover, drawn per image
COIN_JITTER = (0.8, 1.25)  # per-coin factor on the image-wide scale
RING = 3  # px of the photo around a coin's mask pasted with it, fading out
VAL_EVERY = 3  # coins 1, 4, 7, ... (0-based) are validation coins
PLATE_SIGMA = 12  # px of the photo: the background's illumination is smoothed over this
GRAIN_SIGMA = 0.7  # px: white noise blurred by this looks like the photo's grain
CANDIDATES = 256  # positions tried for a coin before the layout starts again at a smaller scale


@dataclass(frozen=True)
class Coin:
    """One labelled coin of the photo: a window around it (edge-padded photo), its mask and its paste weight."""

    pixels: np.ndarray  # float32 [h, w]
    mask: np.ndarray  # bool [h, w]
    alpha: np.ndarray  # float32 [h, w]: 1 on the mask, fading to 0 within RING + blur px outside
    radius: float  # photo px from the window's centre to its farthest pixel of nonzero alpha


@dataclass(frozen=True)
class Source:
    """What the images are made of, from the photo."""

    light: np.ndarray  # float32 [H, W]: the background's illumination, smooth, coins left out
    grain: float  # grey levels: the strength of the background's fine detail
    pools: tuple[list[Coin], list[Coin]]  # train coins, validation coins


@functools.cache
def source() -> Source:
    """The labelled photo: its coins, split into the two pools, and its background's light and grain."""
    from skimage import data, filters, segmentation  # imported here: only this generator needs it

    photo = data.coins()
    markers = np.zeros(photo.shape, np.uint8)
    markers[photo < 30], markers[photo > 150] = 1, 2
    coins = ndi.binary_fill_holes(segmentation.watershed(filters.sobel(photo), markers) == 2)
    labels, count = ndi.label(coins)
    keep = [k for k in range(1, count + 1) if (labels == k).sum() >= MIN_SOURCE_AREA]

    pixels = photo.astype(np.float32)
    pad = RING + 4
    padded = np.pad(pixels, pad, mode="edge")
    pools: tuple[list[Coin], list[Coin]] = ([], [])
    for index, k in enumerate(keep):
        mask = np.pad(labels == k, pad)
        alpha = ndi.gaussian_filter(ndi.binary_dilation(mask, iterations=RING).astype(np.float32), 1.0)
        alpha[mask] = 1.0
        ys, xs = np.nonzero(alpha > 1e-3)
        window = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        h, w = ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
        radius = float(np.hypot(ys - ys.min() - (h - 1) / 2, xs - xs.min() - (w - 1) / 2).max())
        pools[index % VAL_EVERY == 1].append(Coin(padded[window], mask[window], alpha[window], radius))

    background = ~ndi.binary_dilation(coins, iterations=RING + 2)
    weight = ndi.gaussian_filter(background.astype(np.float32), PLATE_SIGMA)
    light = ndi.gaussian_filter(pixels * background, PLATE_SIGMA) / np.maximum(weight, 1e-6)
    detail = _fine(pixels)[background]
    grain = 1.4826 * float(np.median(np.abs(detail - np.median(detail))))  # MAD: not the halos' edges
    return Source(light.astype(np.float32), grain, pools)


def _fine(image: np.ndarray) -> np.ndarray:
    """The detail finer than a few pixels: film grain, dust."""
    return image - ndi.gaussian_filter(image, 2)


def _orient(array: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    return np.rot90(array[:, ::-1] if flip else array, turns)


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (area-weighted when shrinking) resampling of a float image; the same for pixels and masks."""
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
    return np.array(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _plate(rng: np.random.Generator, src: Source, size: int) -> np.ndarray:
    """The background: a window of the photo's illumination, scaled to the image, plus grain made
    at the image's resolution (scaling the photo's own would blur it)."""
    light = _orient(src.light, int(rng.integers(4)), bool(rng.integers(2)))
    side = int(rng.uniform(0.5, 1.0) * min(light.shape))
    y, x = (int(rng.integers(n - side + 1)) for n in light.shape)
    grain = ndi.gaussian_filter(rng.normal(size=(size, size)), GRAIN_SIGMA)
    return _resize(light[y : y + side, x : x + side], size, size) + grain * (src.grain / _fine(grain).std())


def _layout(rng: np.random.Generator, radii: np.ndarray, size: int) -> np.ndarray | None:
    """Centres [n, 2] (y, x) for discs of ``radii``, none overlapping, each centre at least half
    its radius inside the image; largest first. None when a disc finds no place."""
    centres = np.zeros((len(radii), 2))
    placed: list[int] = []
    for i in np.argsort(-radii, kind="stable"):
        margin = radii[i] / 2
        tries = rng.uniform(margin, size - margin, (CANDIDATES, 2))
        gaps = np.linalg.norm(tries[:, None] - centres[placed][None], axis=2) - radii[placed][None] - radii[i]
        free = np.flatnonzero((gaps >= 0).all(axis=1))
        if not free.size:
            return None
        centres[i] = tries[free[0]]
        placed.append(int(i))
    return centres


def render(rng: np.random.Generator, size: int, src: Source, split: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 [size, size]) and its label map (uint8: 0 background, k the k-th coin)."""
    pool = src.pools[split]
    canvas = _plate(rng, src, size)
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    picks = [pool[int(j)] for j in rng.integers(len(pool), size=count)]
    jitter = rng.uniform(*COIN_JITTER, count)
    area = sum(float(c.mask.sum()) * j * j for c, j in zip(picks, jitter))
    scale = np.sqrt(rng.uniform(*COVERAGE) * size * size / area)
    while (centres := _layout(rng, scale * jitter * np.array([c.radius for c in picks]), size)) is None:
        scale *= 0.9
    labels = np.zeros((size, size), np.uint8)
    for k, (coin, factor, (cy, cx)) in enumerate(zip(picks, scale * jitter, centres), start=1):
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        h, w = _orient(coin.mask, turns, flip).shape
        h, w = max(1, round(h * factor)), max(1, round(w * factor))
        pixels, mask, alpha = (_resize(_orient(a, turns, flip), h, w) for a in (coin.pixels, coin.mask, coin.alpha))
        mean = pixels[mask >= 0.5].mean()
        lit = (pixels - mean) * rng.uniform(0.85, 1.15) + mean + rng.uniform(-15, 15)
        pixels += (lit - pixels) * np.clip(mask, 0, 1)  # the coin's light, not its ring of background
        y0, x0 = round(cy - (h - 1) / 2), round(cx - (w - 1) / 2)
        inside = slice(max(0, -y0), min(h, size - y0)), slice(max(0, -x0), min(w, size - x0))
        target = slice(max(0, y0), min(size, y0 + h)), slice(max(0, x0), min(size, x0 + w))
        a = np.maximum(alpha, mask >= 0.5)[inside]
        canvas[target] = canvas[target] * (1 - a) + pixels[inside] * a
        labels[target][mask[inside] >= 0.5] = k
    mean = canvas.mean()
    canvas = (canvas - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-20, 20)
    canvas = canvas + rng.normal(0, rng.uniform(2, 6), canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), labels


def _annotations(labels: np.ndarray, image_id: int, first_id: int) -> list[dict[str, Any]]:
    anns = []
    for k in range(1, int(labels.max()) + 1):
        rle = mask_util.encode(np.asfortranarray(labels == k, dtype=np.uint8))
        anns.append({
            "id": first_id + len(anns),
            "image_id": image_id,
            "category_id": 1,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_util.area(rle)),
            "bbox": [int(v) for v in mask_util.toBbox(rle)],
            "iscrowd": 0,
        })
    return anns


def _write_split(folder: Path, split: int, count: int, size: int, seed: int, params: dict, bar: tqdm) -> None:
    name = SPLITS[split]
    (folder / name).mkdir()
    src = source()
    images, anns = [], []
    for i in range(count):
        image, labels = render(np.random.default_rng([seed, split, i]), size, src, split)
        file_name = f"{i:06d}.png"
        Image.fromarray(image).save(folder / name / file_name, format="PNG")
        images.append({"id": i + 1, "file_name": file_name, "height": size, "width": size})
        anns += _annotations(labels, i + 1, len(anns) + 1)
        bar.update()
    coco = {
        "info": {"description": f"NARS coins (scikit-image's coins photo, copy-paste), {name} split",
                 "params": params},
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "coin", "supercategory": "coin"}],
    }
    (folder / f"{name}.json").write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")


def generate_coins(out: str | Path, *, train: int = 200, val: int = 50, size: int = 400, seed: int = 0,
                   progress: bool = True) -> bool:
    """Write the dataset to ``out``; False when ``out`` already holds exactly this dataset."""
    for flag, value, low in (("--train", train, 1), ("--val", val, 1), ("--size", size, MIN_SIZE), ("--seed", seed, 0)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    params = {"generator": "nars.data.coins", "version": VERSION, "seed": seed, "size": size, "train": train,
              "val": val}
    return write_generated(Path(out), params, "coins", (train, val),
                           lambda staging, split, count, bar: _write_split(staging, split, count, size, seed, params, bar),
                           progress)
