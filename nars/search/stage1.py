"""Stage 1, constrained iterative optimization: which candidates each round trains.

Round 0 draws Sobol candidates inside the constraints (a latency limit applies to the
space's predicted latency). Every later round refits the proxy-pretrained predictor on all
results so far and picks from a large constrained pool:
most by predicted segm AP, an ``explore`` share by the ensemble's uncertainty.
With an incumbent (the reference, which the search trains first, then stage 1's best
measured candidate), a ``local`` share of every round is local search around it
(``search_spaces.sampling.neighbours``: one or two parameters moved one step; a reference
above the constraints gives its nearest feasible relatives instead): on small budgets,
searching around the incumbent nearly matches model-based search (White et al., 2021).
A warm-started search (``stage1.warm_start``: earlier runs' results, ``nars.search.warm_start``)
has results before its first trial, so round 0 is such a round too: no Sobol draw; the
``explore`` share, picked where the predictor is least sure, is what is left of Sobol's
exploration.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nars.supernet.subnets import complete, sample_archs, subnet_id
from nars.search.halving import MIN_PAIRS, kendall_tau
from predictor import MLPPredictor, ProxyEncoder, out_of_fold, pretrain_encoder, proxy_data
from search_spaces import SearchSpace, sample
from search_spaces.sampling import Sample, neighbours

METRIC = "segm_AP"


def pretrained_encoder(space: SearchSpace, samples: int, seed: int) -> ProxyEncoder:
    """The architecture encoder pretrained on free proxies (log MFLOPs, log params)."""
    x_arch, proxies = proxy_data(space, samples, seed=seed)
    return pretrain_encoder(x_arch, proxies, seed=seed)


def zero_shot_encoder(space: SearchSpace, records: Sequence[Mapping[str, Any]], base: Mapping[str, Any],
                      seed: int) -> ProxyEncoder:
    """The architecture encoder pretrained on the supernet's zero-shot segm AP (with log MFLOPs
    and params): FBNetV3's proxy pretraining, with a proxy that carries accuracy."""
    x_arch = space.encode([complete(space, r["choices"], base) for r in records])[:, space.arch_slice]
    proxies = np.column_stack([np.log([r["mflops"] for r in records]), np.log([r["params"] for r in records]),
                               [r["segm_AP"] for r in records]])
    return pretrain_encoder(x_arch, proxies, seed=seed)


def _predictor(space: SearchSpace, encoder: ProxyEncoder, seed: int) -> MLPPredictor:
    return MLPPredictor(space.arch_slice.stop - space.arch_slice.start, encoder=encoder, seed=seed)


def _xy(space: SearchSpace, results: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return space.encode([r["candidate"] for r in results]), np.array([r["metrics"][METRIC] for r in results], dtype=float)


def fit_predictor(space: SearchSpace, encoder: ProxyEncoder, results: Sequence[Mapping[str, Any]], seed: int) -> MLPPredictor:
    """Refit on every measured trial (done or pruned: its last reported AP)."""
    return _predictor(space, encoder, seed).fit(*_xy(space, results))


def predictor_gate(space: SearchSpace, encoder: ProxyEncoder, results: Sequence[Mapping[str, Any]], seed: int,
                   min_tau: float | None) -> dict[str, Any]:
    """Whether verification trains the predictor's front: its out-of-fold Kendall tau over the
    results it is fitted on (5 folds, fewer with fewer results) is at least ``min_tau`` (always,
    when None). Fitted on a dozen short trials it was not: its best prediction verified below
    stage 1's best measured candidate in all six benchmark runs (BENCHMARKS.md)."""
    tau = None
    if min_tau is not None and len(results) > MIN_PAIRS:
        x, y = _xy(space, results)
        pred = out_of_fold(lambda: _predictor(space, encoder, seed), x, y, folds=min(5, len(results)), seed=seed)
        tau = kendall_tau(list(zip(pred[:, 0], y)))
    return {"results": len(results), "tau": tau, "min_tau": min_tau,
            "trusted": min_tau is None or (tau is not None and tau >= min_tau)}


def measured(trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [t for t in trials if t["status"] in ("done", "pruned") and t["metrics"] and METRIC in t["metrics"]]


def as_sample(trial: Mapping[str, Any]) -> Sample:
    """A stored trial's candidate, as sampling draws it."""
    return Sample(trial["candidate"], trial["candidate_id"], trial["mflops"], trial["params"], trial["latency_ms"])


def distinct(samples: Sequence[Sample]) -> list[Sample]:
    """Each candidate once, where it first comes."""
    seen: set[str] = set()
    return [s for s in samples if not (s.id in seen or seen.add(s.id))]


def by_measurement(trials: Sequence[Mapping[str, Any]]) -> list[Sample]:
    """Stage 1's candidates, best first: by the rung they reached, then their AP there."""
    ranked = sorted(measured(trials), key=lambda t: (t["reached"] or 0, t["metrics"][METRIC]), reverse=True)
    return distinct([as_sample(t) for t in ranked])


def propose(
    space: SearchSpace,
    round_index: int,
    n: int,
    *,
    constraints: Mapping[str, float | None],
    seed: int,
    encoder: ProxyEncoder,
    results: Sequence[Mapping[str, Any]],
    tried: set[str],
    pool_size: int,
    explore: float,
    archs: Sequence[Mapping[str, Any]] = (),
    incumbent: Mapping[str, Any] | None = None,
    local: float = 0.0,
) -> list[Sample]:
    """The ``n`` candidates round ``round_index`` trains (deterministic per seed and results):
    a ``local`` share of neighbours of ``incumbent`` (when there is one), the rest Sobol points
    while there are no results, else the predictor's picks, whatever the round (warm results
    make round 0 one). ``tried``: candidate ids never proposed again. ``archs`` (the supernet's
    best zero-shot architectures, best first): without results, the Sobol points' recipes are
    tried on those architectures."""
    limits = {k: constraints.get(k) for k in ("max_mflops", "max_params", "max_latency_ms")}
    near = [] if incumbent is None else neighbours(space, incumbent, int(round(local * n)), seed=seed + round_index,
                                                   exclude=set(tried), **limits)
    tried = set(tried) | {s.id for s in near}
    return near + _global(space, round_index, n - len(near), seed=seed, limits=limits, encoder=encoder,
                          results=results, tried=tried, pool_size=pool_size, explore=explore, archs=archs)


def _global(space: SearchSpace, round_index: int, n: int, *, seed: int, limits: Mapping[str, float | None],
            encoder: ProxyEncoder, results: Sequence[Mapping[str, Any]], tried: set[str], pool_size: int,
            explore: float, archs: Sequence[Mapping[str, Any]]) -> list[Sample]:
    """``propose``'s picks over the whole constrained space: Sobol, or the predictor's."""
    if n <= 0:
        return []
    if not results:
        pool = sample(space, n + len(tried), method="sobol", seed=seed + round_index, **limits)
        if archs:
            pool = [_with_arch(space, s.candidate, a) for s, a in zip(pool, archs)]
        return [s for s in pool if s.id not in tried][:n]
    pool = [s for s in sample(space, pool_size, method="uniform", seed=seed + round_index, **limits) if s.id not in tried]
    return [pool[i] for i in _predicted_picks(space, encoder, results, seed, [s.candidate for s in pool], n, explore)]


def _predicted_picks(space: SearchSpace, encoder: ProxyEncoder, results: Sequence[Mapping[str, Any]], seed: int,
                     pool: Sequence[Mapping[str, Any]], n: int, explore: float) -> list[int]:
    """Indices of ``pool``'s ``n`` picks by the predictor fitted on ``results``: the best
    predicted, then an ``explore`` share of the ones it is least sure of (the ensemble's spread)."""
    model = fit_predictor(space, encoder, results, seed)
    mean, std = model.predict(space.encode(pool), return_std=True)
    mean, std = np.asarray(mean).reshape(-1), np.asarray(std).reshape(-1)
    n_explore = int(round(explore * n))
    chosen = list(np.argsort(-mean, kind="stable")[: n - n_explore])
    rest = [i for i in np.argsort(-std, kind="stable") if i not in set(chosen)]
    return chosen + rest[:n_explore]


def zero_shot_search(space: SearchSpace, measure: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], *,
                     samples: int, rounds: int, seed: int, base: Mapping[str, Any], encoder: ProxyEncoder | None,
                     constraints: Mapping[str, float | None], pool_size: int, explore: float,
                     done: Sequence[Sequence[Mapping[str, Any]]] = (),
                     on_round: Callable[[list[list[dict[str, Any]]]], None] | None = None) -> list[dict[str, Any]]:
    """The supernet's architectures measured zero-shot (``measure``: architectures to their
    records, in order), ``samples`` of them in ``rounds``: round 0 draws at random inside the
    constraints, each later round fits the predictor on the zero-shot APs so far (each
    architecture with ``base``'s recipe) and measures its picks from a random constrained pool
    of ``pool_size`` (``_predicted_picks``): zero-shot measurements are cheap enough for the
    search to spend most of them where the good architectures are. ``done``: rounds already
    measured (a resumed run); ``on_round`` gets every round so far after each one, to store
    it. Deterministic per seed and records."""
    rounds_done = [list(r) for r in done]
    per_round = math.ceil(samples / rounds)
    for r in range(len(rounds_done), rounds):
        records = [x for rnd in rounds_done for x in rnd]
        n = min(per_round, samples - len(records))
        if n <= 0:
            break
        tried = {x["id"] for x in records}
        pool = [a for a in sample_archs(space, pool_size if records else n, seed + r, constraints=constraints)
                if subnet_id(a) not in tried]
        if records:
            results = [{"candidate": complete(space, x["choices"], base), "metrics": {METRIC: x["segm_AP"]}}
                       for x in records]
            pool = [pool[i] for i in _predicted_picks(space, encoder, results, seed,
                                                      [complete(space, a, base) for a in pool], n, explore)]
        rounds_done.append(measure(pool[:n]))
        if on_round is not None:
            on_round(rounds_done)
    return [x for rnd in rounds_done for x in rnd]


def _with_arch(space: SearchSpace, candidate: Mapping[str, Any], arch: Mapping[str, Any]) -> Sample:
    """``candidate``'s recipe on architecture ``arch``."""
    c = complete(space, arch, candidate)
    return Sample(c, space.candidate_id(c), *space.cost(c))
