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


def tensor_roles(suffix: str) -> tuple[str | None, ...] | None:
    """The channel role of each dim of a block's tensor (``fbnetv2_S_B.`` stripped): in,
    out, mid (the expanded width) or se (the squeeze width); None for other tensors."""
    if suffix in _BLOCK_ROLES:
        return _BLOCK_ROLES[suffix]
    module, _, _ = suffix.rpartition(".")
    return _BLOCK_ROLES.get(module) if module.endswith("bn") else None


def _channel_map(role: str, n_child: int, parent: Mapping[str, torch.Tensor], prefix: str,
                 by_importance: bool = True) -> torch.Tensor:
    """Parent channels for the child's first channels of ``role``: the most important ones
    (in their order) when the child is narrower in an inner width, else the first ones.
    ``by_importance=False``: always the first ones (a supernet keeps its channels sorted)."""
    reader = parent.get(prefix + _IMPORTANCE.get(role, ""))
    if reader is None:
        return torch.arange(n_child)
    n_parent = reader.shape[1]
    has_pw = (prefix + "pw.conv.weight") in parent
    if not by_importance or n_child >= n_parent or (role == "mid" and not has_pw):  # no pw: the block input's
        return torch.arange(min(n_child, n_parent))
    return channel_importance(reader).topk(n_child).indices.sort().values


def channel_importance(reader: torch.Tensor) -> torch.Tensor:
    """Once-for-all's importance of each input channel of ``reader`` (dim 1): the L1 norm of
    the weights that read it."""
    return reader.detach().abs().sum(dim=[d for d in range(reader.dim()) if d != 1])


def _source(parent: torch.Tensor, roles: tuple[str | None, ...], maps: Mapping[str, torch.Tensor],
            child_shape: torch.Size) -> torch.Tensor:
    """The part of ``parent`` the child's tensor takes: mapped channels per role (the first
    ones where no map is given), kernels centre-cropped to the child's where larger.
    Differentiable (index_select, narrow): a supernet's sub-network trains its slice."""
    src = parent
    for d, role in enumerate(roles):
        if role is None or role == "exact":
            continue
        index = maps.get(role)
        if index is None:
            src = src.narrow(d, 0, min(child_shape[d], parent.shape[d]))
        elif len(index) == src.shape[d] or bool((index == torch.arange(len(index))).all()):
            src = src.narrow(d, 0, len(index))
        else:
            src = src.index_select(d, index.to(src.device))
    for d in range(len(roles), len(child_shape)):  # kernels
        if src.shape[d] > child_shape[d]:
            src = src.narrow(d, (src.shape[d] - child_shape[d]) // 2, child_shape[d])
    return src


def _transfer(
    child: torch.Tensor, parent: torch.Tensor, roles: tuple[str | None, ...], maps: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, int] | None:
    """The child tensor with the parent's values where they map, and the count copied;
    None when an exact dim differs (another class or anchor count). Channels the parent
    lacks are zero where read (not read until trained); smaller parent kernels are zero-padded."""
    if any(role == "exact" and child.shape[d] != parent.shape[d] for d, role in enumerate(roles)):
        return None
    out = child.detach().clone()
    src = _source(parent.detach().to(out.dtype), roles, maps, child.shape)
    if child.dim() > 1 and len(roles) > 1 and roles[1] not in (None, "exact") and child.shape[1] > src.shape[1]:
        out[:, src.shape[1]:] = 0
    target = [slice(0, n) for n in src.shape[: len(roles)]]
    target += [slice((kc - kp) // 2, (kc - kp) // 2 + kp) for kc, kp in zip(child.shape[len(roles):], src.shape[len(roles):])]
    if child.dim() > len(roles):
        out[tuple(target[: len(roles)])] = 0
    out[tuple(target)] = src
    return out, src.numel()


def _other_norm(key: str, child: Mapping[str, torch.Tensor], parent: Mapping[str, torch.Tensor], pkey: str) -> bool:
    """Whether ``key`` is a norm's tensor and the parent's norm there is of another kind
    (batch norm against GN): those are not copied."""
    norm, pnorm = key.rpartition(".")[0], pkey.rpartition(".")[0]
    if not norm.endswith("bn"):
        return False
    return (f"{norm}.running_var" in child) != (f"{pnorm}.running_var" in parent)


@dataclass
class _Mapping:
    """Where each of the child's tensors comes from: the parent's key (None: a block the
    parent lacks), the roles of its dims and the channel maps of its block."""

    sources: dict[str, tuple[str | None, tuple[str | None, ...] | None, dict[str, torch.Tensor]]]
    matched: dict[str, str]  # child block prefix -> the parent's
    new_blocks: list[str]


def _mapping(child_arch: ArchSpec, own: Mapping[str, torch.Tensor], parent_state: Mapping[str, torch.Tensor],
             parent_arch: ArchSpec, by_importance: bool) -> _Mapping:
    """The one mapping from a parent's tensors to a child's (module docstring's rules)."""
    result = _Mapping({}, {}, [])
    maps_of: dict[str, dict[str, torch.Tensor]] = {}
    for key in own:
        match = _BLOCK_KEY.match(key)
        part = _part(key) if match else None
        if not (match and part in PARTS):
            result.sources[key] = (key, _HEAD_ROLES.get(key), {})
            continue
        s, b, suffix = int(match["s"]), int(match["b"]), match["suffix"]
        child_prefix = key[: -len(suffix)]
        pb = _parent_block(child_arch, parent_arch, part, s, b)
        if pb is None:
            if child_prefix not in result.new_blocks:
                result.new_blocks.append(child_prefix)
            result.sources[key] = (None, None, {})
            continue
        parent_prefix = result.matched.setdefault(child_prefix, f"{match['stage']}fbnetv2_{s}_{pb}.")
        if child_prefix not in maps_of:
            maps_of[child_prefix] = {
                role: _channel_map(role, own[child_prefix + width_key].shape[0], parent_state, parent_prefix,
                                   by_importance)
                for role, width_key in (("mid", "dw.conv.weight"), ("se", "se.se.0.conv.weight"))
                if child_prefix + width_key in own
            }
        result.sources[key] = (parent_prefix + suffix, tensor_roles(suffix), maps_of[child_prefix])
    return result


def inherit(model: nn.Module, parent_state: Mapping[str, torch.Tensor], parent_arch: ArchSpec,
            by_importance: bool = True) -> InheritReport:
    """Load ``parent_state`` (of an FBNetV3IS with ``parent_arch``) into ``model`` (an FBNetV3IS
    of any architecture of the space) by the rules of this module. ``by_importance=False``
    takes a narrower inner width's first channels: a supernet's (``nars.model.elastic``),
    whose channels are kept in importance order, so its sub-networks are exactly its slices."""
    own = model.state_dict()
    plan = _mapping(model.arch, own, parent_state, parent_arch, by_importance)
    new_state: dict[str, torch.Tensor] = {}
    report = InheritReport(new_blocks=plan.new_blocks)
    for key, value in own.items():
        stat = is_norm_stat(key)
        if not stat:
            report.total += value.numel()
        pkey, roles, maps = plan.sources[key]
        if pkey is None:
            continue
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
    for prefix, parent_prefix in plan.matched.items():
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


def slices(child: nn.Module, parent: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``child`` (an FBNetV3IS) as a slice of ``parent``'s (an FBNetV3IS whose
    architecture contains the child's: as deep, as wide, kernels as large), by this module's
    mapping with first channels (a supernet's): parameters stay differentiable views of the
    parent's, so a sub-network run on them trains the parent. A child the parent does not
    contain (a block or width it lacks) is a ValueError."""
    own = {k: v for k, v in child.state_dict(keep_vars=True).items()}
    parent_state = dict(parent.named_parameters())
    parent_state.update(parent.named_buffers())
    plan = _mapping(child.arch, own, parent_state, parent.arch, by_importance=False)
    out: dict[str, torch.Tensor] = {}
    for key, value in own.items():
        pkey, roles, maps = plan.sources[key]
        if pkey is None or pkey not in parent_state:
            raise ValueError(f"{key}: the supernet has no {pkey or 'such block'}")
        src = parent_state[pkey]
        if roles is not None and not key.endswith("num_batches_tracked"):
            src = _source(src, roles, maps, value.shape)
        if src.shape != value.shape:
            raise ValueError(f"{key}: {tuple(value.shape)} is not a slice of the supernet's {tuple(parent_state[pkey].shape)}")
        out[key] = src
    return out
