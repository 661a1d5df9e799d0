"""Pareto fronts of (accuracy up, cost down), their hypervolume, and the front plot."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Sequence

import numpy as np

from nars.fileio import atomic_save_png


def pareto_mask(accuracy: Sequence[float], costs: Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
    """True for points no other point dominates (accuracy >= and every cost <=, one strictly).
    O(n log n) for one cost (stage 2 takes the front of up to a million points); sorted
    chunks against the front found so far for more."""
    acc = np.asarray(accuracy, dtype=float)
    cost = np.asarray(costs, dtype=float).reshape(len(acc), -1) if len(acc) else np.zeros((0, 1))
    if cost.shape[1] == 1:
        return _mask_one_cost(acc, cost[:, 0])
    return nondominated(np.column_stack([-acc, cost]))


def _mask_one_cost(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Sorted by cost: a point survives when it beats every strictly cheaper point's accuracy
    and ties the best accuracy at its own cost."""
    order = np.lexsort((-acc, cost))
    a, c = acc[order], cost[order]
    new_cost = np.r_[True, c[1:] != c[:-1]] if len(c) else np.zeros(0, dtype=bool)
    group = np.cumsum(new_cost) - 1
    group_best = np.maximum.reduceat(a, np.flatnonzero(new_cost)) if len(a) else a
    cheaper_best = np.r_[-np.inf, np.maximum.accumulate(group_best)[:-1]]
    keep = np.zeros(len(acc), dtype=bool)
    keep[order] = (a > cheaper_best[group]) & (a >= group_best[group])
    return keep


def _dominance(block: np.ndarray, others: np.ndarray) -> np.ndarray:
    """[len(block), len(others)]: does ``others[j]`` dominate ``block[i]`` (objectives minimised);
    one 2-D comparison per objective (several times faster than a 3-D broadcast)."""
    no_worse = np.ones((len(block), len(others)), dtype=bool)
    better = np.zeros((len(block), len(others)), dtype=bool)
    for j in range(block.shape[1]):
        theirs, mine = others[None, :, j], block[:, None, j]
        no_worse &= theirs <= mine
        better |= theirs < mine
    return no_worse & better


def nondominated(objectives: np.ndarray, chunk: int = 256) -> np.ndarray:
    """True for rows (objectives, all minimised) no other row dominates. Lexicographic order
    puts every dominator before what it dominates, so each sorted chunk is checked against
    the non-dominated rows before it and itself: O(n (front + chunk)) comparisons."""
    f = np.asarray(objectives, dtype=float)
    order = np.lexsort(f.T[::-1])
    keep = np.zeros(len(f), dtype=bool)
    front = f[:0]
    for start in range(0, len(f), chunk):
        idx = order[start:start + chunk]
        block = f[idx]
        ok = ~_dominance(block, np.vstack([front, block])).any(axis=1)
        keep[idx] = ok
        front = np.vstack([front, block[ok]])
    return keep


def nondominated_ranks(objectives: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Front number of each row (0: non-dominated; k: dominated only by fronts < k), all
    objectives minimised (NSGA-II's sorting): one more than the highest rank among a row's
    dominators. Two objectives: one sorted sweep, O(n log n), where front k dominates a point
    exactly when its latest member sorts (f2, f1) before it. More: in lexicographic order
    (dominators first), chunk by chunk against the rows before it, O(n^2) comparisons."""
    f = np.asarray(objectives, dtype=float)
    ranks = np.zeros(len(f), dtype=np.int64)
    if f.shape[1] == 2:
        latest: list[tuple[float, float]] = []  # per front, (f2, f1) of its latest member: increasing
        for i in np.lexsort((f[:, 1], f[:, 0])).tolist():
            key = (f[i, 1], f[i, 0])
            k = bisect.bisect_left(latest, key)
            latest[k:k + 1] = [key]
            ranks[i] = k
        return ranks
    order = np.lexsort(f.T[::-1])
    g, r = f[order], np.zeros(len(f), dtype=np.int64)
    for start in range(0, len(g), chunk):
        stop = min(start + chunk, len(g))
        dom = _dominance(g[start:stop], g[:stop])
        before = np.where(dom[:, :start], r[None, :start], -1).max(axis=1, initial=-1) + 1
        inside, current = dom[:, start:], before
        while True:  # chains inside the chunk: as many passes as the longest one
            update = np.maximum(before, np.where(inside, current[None, :], -1).max(axis=1, initial=-1) + 1)
            if np.array_equal(update, current):
                break
            current = update
        r[start:stop] = current
    ranks[order] = r
    return ranks


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
