"""Synthetic instance segmentation: coloured shapes on textured backgrounds, in COCO format.

Why: a dataset that needs no download, that a small Mask R-CNN learns in minutes on a CPU,
and whose masks are exact, so AP measures the model and not label noise.

Each image has a background of smooth random colour blobs, a faint grating and pixel noise,
and 1 to ``Domain.max_shapes`` shapes (``CATEGORIES``) of random colour, size, position and rotation,
painted in order so that later shapes occlude earlier ones. A pixel belongs to a shape when
its centre lies inside it (no anti-aliasing): the picture is painted from the label map, so
each mask is exactly the shape's visible pixels. A placement that would leave an earlier
shape less than ``MIN_VISIBLE`` visible is drawn again, so every painted shape is annotated.
Colours keep a distance from the background and from each other. Masks are compressed RLE;
``bbox`` and ``area`` are those of the visible mask.

Determinism: image i of a split comes from its own generator seeded with (seed, split, i), so
the same parameters give byte-identical files (for given numpy and Pillow versions), and an
image does not depend on how many images are asked for.

Writing: the dataset is built in a hidden sibling folder and renamed to OUT once complete, so
OUT never holds half a dataset. OUT may be missing or an empty folder. If OUT already holds a
complete shapes dataset made with the same parameters, nothing is done; any other non-empty
OUT is refused rather than overwritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm

from nars.errors import UserError
from nars.fileio import make_dirs, staged_folder

CATEGORIES = ("circle", "square", "triangle", "star")
SPLITS = ("train", "val")
VERSION = 1  # bump when the drawing changes, so old folders no longer count as "the same dataset"
MIN_VISIBLE = 0.5  # fraction of a shape that must stay visible under later shapes


@dataclass(frozen=True)
class Domain:
    """How a domain's images look. Two domains of the same categories let the project show
    fine-tuning a parent trained on one ("shapes") on the other ("cells") without a download."""

    max_shapes: int
    radius: tuple[float, float]  # circumradius, as a fraction of the image side
    noise: int  # pixel noise: uniform integers in [-noise, noise] on every channel
    dark: bool  # a dark, nearly flat background (microscopy-like) instead of colour blobs and a grating


DOMAINS = {
    "shapes": Domain(max_shapes=4, radius=(0.08, 0.2), noise=8, dark=False),
    "cells": Domain(max_shapes=10, radius=(0.04, 0.1), noise=16, dark=True),
}
COLOUR_GAP = 110.0  # wanted RGB distance from the background colour and the other shapes
PLACEMENT_TRIES = 20
MIN_SIZE = 32


@dataclass(frozen=True)
class Scene:
    """One drawn image: ``labels`` holds 0 for background and k for the k-th shape's visible pixels."""

    image: np.ndarray  # uint8 [S, S, 3]
    labels: np.ndarray  # uint8 [S, S]
    category_ids: list[int]  # of shapes 1..n (COCO ids, 1-based index into CATEGORIES)
    colours: np.ndarray  # float [n, 3]


def _vertices(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    corners = {"square": 4, "triangle": 3, "star": 10}[kind]
    radii = np.where(np.arange(corners) % 2, 0.45 * r, r) if kind == "star" else np.full(corners, r)
    theta = angle + 2 * np.pi * np.arange(corners) / corners
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def _inside_polygon(vertices: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Even-odd rule for every pixel centre at once: count edge crossings of a ray to +x."""
    (x0, y0), (x1, y1) = vertices.T[:, :, None, None], np.roll(vertices, -1, axis=0).T[:, :, None, None]
    y, x = centres[None, :, None], centres[None, None, :]
    spans = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return np.logical_xor.reduce(spans & (x < crossing_x), axis=0)


def _shape_mask(kind: str, cx: float, cy: float, r: float, angle: float, centres: np.ndarray) -> np.ndarray:
    if kind == "circle":
        return (centres[None, :] - cx) ** 2 + (centres[:, None] - cy) ** 2 <= r * r
    return _inside_polygon(_vertices(kind, cx, cy, r, angle), centres)


def _background(rng: np.random.Generator, size: int, dark: bool) -> tuple[np.ndarray, np.ndarray]:
    """Smooth colour blobs (a coarse grid, bilinearly upsampled), a grating; and the base colour.
    ``dark``: a dim grey base with faint blobs and no grating."""
    base = rng.uniform(10, 45, 1).repeat(3) if dark else rng.uniform(40, 215, 3)
    grid = int(rng.integers(3, 7))
    coarse = base + rng.uniform(-10, 10, (grid, grid, 1) if dark else (grid, grid, 3))
    t = (np.arange(size) + 0.5) / size * (grid - 1)
    hat = np.clip(1 - np.abs(t[:, None] - np.arange(grid)[None, :]), 0, None)  # linear interpolation weights
    field = np.einsum("ig,ghc,jh->ijc", hat, coarse, hat)
    freq, theta, phase = rng.uniform(0.05, 0.25), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[:size, :size]
    grating = 12 * np.sin(2 * np.pi * freq * (xs * np.cos(theta) + ys * np.sin(theta)) + phase)
    return field + (0 if dark else grating[:, :, None]), base


def _pick_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """The first of 16 random colours at COLOUR_GAP from all of ``avoid``, else the farthest."""
    candidates = rng.uniform(0, 255, (16, 3))
    gaps = np.linalg.norm(candidates[:, None] - np.asarray(avoid)[None], axis=2).min(axis=1)
    ok = gaps >= COLOUR_GAP
    return candidates[int(np.argmax(ok)) if ok.any() else int(np.argmax(gaps))]


def render(rng: np.random.Generator, size: int, domain: Domain = DOMAINS["shapes"]) -> Scene:
    """Draw one image and its label map."""
    background, base = _background(rng, size, domain.dark)
    centres = np.arange(size) + 0.5
    labels = np.zeros((size, size), np.uint8)
    full_areas = [0]
    category_ids: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, domain.max_shapes + 1))):
        for _ in range(PLACEMENT_TRIES):
            kind = int(rng.integers(len(CATEGORIES)))
            r = rng.uniform(*domain.radius) * size
            cx, cy = rng.uniform(r, size - r, 2)
            mask = _shape_mask(CATEGORIES[kind], cx, cy, r, rng.uniform(0, 2 * np.pi), centres)
            trial = np.where(mask, len(full_areas), labels).astype(np.uint8)
            visible = np.bincount(trial.ravel(), minlength=len(full_areas) + 1)
            if mask.any() and all(visible[k] >= MIN_VISIBLE * full_areas[k] for k in range(1, len(full_areas))):
                labels = trial
                full_areas.append(int(mask.sum()))
                category_ids.append(kind + 1)
                colours.append(_pick_colour(rng, [base, *colours]))
                break
    palette = np.concatenate([np.zeros((1, 3)), np.asarray(colours).reshape(-1, 3)])
    image = np.where(labels[:, :, None] > 0, palette[labels], background)
    image = image + rng.integers(-domain.noise, domain.noise + 1, image.shape)
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), labels, category_ids, palette[1:])


def _annotations(scene: Scene, image_id: int, first_id: int) -> list[dict[str, Any]]:
    anns = []
    for k, category_id in enumerate(scene.category_ids, start=1):
        rle = mask_util.encode(np.asfortranarray(scene.labels == k, dtype=np.uint8))
        anns.append({
            "id": first_id + len(anns),
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_util.area(rle)),
            "bbox": [int(v) for v in mask_util.toBbox(rle)],
            "iscrowd": 0,
        })
    return anns


def _params(train: int, val: int, size: int, seed: int, domain: str) -> dict[str, Any]:
    params = {"generator": "nars.data.shapes", "version": VERSION, "seed": seed, "size": size, "train": train, "val": val}
    return params if domain == "shapes" else {**params, "domain": domain}  # older folders stay "the same dataset"


def _write_split(folder: Path, split: int, count: int, size: int, seed: int, params: dict, bar: tqdm) -> None:
    name = SPLITS[split]
    (folder / name).mkdir()
    images, anns = [], []
    domain = DOMAINS[params.get("domain", "shapes")]
    for i in range(count):
        scene = render(np.random.default_rng([seed, split, i]), size, domain)
        file_name = f"{i:06d}.png"
        Image.fromarray(scene.image).save(folder / name / file_name, format="PNG")
        images.append({"id": i + 1, "file_name": file_name, "height": size, "width": size})
        anns += _annotations(scene, i + 1, len(anns) + 1)
        bar.update()
    coco = {
        "info": {"description": f"NARS synthetic shapes, {name} split", "params": params},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)],
    }
    (folder / f"{name}.json").write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")


def _holds(out: Path, params: dict[str, Any]) -> bool:
    """Whether ``out`` is a complete shapes dataset made with ``params``."""
    for name in SPLITS:
        try:
            coco = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
            if coco["info"]["params"] != params:
                return False
            if not all((out / name / img["file_name"]).is_file() for img in coco["images"]):
                return False
        except (OSError, ValueError, KeyError, TypeError):
            return False
    return True


def generate_shapes(out: str | Path, *, train: int = 300, val: int = 50, size: int = 128, seed: int = 0,
                    domain: str = "shapes", progress: bool = True) -> bool:
    """Write the dataset to ``out``; False when ``out`` already holds exactly this dataset."""
    for flag, value, low in (("--train", train, 1), ("--val", val, 1), ("--size", size, MIN_SIZE), ("--seed", seed, 0)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if domain not in DOMAINS:
        raise UserError(f"--domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    params = _params(train, val, size, seed, domain)
    return write_generated(Path(out), params, "shapes", (train, val),
                           lambda staging, split, count, bar: _write_split(staging, split, count, size, seed, params, bar),
                           progress)


WriteSplit = Callable[[Path, int, int, tqdm], None]


def write_generated(out: Path, params: dict[str, Any], kind: str, counts: tuple[int, int], write_split: WriteSplit,
                    progress: bool) -> bool:
    """A generated dataset's folder, written whole or not at all (staged, renamed into place):
    False when ``out`` already holds exactly this dataset (its ``params``); another non-empty
    folder is refused. ``write_split(staging, split, count, bar)`` writes each split."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if _holds(out, params):
                return False
            raise UserError(f"{out}: not empty and not a {kind} dataset with these parameters; "
                            "choose another folder or remove it")
    target = make_dirs(out.absolute().parent, "the dataset's parent folder") / out.name
    with staged_folder(target, f"the {kind} dataset") as staging, \
            tqdm(total=sum(counts), desc=f"{kind} {out}", unit="img", disable=not progress) as bar:
        for split, count in enumerate(counts):
            write_split(staging, split, count, bar)
    return True
