"""``nars space info`` and ``nars space sample``: what a search space holds, and candidates from it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from search_spaces import METHODS, SearchSpace, load_space, sample

SPACE_HELP = "a space file, or a shipped space's name (fbnetv3is, fbnetv3is_quick)"


def register(sub: argparse._SubParsersAction) -> None:
    space = sub.add_parser("space", help="inspect and sample search spaces")
    group = space.add_subparsers(dest="action", required=True)
    info = group.add_parser("info", help="parameters, encoding length, log10 size, reference candidates and costs")
    info.add_argument("space", help=SPACE_HELP)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=run_info)
    smp = group.add_parser("sample", help="candidates under MFLOPs / params limits, with ids and costs")
    smp.add_argument("space", help=SPACE_HELP)
    smp.add_argument("--n", type=int, required=True, help="how many distinct candidates")
    smp.add_argument("--max-mflops", type=float, help="keep candidates with at most this many MFLOPs")
    smp.add_argument("--max-params", type=float, help="keep candidates with at most this many parameters")
    smp.add_argument("--seed", type=int, default=0, help="same seed, same candidates (default 0)")
    smp.add_argument("--method", choices=METHODS, default="sobol", help="Sobol (quasi-Monte-Carlo) or uniform")
    smp.add_argument("--json", action="store_true", help="print a JSON list of {id, mflops, params, candidate}")
    smp.set_defaults(run=run_sample)


def space_info(space: SearchSpace) -> dict[str, Any]:
    def reference(name: str, candidate: dict[str, Any]) -> dict[str, Any]:
        mflops, params = space.cost(candidate)
        return {"name": name, "id": space.candidate_id(candidate), "mflops": round(mflops, 3), "params": params}

    return {
        "name": space.name,
        "path": str(space.path),
        "description": space.description,
        "parameters": [
            {"name": p.name, "part": "arch" if p.name in space.arch_names else "recipe", "domain": p.describe(),
             "when": None if p.when is None else {p.when.parent: list(p.when.values)}}
            for p in space.params
        ],
        "dimensions": {"arch": len(space.arch_names), "recipe": len(space.params) - len(space.arch_names),
                       "unit": space.unit_dims},
        "encoding": {"length": space.encoding_length, "arch": [0, space.arch_slice.stop],
                     "recipe": [space.recipe_slice.start, space.recipe_slice.stop]},
        "log10_size": round(space.log10_size(), 3),
        "references": [reference(n, c) for n, c in space.references.items()],
    }


def run_info(args: argparse.Namespace) -> int:
    info = space_info(load_space(args.space))
    if args.json:
        print(json.dumps(info))
        return 0
    dims, enc = info["dimensions"], info["encoding"]
    print(f"{info['name']}  ({info['path']})  {info['description']}")
    print(f"parameters: {dims['arch']} arch + {dims['recipe']} recipe ({dims['unit']} sampled coordinates); "
          f"encoding: {enc['length']} floats, arch {enc['arch']}, recipe {enc['recipe']}; "
          f"log10 size: {info['log10_size']} (floats counted once)")
    for p in info["parameters"]:
        when = "".join(f"  when {k} in {json.dumps(v)}" for k, v in (p["when"] or {}).items())
        print(f"  {p['name']:<20}{p['part']:<8}{p['domain']}{when}")
    for r in info["references"]:
        print(f"reference {r['name']}: id {r['id']}, {r['mflops']:.1f} MFLOPs, {r['params']:,} params")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    samples = sample(space, args.n, method=args.method, seed=args.seed, max_mflops=args.max_mflops,
                     max_params=args.max_params)
    if args.json:
        print(json.dumps([s.to_dict() for s in samples]))
        return 0
    print(f"{'id':<14}{'MFLOPs':>10}{'params':>12}")
    for s in samples:
        print(f"{s.id:<14}{s.mflops:>10.1f}{s.params:>12,}")
    return 0
