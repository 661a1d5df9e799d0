"""Constrained sampling of a space: Sobol quasi-Monte-Carlo or uniform, by rejection.

Why rejection: the cost model scores ~10k candidates/s, so drawing points of the unit cube
and keeping those under the MFLOPs / params limits is simple and unbiased within the
feasible set (FBNetV3 stage 1 draws its first round this way). Points come in fixed
batches of 1024, so a seed gives the same sequence whatever ``n`` is (a smaller ``n`` is
a prefix of a larger one). Repeated candidates are skipped. A limit that too few draws
meet ends with a UserError that states how many did and the smallest costs seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

import numpy as np
from scipy.stats import qmc

from nars.errors import UserError
from search_spaces.space import SearchSpace, canonical_id

METHODS = ("sobol", "uniform")
BATCH = 1024
FIRST_HIT_WITHIN = 16 * BATCH  # no feasible candidate by then: the limit is (nearly) infeasible
MAX_DRAWS = 256 * BATCH  # never draw more than this


@dataclass(frozen=True)
class Sample:
    """One candidate with its id and costs: what sampling draws, stage 2's front holds (as
    ``to_dict`` plus its prediction) and the search stores as trials."""

    candidate: dict[str, Any]
    id: str
    mflops: float
    params: int
    latency_ms: float | None = None  # predicted, when sampled under a latency limit

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Sample":
        """The inverse of ``to_dict`` (extra keys, such as a front's prediction, are ignored)."""
        return cls(d["candidate"], d["id"], d["mflops"], d["params"], d.get("latency_ms"))

    def to_dict(self) -> dict[str, Any]:
        latency = {} if self.latency_ms is None else {"latency_ms": round(self.latency_ms, 3)}
        return {"id": self.id, "mflops": round(self.mflops, 3), "params": self.params, **latency,
                "candidate": self.candidate}


def unit_generator(method: str, dims: int, seed: int) -> Callable[[int], np.ndarray]:
    """``draw(m)`` -> [m, dims] points in [0, 1): scrambled Sobol or uniform, seeded."""
    if method == "sobol":
        return qmc.Sobol(d=dims, scramble=True, seed=seed).random
    if method == "uniform":
        rng = np.random.default_rng(seed)
        return lambda m: rng.random((m, dims))
    raise UserError(f"unknown sampling method {method!r}; expected one of {', '.join(METHODS)}")


def sample(
    space: SearchSpace,
    n: int,
    *,
    method: str = "sobol",
    seed: int = 0,
    max_mflops: float | None = None,
    max_params: float | None = None,
    max_latency_ms: float | None = None,
) -> list[Sample]:
    """``n`` distinct candidates with MFLOPs <= max_mflops, params <= max_params and (with the
    space's latency model, ``SearchSpace.with_latency``) predicted latency <= max_latency_ms,
    which each sample then carries."""
    if n < 0:
        raise UserError(f"the number of samples must be >= 0, got {n}")
    if max_latency_ms is not None and space.latency_model is None:
        raise UserError(f"space {space.name}: max_latency_ms needs a latency model (SearchSpace.with_latency)")
    draw = unit_generator(method, space.unit_dims, seed)
    limits = _limit_tuple(max_mflops, max_params, max_latency_ms)
    out: list[Sample] = []
    seen: set[str] = set()
    drawn, smallest = 0, (math.inf, math.inf, math.inf)
    while len(out) < n:
        candidates = space.from_unit(draw(BATCH))
        costs = [space.cost(c, canonical=True) for c in candidates]
        latencies = space.latencies(candidates) if max_latency_ms is not None else [None] * len(candidates)
        for candidate, (mflops, params), latency in zip(candidates, costs, latencies):
            values = (mflops, params, math.inf if latency is None else float(latency))
            smallest = tuple(min(a, b) for a, b in zip(smallest, values))  # type: ignore[assignment]
            if any(v > limit for v, limit in zip(values, limits)):
                continue
            cid = canonical_id(candidate)
            if cid not in seen:
                seen.add(cid)
                out.append(Sample(candidate, cid, mflops, params, None if latency is None else float(latency)))
                if len(out) == n:
                    break
        drawn += BATCH
        needed = drawn * n / len(out) if out else math.inf  # draws this rate would take in all
        if len(out) < n and (drawn >= MAX_DRAWS or (drawn >= FIRST_HIT_WITHIN and needed > MAX_DRAWS)):
            found = f"only {len(out)} of {drawn:,}" if out else f"none of {drawn:,}"
            latency = f", {smallest[2]:.1f} ms predicted" if max_latency_ms is not None else ""
            raise UserError(
                f"space {space.name}: {found} drawn candidates meet {_limits(max_mflops, max_params, max_latency_ms)} "
                f"(the smallest drawn: {smallest[0]:.1f} MFLOPs, {smallest[1]:,} params{latency}); relax the limit"
                + (f" or ask for fewer than {n}" if out else "")
            )
    return out


def _limits(max_mflops: float | None, max_params: float | None, max_latency_ms: float | None = None) -> str:
    parts = ([f"MFLOPs <= {max_mflops:g}"] if max_mflops is not None else [])
    parts += [f"params <= {max_params:g}"] if max_params is not None else []
    parts += [f"predicted latency <= {max_latency_ms:g} ms"] if max_latency_ms is not None else []
    return " and ".join(parts) or "no limit (the space has too few distinct candidates)"


LOCAL_DRAWS = 64  # batches of moves tried before local search gives up on finding more neighbours
KEEP_FLOOR = 0.05  # _nearest_feasible: moves dropping no parameters rank by their cost cut over this


def _costs(space: SearchSpace, candidates: list[dict[str, Any]], limits: tuple[float, float, float]) -> np.ndarray:
    """[N, 3]: each canonical candidate's MFLOPs, params and (under a latency limit) predicted latency."""
    costs = np.array([space.cost(c, canonical=True) for c in candidates], dtype=float).reshape(-1, 2)
    lat = space.latencies(candidates) if math.isfinite(limits[2]) else np.zeros(len(candidates))
    return np.column_stack([costs, np.asarray(lat, dtype=float)])


def _limits_of(space: SearchSpace, candidates: list[dict[str, Any]], limits: tuple[float, float, float]) -> np.ndarray:
    """Each candidate's worst cost-to-limit ratio (<= 1: feasible)."""
    return np.max(_costs(space, candidates, limits) / np.array(limits), axis=1)


def _moves(space: SearchSpace, codes: np.ndarray, changes: int, count: int, rng: np.random.Generator,
           only: Collection[str] | None = None) -> list[dict[str, Any]]:
    """``count`` candidates, each the code row moved in 1 to ``changes`` of its active, non-fixed
    parameters (``Param.neighbour``; only those named in ``only``, when given)."""
    movable = [j for j, p in enumerate(space.params) if p.unit_width and not np.isnan(codes[j])
               and (only is None or p.name in only)]
    filled = np.where(np.isnan(codes), space.unit_codes(np.full((1, space.unit_dims), 0.5))[0], codes)
    rows = np.repeat(filled[None], count, axis=0)
    for row in rows:
        for j in rng.choice(movable, size=min(int(rng.integers(1, changes + 1)), len(movable)), replace=False):
            row[j] = space.params[j].neighbour(row[j], rng)
    return space.from_codes(rows)


def neighbours(
    space: SearchSpace,
    candidate: Mapping[str, Any],
    n: int,
    *,
    changes: int = 2,
    seed: int = 0,
    max_mflops: float | None = None,
    max_params: float | None = None,
    max_latency_ms: float | None = None,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
    only: Collection[str] | None = None,
) -> list[Sample]:
    """Up to ``n`` distinct candidates within the limits that differ from ``candidate`` in 1 to
    ``changes`` parameters, each moved one step: local search around an incumbent, which on
    small budgets nearly matches model-based search (White et al., "Local search is state of
    the art for NAS benchmarks"). When ``candidate`` itself is over a limit, they are its
    nearest feasible relatives instead (``_nearest_feasible``). ``exclude``: ids never returned;
    ``only``: the parameters that may move (e.g. the recipe's, ``SearchSpace.recipe_names``)."""
    limits = _limit_tuple(max_mflops, max_params, max_latency_ms)
    start = space.canonical(candidate)
    if _limits_of(space, [start], limits)[0] > 1:
        return _nearest_feasible(space, start, n, limits, seed, exclude)
    rng, codes = np.random.default_rng(seed), space.codes([start])[0]
    out: dict[str, Sample] = {}
    for _ in range(LOCAL_DRAWS):
        moved = [c for c in _moves(space, codes, changes, BATCH, rng, only)
                 if canonical_id(c) not in exclude | {canonical_id(start)}]
        for c, ratio in zip(moved, _limits_of(space, moved, limits)):
            if ratio <= 1 and len(out) < n:
                out.setdefault(canonical_id(c), _sample(space, c))
        if len(out) >= n:
            break
    return list(out.values())


def _nearest_feasible(space: SearchSpace, candidate: dict[str, Any], n: int, limits: tuple[float, float, float],
                      seed: int, exclude: set[str]) -> list[Sample]:
    """Up to ``n`` distinct candidates within the limits reached from an over-limit ``candidate``
    (a parent costlier than the constraint) by randomised descents: each step of a walk takes,
    of 32 random one-parameter moves that lower the worst cost-to-limit ratio, the one that cuts
    it most per parameter it drops, until the walk is within every limit. Why per parameter:
    a candidate inherits the parent's weights, so a move that cuts compute but keeps weights
    (a smaller RoI pooler, fewer proposals) keeps more of what the parent learned than one that
    narrows a layer. Few steps, so each keeps most of the parent."""
    rng = np.random.default_rng(seed)
    out: dict[str, Sample] = {}
    for _ in range(LOCAL_DRAWS * n):
        if len(out) >= n:
            break
        current = space.canonical(candidate)
        cost = _costs(space, [current], limits)[0]
        ratio = float(np.max(cost / np.array(limits)))
        while ratio > 1:
            moved = _moves(space, space.codes([current])[0], 1, 32, rng)
            costs = _costs(space, moved, limits)
            ratios = np.max(costs / np.array(limits), axis=1)
            dropped = np.clip(cost[1] - costs[:, 1], 0, None) / cost[1]  # the share of parameters each move drops
            gain = np.where(ratios < ratio, (ratio - ratios) / (dropped + KEEP_FLOOR), -np.inf)
            pick = int(np.argmax(gain))
            if not np.isfinite(gain[pick]):
                break
            current, cost, ratio = moved[pick], costs[pick], float(ratios[pick])
        cid = canonical_id(current)
        if ratio <= 1 and cid not in exclude:
            out.setdefault(cid, _sample(space, current))
    return list(out.values())


def _limit_tuple(max_mflops: float | None, max_params: float | None, max_latency_ms: float | None) -> tuple[float, float, float]:
    return tuple(math.inf if v is None else float(v) for v in (max_mflops, max_params, max_latency_ms))  # type: ignore


def _sample(space: SearchSpace, candidate: dict[str, Any]) -> Sample:
    mflops, params = space.cost(candidate, canonical=True)
    latency = None if space.latency_model is None else float(space.latencies([candidate])[0])
    return Sample(candidate, canonical_id(candidate), mflops, params, latency)
