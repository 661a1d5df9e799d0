"""Typed nested-key schemas: the validation behind configs and experiment files.

A schema is a tree of defaults. Merging a YAML mapping or ``KEY VALUE`` overrides checks
that every key exists (an unknown key names the closest valid one) and that each value
has the default's type (or one of the listed alternatives). Values are only ever parsed
with ``yaml.safe_load``.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from nars.errors import UserError

_TYPE_NAMES = {bool: "bool", int: "int", float: "number", str: "string", list: "list", dict: "mapping"}


@dataclass(frozen=True)
class Schema:
    defaults: dict[str, Any]
    alternatives: Mapping[str, tuple[type, ...]] = field(default_factory=dict)
    kind: str = "config"  # how errors call a key: "unknown config key ..."

    def default(self) -> dict[str, Any]:
        return copy.deepcopy(self.defaults)

    def flat_keys(self, tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
        """(dotted key, leaf value) pairs; dict values of keys with alternatives are leaves."""
        for key, value in tree.items():
            full = f"{prefix}{key}"
            if isinstance(value, dict) and full not in self.alternatives:
                yield from self.flat_keys(value, full + ".")
            else:
                yield full, value

    def set_key(self, cfg: dict[str, Any], key: str, value: Any, source: str) -> None:
        """Set a dotted key after checking it exists and the value's type."""
        node: Any = self.defaults
        target = cfg
        parts = str(key).split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise self._unknown_key(key, source)
            node, target = node[part], target.setdefault(part, {})
        if not isinstance(node, dict) or parts[-1] not in node:
            raise self._unknown_key(key, source)
        target[parts[-1]] = self._check_value(key, value, node[parts[-1]], source)

    def merge(self, cfg: dict[str, Any], updates: Any, source: str) -> dict[str, Any]:
        """Merge a nested mapping of updates into cfg, key by key."""
        if not isinstance(updates, Mapping):
            raise UserError(f"{source}: expected a mapping of keys, got {type(updates).__name__}")
        for key, value in self.flat_keys(updates):
            self.set_key(cfg, key, value, source)
        return cfg

    def load(self, path: Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
        """Defaults, then the YAML file, then ``KEY VALUE`` overrides."""
        cfg = self.default()
        if path is not None:
            self.merge(cfg, read_yaml(path) or {}, str(path))
        for key, value in parse_overrides(overrides):
            self.set_key(cfg, key, value, "command line")
        return cfg

    def _unknown_key(self, key: str, source: str) -> UserError:
        keys = [k for k, _ in self.flat_keys(self.defaults)]
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        return UserError(f"{source}: unknown {self.kind} key {key}{hint}")

    def _check_value(self, key: str, value: Any, default: Any, source: str) -> Any:
        types = self.alternatives.get(key, (type(default),))
        for t in types:
            if t is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if t is int and isinstance(value, bool):
                continue
            if isinstance(value, t):
                return value
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise UserError(f"{source}: {key} expects {expected}, got {type(value).__name__} {value!r}")


def resolve_file(name_or_path: str | Path, folder: Path, what: str, near: Path | None = None) -> Path:
    """A file path (or one relative to ``near``), or the name of a ``.yaml`` file shipped in
    ``folder``; otherwise an error that lists the shipped names."""
    candidates = [Path(name_or_path)] + ([near / str(name_or_path)] if near else []) + [folder / f"{name_or_path}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise UserError(f"{what} {name_or_path}: no such file and no shipped {what} of that name (shipped: {known})")


def parse_overrides(pairs: Sequence[str], source: str = "command line") -> list[tuple[str, Any]]:
    """detectron2-style ``KEY VALUE`` pairs; each value is read as YAML (safe_load)."""
    if len(pairs) % 2:
        raise UserError(f"{source}: overrides come in KEY VALUE pairs; {pairs[-1]!r} has no value")
    out = []
    for key, raw in zip(pairs[::2], pairs[1::2]):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def read_yaml(path: Path) -> Any:
    """safe_load a YAML file; unreadable or malformed files are user errors naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
