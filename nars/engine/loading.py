"""Weights for a run, refused when they do not fit the model the config builds.

``nars.model.weights`` loads what matches and reports the rest; a run cannot go on with
that silently. Evaluation, prediction and resuming need every tensor; starting a training
from ``MODEL.WEIGHTS`` may leave parts at their initialisation (a trunk-only checkpoint,
a different class count), which is logged.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from torch import nn

from nars.errors import UserError
from nars.model.inherit import inherit, is_norm_stat
from nars.model.weights import (
    LoadReport,
    checkpoint_arch,
    load_state,
    load_weights,
    read_checkpoint,
    resolve_weights,
    state_dict_of,
)

logger = logging.getLogger(__name__)

_SHOWN = 3


def _listed(kind: str, keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {kind}: {'; '.join(keys[:_SHOWN])}{more}"


def check_fit(report: LoadReport, model: nn.Module, source: str, complete: bool) -> None:
    """Raise when ``report`` shows another architecture; ``complete`` also refuses missing or
    re-initialised tensors."""
    problems = []
    if report.mismatched:
        problems.append(_listed("with another shape", report.mismatched))
    if report.unexpected:
        problems.append(_listed("not in the model", report.unexpected))
    if complete and report.missing:
        problems.append(_listed("missing", report.missing))
    if complete and report.reinitialized:
        problems.append(_listed("for another class count", report.reinitialized))
    if problems:
        arch = getattr(getattr(model, "arch", None), "name", "?")
        raise UserError(f"{source} does not fit the model of this config (MODEL.FBNET_V2.ARCH {arch}, "
                        f"{getattr(model, 'num_classes', '?')} classes): tensors {' | '.join(problems)}")
    if report.missing:
        logger.warning("%s: %d tensors not in the checkpoint keep their initialisation (first: %s)",
                       source, len(report.missing), report.missing[0])


def load_run_weights(model: nn.Module, value: str, use_ema: bool, complete: bool) -> LoadReport:
    """``MODEL.WEIGHTS``-style value (path or named checkpoint) into ``model``, checked."""
    report = load_weights(model, value, use_ema)
    check_fit(report, model, f"weights {value}", complete)
    return report


def load_start_weights(model: nn.Module, model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``MODEL.WEIGHTS`` at the start of a training: loaded key by key when it is of this
    model's architecture (or of an unknown one), inherited (nars.model.inherit) when it is of
    another, or of another norm (a batch-norm parent's statistics mean nothing to GN). Returns
    what happened, for the run folder's ``start_weights.json``."""
    value = model_cfg["WEIGHTS"]
    path, named_arch = resolve_weights(value)
    ckpt = read_checkpoint(path)
    parent = checkpoint_arch(path, ckpt, named_arch, model_cfg["WEIGHTS_ARCH"])
    state = state_dict_of(ckpt, model_cfg["WEIGHTS_EMA"], path)
    same_norm = any(map(is_norm_stat, model.state_dict())) == any(map(is_norm_stat, state))
    if parent is None or (parent.to_data() == model.arch.to_data() and same_norm):
        report = load_state(model, state)
        check_fit(report, model, f"weights {value}", complete=False)
        weights = {k: v.numel() for k, v in model.state_dict().items() if not is_norm_stat(k)}
        copied = sum(n for k, n in weights.items() if k in state and k not in report.reinitialized)
        return {"weights": str(path), "mode": "load", "fraction": copied / sum(weights.values()), **report.to_dict()}
    # a supernet keeps its channels in importance order: its sub-networks take the first ones
    result = inherit(model, state, parent, by_importance="supernet" not in ckpt)
    logger.info("weights %s (%s) inherited: %.1f%% of the weights, %d new block(s) (%d as identities)", value,
                parent.name, 100 * result.fraction, len(result.new_blocks), len(result.identity_blocks))
    return {"weights": str(path), "mode": "inherit", "parent_arch": parent.to_data(), **result.to_dict()}


def load_resume_state(model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> None:
    """A run's own checkpoint (its non-averaged weights) into ``model``; every tensor must fit."""
    check_fit(load_state(model, state_dict_of(checkpoint, use_ema=False, path=source)), model, source, complete=True)


def checkpoint_categories(value: str) -> list[dict[str, Any]] | None:
    """The ``[{"id", "name"}, ...]`` (label order) a NARS training stored in its checkpoints."""
    path, _ = resolve_weights(value)
    categories = read_checkpoint(path).get("categories")
    return list(categories) if isinstance(categories, list) and categories else None


def checkpoint_has_ema(value: str) -> bool:
    """Whether a checkpoint holds an EMA copy (``"ema_state"``) besides its weights."""
    path, _ = resolve_weights(value)
    return bool(read_checkpoint(path).get("ema_state"))
