"""Synchronous successive halving: stage 1's early stopping, decided per rung.

Every trial of a round trains to the rung's iteration, then the rung is decided at once
from all of its results: the best ``ceil(n / reduction_factor)`` go on (ASHA's cutoff, the
rung's ``1 - 1/rf`` quantile, once every trial of the rung has reported). Equal APs, common
at stage 1's short budgets where many are 0, are ranked by the training loss logged last,
then kept in the round's order. Unlike ASHA, which decides as reports arrive, nothing depends on which trial
finishes first, so the same results give the same decisions at any concurrency, on any cluster.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

METRIC = "segm_AP"


def milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The rungs' iterations: grace_period * reduction_factor**k below max_t, then max_t."""
    rungs, m = [], max(1, grace_period)
    while m < max_t:
        rungs.append(m)
        m *= reduction_factor
    return rungs + [max_t]


def survivors(trials: Sequence[Mapping[str, Any]], reduction_factor: int) -> list[str]:
    """Ids of the rung's trials that go on: the best ``ceil(n / reduction_factor)`` by their
    metrics at the rung, segm AP then lower loss (a stable ranking: full ties keep the order given)."""
    def rank(i: int) -> tuple[float, float]:
        m = trials[i]["metrics"] or {}
        return -m.get(METRIC, 0.0), m.get("loss", math.inf)

    keep = math.ceil(len(trials) / reduction_factor)
    ranked = sorted(range(len(trials)), key=rank)
    chosen = set(ranked[:keep])
    return [t["id"] for i, t in enumerate(trials) if i in chosen]
