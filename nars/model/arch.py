"""Architectures as data: stages of block specs, validated, plus the d2go reference archs.

A block spec is the compact tuple of mobile_cv's FBNet builder,
``(op, out_channels, stride, repeats, {"e": expansion})``, where ``op`` is ``conv_kK``
(the stem: KxK conv + norm + ReLU) or ``ir_kK`` / ``ir_kK_se`` (inverted residual with a
KxK depthwise conv, optionally squeeze-excitation). A stride of -2 is a nearest x2
upsample. Only the first block of a repeated spec carries the stride.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from nars.errors import UserError

PARTS = ("trunk", "rpn", "box_head", "mask_head")
VALID_STRIDES = (1, 2, -2)
TRUNK_STAGES = 4
TRUNK_OUTPUT_STRIDE = 16
_OP_RE = re.compile(r"^(conv|ir)_k(\d+)(_se)?$")


@dataclass(frozen=True)
class BlockSpec:
    """One (possibly repeated) block: what the builder and the cost model read."""

    kind: str  # "conv" (stem conv + norm + ReLU) or "ir" (inverted residual)
    kernel: int
    se: bool
    out_channels: int
    stride: int
    repeats: int = 1
    expansion: float = 1.0

    @property
    def op(self) -> str:
        return f"{self.kind}_k{self.kernel}" + ("_se" if self.se else "")

    def to_data(self) -> list[Any]:
        """The compact list form, as written in YAML and in d2go's arch dicts."""
        e = int(self.expansion) if float(self.expansion).is_integer() else self.expansion
        return [self.op, self.out_channels, self.stride, self.repeats, {"e": e}]

    def expanded(self) -> list["BlockSpec"]:
        """The repeats as single blocks; only the first keeps the stride."""
        first = BlockSpec(self.kind, self.kernel, self.se, self.out_channels, self.stride, 1, self.expansion)
        rest = BlockSpec(self.kind, self.kernel, self.se, self.out_channels, 1, 1, self.expansion)
        return [first] + [rest] * (self.repeats - 1)


Stage = tuple[BlockSpec, ...]


@dataclass(frozen=True)
class ArchSpec:
    """A whole FBNetV3IS architecture: trunk (4 stages, C4) and the three heads."""

    name: str
    trunk: tuple[Stage, ...]
    rpn: tuple[Stage, ...]
    box_head: tuple[Stage, ...]
    mask_head: tuple[Stage, ...]

    def part(self, name: str) -> tuple[Stage, ...]:
        return getattr(self, name)

    def to_data(self) -> dict[str, Any]:
        """Plain lists and dicts, the inline form of ``MODEL.FBNET_V2.ARCH``."""
        return {p: [[b.to_data() for b in stage] for stage in self.part(p)] for p in PARTS}


def _py2_round(x: float) -> int:
    """Round half away from zero (Python 2's ``round``), as mobile_cv's ``py2_round``."""
    return math.floor(x + 0.5) if x >= 0.0 else math.ceil(x - 0.5)


def get_divisible_by(num: float, divisor: int, min_val: int | None = None) -> int:
    """mobile_cv's ``arch.utils.helper.get_divisible_by``, line for line.

    An exact multiple of ``divisor`` (or any ``num`` when ``divisor <= 0``) is kept as is;
    otherwise the nearest multiple (half away from zero, at least one ``divisor``), plus one
    more ``divisor`` if that fell below 95% of ``num``; never below ``min_val`` (default
    ``divisor``). Faithful so that widths, checkpoints and costs match d2go's.
    """
    ret = int(num)
    if min_val is None:
        min_val = divisor
    if divisor > 0 and num % divisor != 0:
        ret = int((_py2_round(num / divisor) or 1) * divisor)
        if ret < 0.95 * num:
            ret += divisor
    return max(ret, min_val)


@dataclass(frozen=True)
class IRWidths:
    """The inner widths of an inverted residual block, as mobile_cv's IRFBlock sets them."""

    mid: int  # width of the depthwise conv (the expanded width)
    se_mid: int | None  # squeeze width of the SE, None without SE
    has_pw: bool  # the pw expand conv exists only when the rounded mid width differs from the input


def ir_widths(in_channels: int, spec: BlockSpec, divisor: int) -> IRWidths:
    """Mid width ``get_divisible_by(in * e)``, SE width ``get_divisible_by(int(mid / 4))``.

    One place for the builder and the cost model. The block's out_channels are used as
    written: mobile_cv rounds them only when ``width_ratio != 1``, never the case here.
    """
    mid = get_divisible_by(in_channels * spec.expansion, divisor)
    se_mid = get_divisible_by(int(mid * 0.25), divisor) if spec.se else None
    return IRWidths(mid, se_mid, mid != in_channels)


def parse_block(data: Any, where: str) -> BlockSpec:
    """Parse ``[op, c, s, n, {e: x}]`` or ``{op, c, s, n, e}``; errors name ``where``."""
    if isinstance(data, Mapping):
        unknown = set(data) - {"op", "c", "s", "n", "e"}
        if unknown:
            raise UserError(f"{where}: unknown block field(s) {sorted(unknown)} (expected op, c, s, n, e)")
        fields = [data.get("op"), data.get("c"), data.get("s", 1), data.get("n", 1), {"e": data.get("e", 1)}]
    elif isinstance(data, (list, tuple)) and 2 <= len(data) <= 5:
        fields = list(data) + [None] * (5 - len(data))
        fields[2] = 1 if fields[2] is None else fields[2]
        fields[3] = 1 if fields[3] is None else fields[3]
        fields[4] = fields[4] or {"e": 1}
    else:
        raise UserError(f"{where}: a block is [op, out_channels, stride, repeats, {{e: expansion}}], got {data!r}")
    op, channels, stride, repeats, extra = fields
    match = _OP_RE.match(str(op)) if isinstance(op, str) else None
    if match is None:
        raise UserError(f"{where}: unknown op {op!r} (expected conv_kK, ir_kK or ir_kK_se)")
    kind, kernel, se = match.group(1), int(match.group(2)), match.group(3) is not None
    if kernel < 1 or kernel % 2 == 0:
        raise UserError(f"{where}: op {op!r} needs an odd kernel size")
    if not isinstance(extra, Mapping) or set(extra) - {"e"}:
        raise UserError(f"{where}: the options dict takes only 'e' (expansion), got {extra!r}")
    expansion = extra.get("e", 1)
    if _not_int(channels) or channels <= 0:
        raise UserError(f"{where}: out_channels must be a positive integer, got {channels!r}")
    if _not_int(stride) or stride not in VALID_STRIDES:
        raise UserError(f"{where}: stride must be one of {VALID_STRIDES}, got {stride!r}")
    if _not_int(repeats) or repeats < 1:
        raise UserError(f"{where}: repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or expansion <= 0:
        raise UserError(f"{where}: expansion 'e' must be a positive number, got {expansion!r}")
    if kind == "conv" and stride == -2:
        raise UserError(f"{where}: {op} cannot upsample (stride -2 is for ir blocks)")
    return BlockSpec(kind, kernel, se, int(channels), int(stride), int(repeats), float(expansion))


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def parse_arch(data: Any, name: str = "inline", source: str | None = None) -> ArchSpec:
    """Validate a dict ``{trunk, rpn, box_head, mask_head}`` of stages into an ArchSpec.

    Errors start with ``source`` (default ``arch NAME``) and name the offending block.
    """
    where = source or f"arch {name}"
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping with keys {list(PARTS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(PARTS))
    if unknown:
        raise UserError(f"{where}: unknown part(s) {unknown}; expected {list(PARTS)}")
    missing = [p for p in PARTS if p not in data]
    if missing:
        raise UserError(f"{where}: missing part(s) {missing}; expected {list(PARTS)}")
    parts: dict[str, tuple[Stage, ...]] = {}
    for part in PARTS:
        stages = data[part]
        if not isinstance(stages, (list, tuple)) or not stages:
            raise UserError(f"{where}: {part} must be a non-empty list of stages")
        parsed = []
        for si, stage in enumerate(stages):
            if not isinstance(stage, (list, tuple)) or not stage:
                raise UserError(f"{where}: {part} stage {si} must be a non-empty list of blocks")
            parsed.append(tuple(parse_block(b, f"{where}: {part} stage {si} block {bi}") for bi, b in enumerate(stage)))
        parts[part] = tuple(parsed)
    _check_layout(where, parts)
    return ArchSpec(name=name, **parts)


def _check_layout(where: str, parts: Mapping[str, tuple[Stage, ...]]) -> None:
    """C4 needs a 4-stage trunk at output stride 16 and no upsampling before the mask head."""
    if len(parts["trunk"]) != TRUNK_STAGES:
        raise UserError(f"{where}: trunk must have {TRUNK_STAGES} stages, got {len(parts['trunk'])}")
    stride = 1
    for blocks in parts["trunk"]:
        for b in blocks:
            if b.stride == -2:
                raise UserError(f"{where}: trunk block {b.op} uses stride -2; upsampling is only for the mask head")
            stride *= b.stride
    if stride != TRUNK_OUTPUT_STRIDE:
        raise UserError(f"{where}: trunk output stride is {stride}, C4 needs {TRUNK_OUTPUT_STRIDE}")
    for part in ("rpn", "box_head"):
        if any(b.stride == -2 for stage in parts[part] for b in stage):
            raise UserError(f"{where}: {part} cannot upsample (stride -2)")
    if any(b.stride != 1 for stage in parts["rpn"] for b in stage):
        raise UserError(f"{where}: rpn blocks must keep stride 1 (anchors live on the trunk's grid)")


def blocks(stages: Iterable[Stage]) -> list[list[BlockSpec]]:
    """Stages with repeats expanded into single blocks."""
    return [[single for spec in stage for single in spec.expanded()] for stage in stages]


def _ir(k: int, c: int, s: int, n: int, e: float, se: bool = False) -> list[Any]:
    return [f"ir_k{k}" + ("_se" if se else ""), c, s, n, {"e": e}]


_MASK_HEAD = [[_ir(3, 128, 2, 1, 4), _ir(3, 128, 1, 2, 6), _ir(3, 128, -2, 1, 6), _ir(3, 64, -2, 1, 3)]]

# d2go's FBNetV3 archs "without hs" (ReLU everywhere, sigmoid SE gate): reference, section 2.
REFERENCE_ARCHS: dict[str, dict[str, Any]] = {
    "FBNetV3_A": {
        "trunk": [
            [["conv_k3", 16, 2, 1], _ir(3, 16, 1, 2, 1)],
            [_ir(5, 24, 2, 1, 4), _ir(5, 24, 1, 3, 3)],
            [_ir(5, 32, 2, 1, 4, se=True), _ir(3, 32, 1, 3, 3, se=True)],
            [_ir(5, 64, 2, 1, 4), _ir(3, 64, 1, 3, 3), _ir(5, 112, 1, 1, 4, se=True), _ir(5, 112, 1, 5, 3, se=True)],
        ],
        "rpn": [[_ir(5, 112, 1, 5, 3, se=True)]],
        "box_head": [[_ir(5, 184, 2, 1, 4, se=True), _ir(3, 184, 1, 4, 4, se=True), _ir(5, 200, 1, 1, 6, se=True)]],
        "mask_head": _MASK_HEAD,
    },
    "FBNetV3_A_dsmask": {
        "trunk": [
            [["conv_k3", 16, 2, 1], _ir(3, 16, 1, 1, 1)],
            [_ir(5, 32, 2, 1, 4), _ir(5, 32, 1, 1, 2)],
            [_ir(5, 40, 2, 1, 4), _ir(3, 40, 1, 3, 3)],
            [_ir(5, 72, 2, 1, 4), _ir(3, 72, 1, 3, 3), _ir(5, 112, 1, 1, 4), _ir(5, 112, 1, 3, 4)],
        ],
        "rpn": [[_ir(5, 112, 1, 3, 4)]],
        "box_head": [[_ir(3, 128, 2, 1, 4), _ir(3, 128, 1, 2, 6), _ir(3, 160, 1, 1, 6)]],
        "mask_head": _MASK_HEAD,
    },
}


def resolve_arch(arch: str | Mapping[str, Any]) -> ArchSpec:
    """A reference name (case-insensitive) or an inline spec dict to a validated ArchSpec."""
    if isinstance(arch, str):
        for key, data in REFERENCE_ARCHS.items():
            if key.lower() == arch.lower():
                return parse_arch(data, key)
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(REFERENCE_ARCHS)} (or give an inline spec)")
    return parse_arch(arch, "inline", "MODEL.FBNET_V2.ARCH")
