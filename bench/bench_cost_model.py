"""Analytic cost model vs torch's FlopCounterMode on built modules: throughput and agreement.

    .venv/bin/python bench/bench_cost_model.py [--quick]

Both count the whole FBNetV3IS trunk at 224x224 for the same random architectures, side by
side in one run; FlopCounterMode needs the modules built (which dominates its cost).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from nars.model.arch import REFERENCE_ARCHS, ArchSpec, parse_arch
from nars.model.cost import model_cost
from nars.model.fbnetv3is import FBNetC4Backbone
from nars.model.norm import norm_factory


def mutate(seed: int) -> ArchSpec:
    """A reference arch with random kernels, expansions, depths and SE (valid by construction)."""
    rng = random.Random(seed)
    base = REFERENCE_ARCHS[rng.choice(sorted(REFERENCE_ARCHS))]

    def block(b):
        op = f"ir_k{rng.choice([3, 5])}" + ("_se" if rng.random() < 0.3 else "") if b[0].startswith("ir") else b[0]
        e = {"e": rng.choice([1, 2, 3, 4, 6])} if b[0].startswith("ir") else {"e": 1}
        return [op, b[1], b[2], rng.randint(1, 4) if b[2] == 1 else 1, e]

    return parse_arch({part: [[block(b) for b in stage] for stage in stages] for part, stages in base.items()}, f"m{seed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    archs = [mutate(s) for s in range(500 if args.quick else 5000)]
    counted = archs[: 10 if args.quick else 40]

    t0 = time.perf_counter()
    for arch in archs:
        model_cost(arch, 80, (224, 224))
    analytic_rate = len(archs) / (time.perf_counter() - t0)

    errors = []
    t0 = time.perf_counter()
    for arch in counted:
        trunk = FBNetC4Backbone(arch.trunk, norm_factory("BN")).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            trunk(torch.zeros(1, 3, 224, 224))
        measured = counter.get_total_flops() / 2 / 1e6
        errors.append(abs(model_cost(arch, 80, (224, 224)).mflops["trunk"] - measured) / measured)
    counter_rate = len(counted) / (time.perf_counter() - t0)

    print(f"analytic cost model : {analytic_rate:10.1f} archs/s ({len(archs)} archs, params + MFLOPs of every part)")
    print(f"FlopCounterMode     : {counter_rate:10.1f} archs/s ({len(counted)} archs, build + count the trunk)")
    print(f"speed ratio         : {analytic_rate / counter_rate:10.1f}x")
    print(f"max relative error of trunk MFLOPs: {max(errors):.2e}")


if __name__ == "__main__":
    main()
