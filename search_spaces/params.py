"""Parameter domains of a search space: fixed, choice, int range (with step), float range.

Why one class per domain: each one knows its value in three forms, and the space only
stacks them. The *unit* form is one coordinate in [0, 1) (what Sobol and uniform samplers
draw; fixed parameters take none). The *code* is one float (a choice's index, or the
number itself; NaN when the parameter is inactive). The *encoding* is what the predictor
reads: one-hot for choices, numbers scaled to [0, 1] (log-scaled when ``log``); zeros when
inactive. Floats are rounded to ``digits`` significant digits, so a candidate has one
canonical spelling and encode -> decode is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

TYPES = ("fixed", "choice", "int", "float")
FLOAT_STEP = 0.125  # a float's local-search step: an eighth of its range (log-scaled when ``log``)
_FIELDS = {
    "fixed": {"value"},
    "choice": {"values"},
    "int": {"low", "high", "step"},
    "float": {"low", "high", "log", "digits"},
}


class DomainError(ValueError):
    """A bad parameter definition or value; the space adds the file and parameter name."""


@dataclass(frozen=True)
class Condition:
    """Active only when the choice ``parent`` takes one of ``values``."""

    parent: str
    values: tuple[Any, ...]


def same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 0 and 1 (``True == 1`` in Python)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DomainError(f"{what} must be a finite number, got {value!r}")
    return value


def _integer(value: Any, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DomainError(f"{what} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Param:
    name: str
    when: Condition | None

    unit_width = 1  # coordinates taken in the unit cube
    kind = ""

    @property
    def width(self) -> int:
        """Floats taken in the encoding."""
        return 1

    def canonical(self, value: Any) -> Any:
        """The value in its one spelling; DomainError when outside the domain."""
        raise NotImplementedError

    def code(self, value: Any) -> float:
        return float(value)

    def value(self, code: float) -> Any:
        raise NotImplementedError

    def numbers(self, codes: np.ndarray) -> np.ndarray:
        """``value`` of many codes at once, as floats (numeric domains; bools as 0 / 1): what
        the batch cost model reads."""
        return np.asarray(codes, dtype=float)

    def extremes(self) -> list[Any]:
        """Values that exercise every field check (first one is the default for probes)."""
        raise NotImplementedError

    def count(self) -> int:
        """Number of values (1 for continuous floats: log10 sizes count the discrete part)."""
        return 1

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def neighbour(self, code: float, rng: np.random.Generator) -> float:
        """The code of a value one step from ``code``'s (local search's move): another choice,
        the next integer step, or a float moved by ``FLOAT_STEP`` of its (log) range; inward at a bound."""
        raise NotImplementedError

    def encode(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Fixed(Param):
    fixed: Any = None
    kind = "fixed"
    unit_width = 0

    @property
    def width(self) -> int:
        return 0

    def canonical(self, value: Any) -> Any:
        if not same(value, self.fixed):
            raise DomainError(f"value {value!r} differs from the fixed {self.fixed!r}")
        return self.fixed

    def code(self, value: Any) -> float:
        return 0.0

    def value(self, code: float) -> Any:
        return self.fixed

    def numbers(self, codes: np.ndarray) -> np.ndarray:
        return np.full(len(codes), float(self.fixed))

    def extremes(self) -> list[Any]:
        return [self.fixed]

    def encode(self, codes: np.ndarray) -> np.ndarray:
        return np.zeros((len(codes), 0))

    def decode(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x))

    def describe(self) -> str:
        return f"fixed {self.fixed!r}"


@dataclass(frozen=True)
class Choice(Param):
    values: tuple[Any, ...] = ()
    kind = "choice"

    @property
    def width(self) -> int:
        return len(self.values)

    def index(self, value: Any) -> int:
        for i, v in enumerate(self.values):
            if same(v, value):
                return i
        raise DomainError(f"value {value!r} is not one of {list(self.values)}")

    def canonical(self, value: Any) -> Any:
        return self.values[self.index(value)]

    def code(self, value: Any) -> float:
        return float(self.index(value))

    def value(self, code: float) -> Any:
        return self.values[int(code)]

    def numbers(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self.values, dtype=float)[np.asarray(codes).astype(int)]

    def extremes(self) -> list[Any]:
        return list(self.values)

    def count(self) -> int:
        return len(self.values)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.floor(u * len(self.values)), len(self.values) - 1)

    def neighbour(self, code: float, rng: np.random.Generator) -> float:
        others = [i for i in range(len(self.values)) if i != int(code)]
        return float(rng.choice(others)) if others else code

    def encode(self, codes: np.ndarray) -> np.ndarray:
        out = np.zeros((len(codes), len(self.values)))
        ok = ~np.isnan(codes)
        out[np.flatnonzero(ok), codes[ok].astype(int)] = 1.0
        return out

    def decode(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(x, axis=1).astype(float)

    def describe(self) -> str:
        return "choice " + ", ".join(map(repr, self.values))


@dataclass(frozen=True)
class IntRange(Param):
    low: int = 0
    high: int = 0
    step: int = 1
    kind = "int"

    def canonical(self, value: Any) -> Any:
        value = _integer(value, "value")
        if not self.low <= value <= self.high or (value - self.low) % self.step:
            raise DomainError(f"value {value} is not in {self.describe()}")
        return value

    def value(self, code: float) -> Any:
        return int(code)

    def extremes(self) -> list[Any]:
        return [self.low, min(self.low + self.step, self.high), self.high]

    def count(self) -> int:
        return (self.high - self.low) // self.step + 1

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        return self.low + np.minimum(np.floor(u * self.count()), self.count() - 1) * self.step

    def neighbour(self, code: float, rng: np.random.Generator) -> float:
        up = code + self.step <= self.high and (code - self.step < self.low or rng.random() < 0.5)
        return code + self.step if up else max(code - self.step, self.low)

    def encode(self, codes: np.ndarray) -> np.ndarray:
        return np.nan_to_num((codes - self.low) / max(self.high - self.low, 1))[:, None]

    def decode(self, x: np.ndarray) -> np.ndarray:
        steps = np.clip(np.round(x[:, 0] * max(self.high - self.low, 1) / self.step), 0, self.count() - 1)
        return self.low + steps * self.step

    def describe(self) -> str:
        return f"int [{self.low}, {self.high}]" + (f" step {self.step}" if self.step != 1 else "")


@dataclass(frozen=True)
class FloatRange(Param):
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    digits: int = 6
    kind = "float"

    def _round(self, values: np.ndarray) -> np.ndarray:
        return np.array([float(f"{v:.{self.digits}g}") for v in values])

    def _scale(self, v: np.ndarray | float) -> Any:
        return np.log(v) if self.log else v

    def canonical(self, value: Any) -> Any:
        value = float(self._round([_number(value, "value")])[0])
        if not self.low <= value <= self.high:
            raise DomainError(f"value {value} is not in {self.describe()}")
        return value

    def value(self, code: float) -> Any:
        return float(code)

    def extremes(self) -> list[Any]:
        return [self.low, self.high]

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        lo, hi = self._scale(self.low), self._scale(self.high)
        x = lo + u * (hi - lo)
        return np.clip(self._round(np.exp(x) if self.log else x), self.low, self.high)

    def neighbour(self, code: float, rng: np.random.Generator) -> float:
        lo, hi = self._scale(self.low), self._scale(self.high)
        x, step = self._scale(code), FLOAT_STEP * (hi - lo)
        x = x + step if x - step < lo or (x + step <= hi and rng.random() < 0.5) else x - step
        return float(self.from_unit(np.array([(x - lo) / ((hi - lo) or 1.0)]))[0])

    def encode(self, codes: np.ndarray) -> np.ndarray:
        lo, hi = self._scale(self.low), self._scale(self.high)
        with np.errstate(invalid="ignore"):
            return np.nan_to_num((self._scale(codes) - lo) / ((hi - lo) or 1.0))[:, None]

    def decode(self, x: np.ndarray) -> np.ndarray:
        return self.from_unit(np.clip(x[:, 0], 0.0, 1.0))

    def describe(self) -> str:
        return f"float [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


def parse_param(name: str, data: Any) -> Param:
    """One entry of a space file's ``parameters``: ``{type: ..., <fields>, when: {parent: values}}``."""
    if not isinstance(data, Mapping):
        raise DomainError(f"expected a mapping with a 'type' ({', '.join(TYPES)}), got {data!r}")
    kind = data.get("type")
    if kind not in TYPES:
        raise DomainError(f"unknown type {kind!r} (expected {', '.join(TYPES)})")
    unknown = set(data) - _FIELDS[kind] - {"type", "when"}
    if unknown:
        raise DomainError(f"unknown field(s) {sorted(unknown)} for type {kind} (expected {sorted(_FIELDS[kind])})")
    when = _parse_when(data.get("when"))
    if kind == "fixed":
        if "value" not in data:
            raise DomainError("fixed needs a 'value'")
        return Fixed(name, when, data["value"])
    if kind == "choice":
        values = data.get("values")
        if not isinstance(values, list) or not values:
            raise DomainError(f"choice needs a non-empty list of 'values', got {values!r}")
        if any(same(a, b) for i, a in enumerate(values) for b in values[i + 1 :]):
            raise DomainError(f"choice values repeat: {values}")
        return Choice(name, when, tuple(values))
    if "low" not in data or "high" not in data:
        raise DomainError(f"{kind} needs 'low' and 'high'")
    if kind == "int":
        low, high = _integer(data["low"], "low"), _integer(data["high"], "high")
        step = _integer(data.get("step", 1), "step")
        _check_bounds(low, high)
        if step < 1 or (high - low) % step:
            raise DomainError(f"step must be a positive integer that divides high - low = {high - low}, got {step}")
        return IntRange(name, when, low, high, step)
    low, high = float(_number(data["low"], "low")), float(_number(data["high"], "high"))
    log, digits = data.get("log", False), _integer(data.get("digits", 6), "digits")
    _check_bounds(low, high)
    if not isinstance(log, bool):
        raise DomainError(f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise DomainError(f"a log range needs low > 0, got {low}")
    if not 1 <= digits <= 15:
        raise DomainError(f"digits must be in [1, 15], got {digits}")
    if any(float(f"{v:.{digits}g}") != v for v in (low, high)):
        raise DomainError(f"low and high must have at most {digits} significant digits (see 'digits')")
    return FloatRange(name, when, low, high, log, digits)


def _check_bounds(low: float, high: float) -> None:
    if low > high:
        raise DomainError(f"low {low} > high {high}")


def _parse_when(data: Any) -> Condition | None:
    if data is None:
        return None
    if not isinstance(data, Mapping) or len(data) != 1:
        raise DomainError(f"'when' takes one parent choice and its values, e.g. {{optimizer: [sgd]}}, got {data!r}")
    (parent, values), = data.items()
    values = values if isinstance(values, list) else [values]
    if not values:
        raise DomainError(f"'when' on {parent} lists no values")
    return Condition(str(parent), tuple(values))


def active_mask(params: Sequence[Param], codes: np.ndarray, index: Mapping[str, int]) -> np.ndarray:
    """Which parameters are active in each row of codes (parents come before children)."""
    active = np.ones(codes.shape, dtype=bool)
    for j, p in enumerate(params):
        if p.when is not None:
            parent = index[p.when.parent]
            allowed = [params[parent].code(v) for v in p.when.values]  # type: ignore[union-attr]
            active[:, j] = active[:, parent] & np.isin(codes[:, parent], allowed)
    return active
