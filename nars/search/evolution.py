"""Stage 2, predictor-based evolutionary search (nevergrad) over the whole space.

The genome is a point of the space's unit cube (one coordinate per free parameter), so
every point decodes to a valid candidate. Objectives, minimised: -predicted segm AP and
MFLOPs, or the predicted latency with ``objective="latency"`` (and params with
``use_params``); the MFLOPs / params / latency limits are constraint violations (latency
needs the space's latency model, ``SearchSpace.with_latency``). Candidates are asked and
scored in batches: one call of each predictor per batch.
The front is taken over everything evaluated (nevergrad's own ``pareto_front`` is not
used: it fails on subsets, see the reference notes).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import nevergrad as ng
import numpy as np
from tqdm import tqdm

from nars.errors import UserError
from nars.search.pareto import pareto_mask
from predictor import MLPPredictor
from search_spaces import SearchSpace
from search_spaces.space import canonical_id


def evolve(
    space: SearchSpace,
    model: MLPPredictor,
    *,
    optimizer: str,
    budget: int,
    batch_size: int,
    constraints: Mapping[str, float | None],
    use_params: bool,
    seed: int,
    objective: str = "mflops",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The predicted Pareto set: feasible candidates no other evaluated one dominates,
    each ``{id, candidate, pred_segm_AP, mflops, params}`` (and ``latency_ms`` with a latency
    model), best predicted AP first."""
    if optimizer not in ng.optimizers.registry:
        raise UserError(f"stage2.optimizer: unknown nevergrad optimizer {optimizer!r} (e.g. DE, TwoPointsDE, NGOpt)")
    with_latency = space.latency_model is not None
    if not with_latency and (objective == "latency" or constraints.get("max_latency_ms") is not None):
        raise UserError("stage 2 optimises or limits latency only with a latency model (SearchSpace.with_latency)")
    max_latency = constraints.get("max_latency_ms")
    max_latency = math.inf if max_latency is None else max_latency
    param = ng.p.Array(shape=(space.unit_dims,), lower=0.0, upper=1.0)
    param.random_state = np.random.RandomState(seed)
    opt = ng.optimizers.registry[optimizer](parametrization=param, budget=budget, num_workers=batch_size)
    max_mflops = constraints["max_mflops"] if constraints["max_mflops"] is not None else math.inf
    max_params = constraints["max_params"] if constraints["max_params"] is not None else math.inf
    seen: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=budget, desc="stage 2 (predictor)", unit="eval", disable=not progress, dynamic_ncols=True)
    done = 0
    while done < budget:
        asked = [opt.ask() for _ in range(min(batch_size, budget - done))]
        points = np.clip(np.stack([a.value for a in asked]), 0.0, np.nextafter(1.0, 0.0))
        candidates = space.from_unit(points)
        ap = np.asarray(model.predict(space.encode(candidates))).reshape(-1)
        latencies = space.latencies(candidates) if with_latency else np.zeros(len(candidates))
        with warnings.catch_warnings():  # nevergrad's penalty scaling warns on its first zero-loss tells
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="nevergrad")
            for a, candidate, score, latency in zip(asked, candidates, ap, latencies.tolist()):
                mflops, params = space._cost(candidate)  # from_unit's candidates are already canonical
                cost = latency if objective == "latency" else mflops
                losses = [-float(score), cost] + ([float(params)] if use_params else [])
                violation = [max(0.0, mflops - max_mflops), max(0.0, params - max_params),
                             max(0.0, latency - max_latency)]
                opt.tell(a, losses, constraint_violation=violation)
                if not any(violation):
                    cid = canonical_id(candidate)
                    seen[cid] = {"id": cid, "candidate": candidate, "pred_segm_AP": float(score), "mflops": mflops,
                                 "params": int(params), **({"latency_ms": latency} if with_latency else {})}
        done += len(asked)
        bar.update(len(asked))
        if seen:
            bar.set_postfix_str(f"feasible {len(seen)} best predicted segm AP {max(s['pred_segm_AP'] for s in seen.values()):.3f}")
    bar.close()
    if not seen:
        raise UserError("stage 2 found no candidate inside the constraints; "
                        "relax constraints.max_mflops / max_params / max_latency_ms")
    items = list(seen.values())
    key = "latency_ms" if objective == "latency" else "mflops"
    costs = [[s[key]] + ([s["params"]] if use_params else []) for s in items]
    keep = pareto_mask([s["pred_segm_AP"] for s in items], costs)
    front = [s for s, k in zip(items, keep) if k]
    return sorted(front, key=lambda s: -s["pred_segm_AP"])
