"""Each stage's training budget: how many iterations a trial trains, its schedule stretched to fit."""

from __future__ import annotations

from typing import Any, Mapping


def stage_iterations(recipe_iters: int, stage: str, stage1_iters: int, verify_iters: int) -> int:
    """A candidate's SOLVER.MAX_ITER (its recipe's budget) capped at ``verify_iters``:
    verification trains that in full, stage 1 a compressed copy of the same schedule
    (``stage1_iters / verify_iters`` of it), and the reference and the recipe stage's trials
    (the parent's architecture with other recipes: the tuned parent) get ``verify_iters``;
    re-scoring (another seed of a finalist) trains as the finalist did."""
    full = min(recipe_iters, verify_iters)
    if stage == "stage1":
        return max(1, round(full * stage1_iters / verify_iters))
    return verify_iters if stage in ("reference", "recipe") else full  # verify, rescore


def scale_schedule(cfg: Mapping[str, Any], max_iter: int) -> None:
    """Train ``max_iter`` iterations with the recipe's schedule stretched to fit.

    Warmup, LR steps and the EMA's horizon keep their share of training: the decay becomes
    ``decay ** (MAX_ITER / max_iter)``, so the initial weights' share of the average at the
    end is the recipe's. Unscaled, a 0.999 average over a 40-iteration trial would still be
    96% random initialisation, and every EMA recipe would score about 0 there.
    """
    solver, ema = cfg["SOLVER"], cfg["MODEL_EMA"]
    ratio = max_iter / solver["MAX_ITER"]
    solver["WARMUP_ITERS"] = int(round(solver["WARMUP_ITERS"] * ratio))
    solver["STEPS"] = [int(round(s * ratio)) for s in solver["STEPS"]]
    solver["MAX_ITER"] = max_iter
    ema["DECAY"] = ema["DECAY"] ** (1.0 / ratio)
