"""Pareto fronts of (accuracy up, cost down), their hypervolume, and the front plot."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nars.fileio import atomic_save_png


def pareto_mask(accuracy: Sequence[float], costs: Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
    """True for points no other point dominates (accuracy >= and every cost <=, one strictly)."""
    acc = np.asarray(accuracy, dtype=float)
    cost = np.asarray(costs, dtype=float).reshape(len(acc), -1)
    keep = np.ones(len(acc), dtype=bool)
    for i in range(len(acc)):
        no_worse = (acc >= acc[i]) & (cost <= cost[i]).all(axis=1)
        better = (acc > acc[i]) | (cost < cost[i]).any(axis=1)
        keep[i] = not (no_worse & better).any()
    return keep


def hypervolume(accuracy: Sequence[float], cost: Sequence[float], ref_cost: float, ref_accuracy: float = 0.0) -> float:
    """Area dominated by the points in (accuracy up, cost down) above ``ref_accuracy`` and
    below ``ref_cost``: one number that grows with a better front."""
    pts = sorted((c, a) for a, c in zip(accuracy, cost) if a > ref_accuracy and c < ref_cost)
    area, best = 0.0, ref_accuracy
    for i, (c, a) in enumerate(pts):
        best = max(best, a)
        next_cost = pts[i + 1][0] if i + 1 < len(pts) else ref_cost
        area += (next_cost - c) * (best - ref_accuracy)
    return area


def plot_front(
    path: Path,
    points: dict[str, tuple[Sequence[float], Sequence[float]]],
    front: tuple[Sequence[float], Sequence[float]],
    reference: tuple[float, float] | None,
    title: str,
    xlabel: str = "MFLOPs",
    ylabel: str = "segm AP",
) -> None:
    """PNG with every trial (one colour per group), the measured front and the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, (xs, ys) in points.items():
        ax.scatter(xs, ys, s=22, alpha=0.7, label=label)
    fx, fy = front
    order = np.argsort(fx)
    ax.step(np.asarray(fx)[order], np.asarray(fy)[order], where="post", color="black", lw=1.5, label="measured front")
    if reference is not None:
        ax.scatter([reference[0]], [reference[1]], marker="*", s=180, color="crimson", label="FBNetV3_A_dsmask (same budget)")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_save_png(path, fig)
