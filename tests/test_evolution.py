"""Stage 2's batch path and NSGA-II: the batch cost and encoding against the scalar
functions, the Pareto helpers against their O(n^2) definitions, and the evolved fronts
(feasible, non-dominated, deterministic, better than random sampling)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nars.config import get, load_config
from nars.errors import UserError
from nars.model.cost import config_cost
from nars.search.evolution import _crowding, evolve
from nars.search.pareto import hypervolume, nondominated_ranks, pareto_mask
from search_spaces import SPACE_DIR, load_space
from search_spaces.batch_cost import BatchCost

SPACES = sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))
NO_LIMITS = {"max_mflops": None, "max_params": None, "max_latency_ms": None}


def _unit_points(space, n: int, seed: int) -> np.ndarray:
    """Random points plus the cube's corners (every parameter at its lowest, at its highest)."""
    u = np.random.default_rng(seed).random((n, space.unit_dims))
    return np.vstack([u, np.zeros(space.unit_dims), np.full(space.unit_dims, np.nextafter(1.0, 0.0))])


@pytest.mark.parametrize("bound", [False, True])
@pytest.mark.parametrize("name", SPACES)
def test_batch_cost_and_encoding_are_the_scalar_ones_to_the_bit(name, bound):
    space = load_space(name)
    if bound:
        space = space.bind(load_config("search_shapes"), {"MODEL.RPN.POST_NMS_TOPK_TEST": 20})
    codes = space.unit_codes(_unit_points(space, 300, seed=len(name)))
    candidates = space.from_codes(codes)
    assert candidates == space.from_unit(_unit_points(space, 300, seed=len(name)))
    mflops, params = BatchCost(space)(codes)
    scalar = [space.cost(c, canonical=True) for c in candidates]
    assert mflops.tolist() == [m for m, _ in scalar] and params.tolist() == [p for _, p in scalar]
    assert np.array_equal(space.encode_codes(codes), space.encode(candidates))


def _dominated_brute(acc: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """pareto_mask's definition, pair by pair."""
    out = np.zeros(len(acc), dtype=bool)
    for i in range(len(acc)):
        no_worse = (acc >= acc[i]) & (cost <= cost[i]).all(axis=1)
        better = (acc > acc[i]) | (cost < cost[i]).any(axis=1)
        out[i] = (no_worse & better).any()
    return out


@pytest.mark.parametrize("costs", [1, 2, 3])
def test_pareto_mask_and_ranks_match_the_definition_with_ties(costs):
    rng = np.random.default_rng(costs)
    for _ in range(60):
        n = int(rng.integers(1, 80))
        acc = rng.integers(0, 6, n).astype(float)  # few values: many ties and duplicates
        cost = rng.integers(0, 6, (n, costs)).astype(float)
        keep = ~_dominated_brute(acc, cost)
        assert np.array_equal(pareto_mask(acc, cost), keep)
        if costs == 1:
            assert np.array_equal(pareto_mask(acc.tolist(), cost[:, 0].tolist()), keep)
        ranks, left, k = nondominated_ranks(np.column_stack([-acc, cost])), np.arange(n), 0
        while len(left):  # peel fronts by the definition
            top = ~_dominated_brute(acc[left], cost[left])
            assert (ranks[left[top]] == k).all()
            left, k = left[~top], k + 1
    assert pareto_mask([], []).shape == (0,)


def test_crowding_is_infinite_at_each_fronts_ends_and_relative_inside():
    f = np.array([[0.0, 4.0], [1.0, 2.0], [3.0, 0.0], [1.0, 5.0], [2.0, 4.0]])
    ranks = nondominated_ranks(f)
    assert ranks.tolist() == [0, 0, 0, 1, 1]
    d = _crowding(f, ranks)
    assert math.isinf(d[0]) and math.isinf(d[2]) and math.isinf(d[3]) and math.isinf(d[4])
    assert d[1] == pytest.approx((3 - 0) / 3 + (4 - 0) / 4)


class LinearPredictor:
    """A stand-in for the MLP: a fixed random linear function of the encoding, squashed."""

    def __init__(self, dims: int, seed: int = 0):
        self.w = np.random.default_rng(seed).normal(size=dims)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(np.asarray(x) @ self.w / 4.0)[:, None]


class FakeLatency:
    """A latency 'model': 1 ms per 20 MFLOPs, 3 ms more with GN (a recipe knob latency reads)."""

    def predict_configs(self, configs) -> np.ndarray:
        return np.array([config_cost(cfg, arch).mflops["total"] / 20 + 3.0 * (get(cfg, "MODEL.FBNET_V2.NORM") == "GN")
                         for cfg, arch in configs])


@pytest.fixture(scope="module")
def quick():
    space = load_space("fbnetv3is_quick").bind(load_config("search_shapes"), {})
    return space, LinearPredictor(space.encoding_length)


def _check_front(space, model, front, limits, costs):
    assert front
    assert [p["pred_segm_AP"] for p in front] == sorted((p["pred_segm_AP"] for p in front), reverse=True)
    assert len({p["id"] for p in front}) == len(front)
    for p in front:
        assert set(p) == {"id", "candidate", "pred_segm_AP", "mflops", "params"} | ({"latency_ms"} if
                                                                                     space.latency_model else set())
        assert space.candidate_id(p["candidate"]) == p["id"]
        assert (p["mflops"], p["params"]) == space.cost(p["candidate"])
        assert p["pred_segm_AP"] == pytest.approx(float(np.ravel(model.predict(space.encode([p["candidate"]])))[0]))
        for key, limit in (("mflops", "max_mflops"), ("params", "max_params"), ("latency_ms", "max_latency_ms")):
            assert limits.get(limit) is None or p[key] <= limits[limit]
    acc = np.array([p["pred_segm_AP"] for p in front])
    assert pareto_mask(acc, np.array([[p[c] for c in costs] for p in front])).all()


def test_nsga2_front_is_feasible_non_dominated_and_deterministic(quick):
    space, model = quick
    limits = {"max_mflops": 300.0, "max_params": 1_500_000, "max_latency_ms": None}
    kwargs = dict(optimizer="nsga2", budget=3000, batch_size=256, constraints=limits, use_params=False, seed=0,
                  progress=False)
    front = evolve(space, model, **kwargs)
    assert len(front) >= 5
    _check_front(space, model, front, limits, ["mflops"])
    assert evolve(space, model, **kwargs) == front
    assert evolve(space, model, **{**kwargs, "seed": 1}) != front
    three = evolve(space, model, **{**kwargs, "use_params": True})
    _check_front(space, model, three, limits, ["mflops", "params"])


def test_nsga2_beats_random_sampling_and_nevergrad_de_at_equal_evaluations(quick):
    space, model = quick
    common = dict(constraints=NO_LIMITS, use_params=False, seed=0, progress=False)
    # a budget of one batch is NSGA-II's initial population: uniform random points
    fronts = {"random": evolve(space, model, optimizer="nsga2", budget=4096, batch_size=4096, **common),
              "nsga2": evolve(space, model, optimizer="nsga2", budget=4096, batch_size=256, **common),
              "DE": evolve(space, model, optimizer="DE", budget=4096, batch_size=256, **common)}
    ref = max(p["mflops"] for f in fronts.values() for p in f)
    hv = {k: hypervolume([p["pred_segm_AP"] for p in f], [p["mflops"] for p in f], ref, -1.0) for k, f in fronts.items()}
    assert hv["nsga2"] > hv["random"] and hv["nsga2"] > hv["DE"]


def test_latency_limits_and_objective_use_the_latency_model(quick):
    space, model = quick
    space = space.with_latency(FakeLatency())
    limits = {"max_mflops": None, "max_params": None, "max_latency_ms": 12.0}
    for objective in ("mflops", "latency"):
        front = evolve(space, model, optimizer="nsga2", budget=1024, batch_size=256, constraints=limits,
                       use_params=False, seed=0, objective=objective, progress=False)
        _check_front(space, model, front, limits, ["latency_ms" if objective == "latency" else "mflops"])
        assert [p["latency_ms"] for p in front] == space.latencies([p["candidate"] for p in front]).tolist()


def test_unknown_optimizer_and_latency_without_a_model_are_user_errors(quick):
    space, model = quick
    common = dict(budget=10, batch_size=10, use_params=False, seed=0, progress=False)
    with pytest.raises(UserError, match="neither nsga2 nor a nevergrad optimizer"):
        evolve(space, model, optimizer="nope", constraints=NO_LIMITS, **common)
    with pytest.raises(UserError, match="latency model"):
        evolve(space, model, optimizer="nsga2", constraints={**NO_LIMITS, "max_latency_ms": 5.0}, **common)
