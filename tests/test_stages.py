"""Stage 1's proposals and stage 2's evolution, called directly on the quick space with a
predictor fitted on synthetic results (an AP that grows with MFLOPs, so the front has
something to trade)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nars.config import load_config
from nars.search.evolution import evolve
from nars.search.stage1 import fit_predictor, pretrained_encoder, propose
from search_spaces import load_space, sample

LIMITS = {"max_mflops": 600.0, "max_params": 2_000_000, "max_latency_ms": None}


@pytest.fixture(scope="module")
def setting():
    space = load_space("fbnetv3is_quick").bind(load_config("search_shapes"), {})
    encoder = pretrained_encoder(space, 256, seed=0)
    drawn = sample(space, 12, method="uniform", seed=3, max_mflops=LIMITS["max_mflops"], max_params=LIMITS["max_params"])
    results = [{"candidate": s.candidate, "metrics": {"segm_AP": 0.01 * math.log(s.mflops)}} for s in drawn]
    return space, encoder, results, {s.id for s in drawn}


def _dominated(a: dict, b: dict) -> bool:
    """``b`` dominates ``a``: at least as good in both objectives and better in one."""
    return (b["pred_segm_AP"] >= a["pred_segm_AP"] and b["mflops"] <= a["mflops"]
            and (b["pred_segm_AP"] > a["pred_segm_AP"] or b["mflops"] < a["mflops"]))


@pytest.mark.parametrize("optimizer", ["nsga2", "DE"])
def test_the_evolved_front_is_feasible_non_dominated_and_deterministic(setting, optimizer):
    space, encoder, results, _ = setting
    model = fit_predictor(space, encoder, results, seed=0)
    kwargs = dict(optimizer=optimizer, budget=600, batch_size=64, constraints=LIMITS, use_params=False, seed=0,
                  progress=False)
    front = evolve(space, model, **kwargs)
    assert len(front) >= 2
    assert all(p["mflops"] <= LIMITS["max_mflops"] and p["params"] <= LIMITS["max_params"] for p in front)
    assert not any(_dominated(a, b) for a in front for b in front if a is not b)
    assert [p["pred_segm_AP"] for p in front] == sorted((p["pred_segm_AP"] for p in front), reverse=True)
    assert len({p["id"] for p in front}) == len(front)
    for p in front:  # what the front says is what the space and the predictor say
        assert space.candidate_id(p["candidate"]) == p["id"]
        assert p["mflops"] == pytest.approx(space.cost(p["candidate"])[0])
        assert p["pred_segm_AP"] == pytest.approx(float(np.ravel(model.predict(space.encode([p["candidate"]])))[0]))
    assert evolve(space, model, **kwargs) == front


def test_propose_draws_sobol_first_then_the_predictors_best_and_most_uncertain(setting):
    space, encoder, results, tried = setting
    common = dict(constraints=LIMITS, seed=0, encoder=encoder, pool_size=64, explore=0.5)
    first = propose(space, 0, 4, results=[], tried=set(), **common)
    assert len(first) == 4 and len({s.id for s in first}) == 4
    sobol = sample(space, 4, method="sobol", seed=0, max_mflops=600.0, max_params=2_000_000)
    assert [s.id for s in first] == [s.id for s in sobol]
    later = propose(space, 1, 4, results=results, tried=tried, **common)
    assert len(later) == 4 and not {s.id for s in later} & tried
    assert all(s.mflops <= LIMITS["max_mflops"] and s.params <= LIMITS["max_params"] for s in later)
    pool = [s for s in sample(space, 64, method="uniform", seed=1, max_mflops=600.0, max_params=2_000_000)
            if s.id not in tried]
    model = fit_predictor(space, encoder, results, seed=0)
    mean = np.ravel(model.predict(space.encode([s.candidate for s in pool])))
    best = [pool[i].id for i in np.argsort(-mean, kind="stable")[:2]]
    assert [s.id for s in later[:2]] == best  # half exploit: the best predicted of the pool
    assert [s.id for s in propose(space, 1, 4, results=results, tried=tried, **common)] == [s.id for s in later]
