"""Weight inheritance: a parent checkpoint's weights mapped onto another FBNetV3IS architecture.

FBNetV3 (and once-for-all before it) starts each candidate from a trained parent instead of
random weights, so that a short fine-tuning already ranks candidates. The mapping, block by
block, in every part (trunk, RPN, box head, mask head):

- **Depth.** A stage's blocks are matched by spec group (the entries of a stage in the arch,
  as the search spaces declare them) and, within a group, in order: the child's first blocks
  take the parent's. A block the parent lacks starts as the identity of its residual path
  (its last norm's gamma at 0) when it has one, and fresh otherwise.
- **Widths.** Block outputs (the residual stream, shared by consecutive blocks and by the
  heads) take the parent's first channels. A block's inner widths (the expanded width of an
  inverted residual, its SE squeeze width) are local to it: a narrower child keeps the parent's
  most important channels, ranked as once-for-all ranks them (the L1 norm of the weights that
  read each channel: the projection for the expanded width, the SE's expand conv for the
  squeeze width), and every tensor sharing them (pw, its norm, dw, SE, pwl) takes the same
  channels. Channels the parent lacks start fresh, and the weights that read them start at 0.
- **Kernels.** Larger parent kernels are centre-cropped; smaller ones are zero-padded.
- **Squeeze-excitation.** An SE the parent's block lacks starts as a constant gate of 0.5
  (its expand conv at 0) and the projection after it is doubled, so the block still computes
  the parent's function (exactly: both factors are powers of 2) while the SE trains.
- **Predictors.** Copied (their input channels sliced) when the class count (and, for the RPN,
  the anchor count) is the parent's; fresh otherwise, as ``nars.model.weights`` does.

A child that contains the parent (deeper, wider, larger kernels) therefore starts computing
the parent's function; the same architecture gets the parent's weights exactly. Norm tensors
are copied only between norms of the same kind (batch-norm statistics mean nothing to GN).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from nars.model.arch import PARTS, ArchSpec

_BLOCK_KEY = re.compile(r"^(?P<stage>.*\.)fbnetv2_(?P<s>\d+)_(?P<b>\d+)\.(?P<suffix>.+)$")
_PART_PREFIXES = {
    "backbone.": "trunk",
    "rpn.": "rpn",
    "roi_heads.box_head.": "box_head",
    "roi_heads.mask_head.": "mask_head",
}
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
# Channel roles of each dim of a block's tensors; dims past the roles are spatial (kernels).
_BLOCK_ROLES: dict[str, tuple[str | None, ...]] = {
    "pw.conv.weight": ("mid", "in"),
    "pw.bn": ("mid",),
    "dw.conv.weight": ("mid", None),
    "se.se.0.conv.weight": ("se", "mid"),
    "se.se.0.conv.bias": ("se",),
    "se.se.1.weight": ("mid", "se"),
    "se.se.1.bias": ("mid",),
    "pwl.conv.weight": ("out", "mid"),
    "pwl.bn": ("out",),
    "conv.weight": ("out", "in"),  # the stem's conv + norm + ReLU
    "conv.bias": ("out",),
    "bn": ("out",),
}
# The predictors: "exact" dims (anchors, classes) must match or the tensor starts fresh.
_HEAD_ROLES: dict[str, tuple[str | None, ...]] = {
    "rpn.head.rpn_regressor.cls_logits.weight": ("exact", "in"),
    "rpn.head.rpn_regressor.cls_logits.bias": ("exact",),
    "rpn.head.rpn_regressor.bbox_pred.weight": ("exact", "in"),
    "rpn.head.rpn_regressor.bbox_pred.bias": ("exact",),
    "roi_heads.box_predictor.cls_score.weight": ("exact", "in"),
    "roi_heads.box_predictor.cls_score.bias": ("exact",),
    "roi_heads.box_predictor.bbox_pred.weight": ("exact", "in"),
    "roi_heads.box_predictor.bbox_pred.bias": ("exact",),
    "roi_heads.mask_head.predictor.mask_fcn_logits.weight": ("exact", "in"),
    "roi_heads.mask_head.predictor.mask_fcn_logits.bias": ("exact",),
}
_IMPORTANCE = {"mid": "pwl.conv.weight", "se": "se.se.1.weight"}  # the weights that read each channel


@dataclass
class InheritReport:
    """What ``inherit`` did; ``fraction`` is the share of the child's weights (parameter
    elements, norm statistics excluded) copied from the parent."""

    fraction: float = 0.0
    inherited: int = 0
    total: int = 0
    new_blocks: list[str] = field(default_factory=list)  # no parent block: identity or fresh
    identity_blocks: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # tensors left at their initialisation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_norm_stat(key: str) -> bool:
    """A norm's running statistics (or its batch counter): state, not weights; never counted."""
    return key.endswith(_NORM_STATS)


def _part(key: str) -> str | None:
    return next((part for prefix, part in _PART_PREFIXES.items() if key.startswith(prefix)), None)


def _parent_block(child: ArchSpec, parent: ArchSpec, part: str, s: int, b: int) -> int | None:
    """The parent's block index for the child's block ``b`` of stage ``s``: same spec group,
    same position in it; None where the parent has no such block."""
    groups = child.part(part)[s]
    g, r = 0, b
    while r >= groups[g].repeats:
        r -= groups[g].repeats
        g += 1
    parent_stages = parent.part(part)
    if s >= len(parent_stages) or g >= len(parent_stages[s]) or r >= parent_stages[s][g].repeats:
        return None
    return sum(spec.repeats for spec in parent_stages[s][:g]) + r


def _roles(suffix: str) -> tuple[str | None, ...] | None:
    if suffix in _BLOCK_ROLES:
        return _BLOCK_ROLES[suffix]
    module, _, _ = suffix.rpartition(".")
    return _BLOCK_ROLES.get(module) if module.endswith("bn") else None


def _channel_map(role: str, n_child: int, parent: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """Parent channels for the child's first channels of ``role``: the most important ones
    (in their order) when the child is narrower in an inner width, else the first ones."""
    reader = parent.get(prefix + _IMPORTANCE.get(role, ""))
    if reader is None:
        return torch.arange(n_child)
    n_parent = reader.shape[1]
    has_pw = (prefix + "pw.conv.weight") in parent
    if n_child >= n_parent or (role == "mid" and not has_pw):  # no pw: mid channels are the block input's
        return torch.arange(min(n_child, n_parent))
    importance = reader.abs().sum(dim=[d for d in range(reader.dim()) if d != 1])
    return importance.topk(n_child).indices.sort().values


def _transfer(
    child: torch.Tensor, parent: torch.Tensor, roles: tuple[str | None, ...], maps: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, int] | None:
    """The child tensor with the parent's values where they map, and the count copied;
    None when an exact dim differs (another class or anchor count)."""
    out = child.detach().clone()
    src = parent.detach().to(out.dtype)
    target: list[slice] = []
    for d, role in enumerate(roles):
        if role is None or role == "exact":
            if role == "exact" and child.shape[d] != parent.shape[d]:
                return None
            target.append(slice(None))
            continue
        index = maps[role] if role in maps else torch.arange(min(child.shape[d], parent.shape[d]))
        src = src.index_select(d, index)
        target.append(slice(0, len(index)))
        if d == 1 and child.dim() > 1 and child.shape[1] > len(index):
            out[:, len(index):] = 0  # channels the parent lacks are not read until trained
    for d in range(len(roles), child.dim()):  # kernels: centre-crop, or zero-pad
        kc, kp = child.shape[d], src.shape[d]
        if kp > kc:
            src = src.narrow(d, (kp - kc) // 2, kc)
            target.append(slice(None))
        else:
            target.append(slice((kc - kp) // 2, (kc - kp) // 2 + kp))
    if child.dim() > len(roles):
        region = [t if d < len(roles) else slice(None) for d, t in enumerate(target)]
        out[tuple(region)] = 0
    out[tuple(target)] = src
    return out, src.numel()


def _other_norm(key: str, child: Mapping[str, torch.Tensor], parent: Mapping[str, torch.Tensor], pkey: str) -> bool:
    """Whether ``key`` is a norm's tensor and the parent's norm there is of another kind
    (batch norm against GN): those are not copied."""
    norm, pnorm = key.rpartition(".")[0], pkey.rpartition(".")[0]
    if not norm.endswith("bn"):
        return False
    return (f"{norm}.running_var" in child) != (f"{pnorm}.running_var" in parent)


def inherit(model: nn.Module, parent_state: Mapping[str, torch.Tensor], parent_arch: ArchSpec) -> InheritReport:
    """Load ``parent_state`` (of an FBNetV3IS with ``parent_arch``) into ``model`` (an FBNetV3IS
    of any architecture of the space) by the rules of this module."""
    child_arch: ArchSpec = model.arch
    own = model.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    report = InheritReport()
    maps_of: dict[str, dict[str, torch.Tensor]] = {}
    matched: dict[str, str] = {}  # child block prefix -> the parent's
    for key, value in own.items():
        stat = is_norm_stat(key)
        if not stat:
            report.total += value.numel()
        match = _BLOCK_KEY.match(key)
        part = _part(key) if match else None
        if match and part in PARTS:
            s, b, suffix = int(match["s"]), int(match["b"]), match["suffix"]
            child_prefix = key[: -len(suffix)]
            pb = _parent_block(child_arch, parent_arch, part, s, b)
            if pb is None:
                if child_prefix not in report.new_blocks:
                    report.new_blocks.append(child_prefix)
                continue
            parent_prefix = matched.setdefault(child_prefix, f"{match['stage']}fbnetv2_{s}_{pb}.")
            pkey, roles = parent_prefix + suffix, _roles(suffix)
            if child_prefix not in maps_of:
                maps_of[child_prefix] = {
                    role: _channel_map(role, own[child_prefix + width_key].shape[0], parent_state, parent_prefix)
                    for role, width_key in (("mid", "dw.conv.weight"), ("se", "se.se.0.conv.weight"))
                    if child_prefix + width_key in own
                }
            maps = maps_of[child_prefix]
        else:
            pkey, roles, maps = key, _HEAD_ROLES.get(key), {}
        parent = parent_state.get(pkey)
        if parent is None or _other_norm(key, own, parent_state, pkey):
            if not stat:
                report.fresh.append(key)
            continue
        if key.endswith("num_batches_tracked"):
            new_state[key] = parent.clone()
            continue
        if roles is None:  # anything else: copied only when it fits as is
            moved = (parent.clone(), parent.numel()) if parent.shape == value.shape else None
        else:
            moved = _transfer(value, parent, roles, maps)
        if moved is None:
            if not stat:
                report.fresh.append(key)
            continue
        new_state[key] = moved[0]
        if not stat:
            report.inherited += moved[1]
    for prefix, parent_prefix in matched.items():
        gate, projection = prefix + "se.se.1.", prefix + "pwl.conv.weight"
        if gate + "weight" in own and parent_prefix + "se.se.1.weight" not in parent_state and projection in new_state:
            new_state[gate + "weight"] = torch.zeros_like(own[gate + "weight"])  # sigmoid(0) = 0.5 everywhere
            new_state[gate + "bias"] = torch.zeros_like(own[gate + "bias"])
            new_state[projection] = new_state[projection] * 2
    for prefix in report.new_blocks:
        gamma = prefix + "pwl.bn.weight"
        if gamma in own and getattr(model.get_submodule(prefix[:-1]), "use_residual", False):
            new_state[gamma] = torch.zeros_like(own[gamma])  # the block starts as the identity
            report.identity_blocks.append(prefix)
        report.fresh.extend(k for k in own if k.startswith(prefix) and not is_norm_stat(k))
    model.load_state_dict(new_state, strict=False)
    report.fraction = report.inherited / report.total if report.total else 0.0
    return report

