"""Sub-networks of a space: the architecture part of a candidate, completed by one recipe.

A weight-sharing supernet holds the weights of the space's *largest* architecture; every
other architecture of the space is a slice of it (``nars.model.elastic``). What a
sub-network is, is the arch part of a candidate (the parameters the architecture or the
cost model reads: ``SearchSpace.arch_names``); the recipe part, which weights cannot share,
comes from one *base* candidate (the experiment's reference: the parent's own recipe).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from nars.errors import UserError
from search_spaces import SearchSpace, sample
from search_spaces.space import canonical_id


def arch_part(space: SearchSpace, candidate: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture parameters of a canonical candidate."""
    return {k: v for k, v in space.canonical(candidate).items() if k in space.arch_names}


def subnet_id(arch: Mapping[str, Any]) -> str:
    """A sub-network's id: the 12 hex digits of its architecture part (as candidate ids)."""
    return canonical_id(dict(arch))


def complete(space: SearchSpace, arch: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The candidate of architecture ``arch`` trained with the recipe of candidate ``base``."""
    recipe = {k: v for k, v in space.canonical(base).items() if k not in space.arch_names}
    return space.canonical({**recipe, **arch}, "sub-network")


def _extreme(space: SearchSpace, pick: Any) -> dict[str, Any]:
    """Every architecture parameter at its ``pick`` (max or min) value; numbers and bools only."""
    values: dict[str, Any] = {}
    for p in space.params:
        if p.name not in space.arch_names:
            continue
        options = p.extremes()
        if not all(isinstance(v, (int, float)) for v in options):
            raise UserError(f"space {space.name}: parameter {p.name} ({p.describe()}) has no largest value; a "
                            "supernet needs every architecture parameter to be a number or a bool")
        values[p.name] = pick(options)
    return values


def largest(space: SearchSpace) -> dict[str, Any]:
    """The architecture every other one is a slice of: each depth, width, kernel and
    expansion at its maximum, SE on."""
    return _extreme(space, max)


def smallest(space: SearchSpace) -> dict[str, Any]:
    """The sandwich rule's lower bread: every architecture parameter at its minimum."""
    return _extreme(space, min)


def sample_archs(space: SearchSpace, n: int, seed: int, method: str = "uniform",
                 constraints: Mapping[str, float | None] | None = None) -> list[dict[str, Any]]:
    """``n`` distinct architectures drawn from the space (under the MFLOPs/params limits)."""
    limits = {k: (constraints or {}).get(k) for k in ("max_mflops", "max_params")}
    out: dict[str, dict[str, Any]] = {}
    draw = n
    while len(out) < n:
        for s in sample(space, draw, method=method, seed=seed, **limits):
            arch = arch_part(space, s.candidate)
            out.setdefault(subnet_id(arch), arch)
        if draw >= 64 * n:
            break
        draw *= 2
    return list(out.values())[:n]


def random_archs(space: SearchSpace, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` architectures, each parameter drawn uniformly (no limits: a supernet trains the
    whole space)."""
    return [arch_part(space, c) for c in space.from_unit(rng.random((n, space.unit_dims)))]
