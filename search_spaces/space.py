"""A joint architecture + training-recipe search space, declared in a YAML file.

A space file has four parts (``search_spaces/fbnetv3is.yaml`` is the worked example):

- ``parameters``: name -> domain (``search_spaces.params``: fixed, choice, int, float),
  optionally ``when: {choice: [values]}`` to be active only for some values of a choice;
- ``arch``: the template of ``MODEL.FBNET_V2.ARCH``: parts, stages, and blocks written as
  ``{op: ir|conv, k, se, c, s, n, e}`` where a field is a literal or ``$parameter``;
- ``config``: dotted config keys (detectron2 names) -> literal or template with ``$parameter``;
- ``references``: named members, each a nars config (shipped name or path) or an inline
  mapping of dotted keys; checked on load.

``extends: NAME_OR_PATH`` starts from another space: its parameters and config keys are
updated by name, ``arch`` and ``references`` replaced when given.

A *candidate* is a plain dict of the active parameters' values, in their one canonical
spelling. Parameters that the architecture or the cost model reads form the *arch* part;
the rest form the *recipe* part; the encoding puts the arch part first, so the two are
separable by slicing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from nars.config import DEFAULTS, default_config, get, load_config, set_key
from nars.errors import UserError
from nars.model.arch import PARTS, ArchSpec, BlockSpec, parse_arch, resolve_arch
from nars.model.cost import COST_KEYS, LATENCY_KEYS, config_cost
from nars.schema import read_yaml, resolve_file
from search_spaces.params import Choice, DomainError, Param, active_mask, parse_param, same

SPACE_DIR = Path(__file__).parent
ARCH_KEY = "MODEL.FBNET_V2.ARCH"
BLOCK_FIELDS = ("op", "k", "se", "c", "s", "n", "e")  # BlockSpec's field order
BLOCK_DEFAULTS = {"op": "ir", "se": False, "s": 1, "n": 1, "e": 1}
_TOP_KEYS = {"name", "description", "extends", "parameters", "arch", "config", "references"}


@dataclass(frozen=True)
class Ref:
    """``$name`` in a template: the value of parameter ``name``."""

    name: str


def _template(data: Any) -> Any:
    if isinstance(data, str) and data.startswith("$"):
        return Ref(data[1:])
    if isinstance(data, (list, tuple)):
        return [_template(v) for v in data]
    if isinstance(data, Mapping):
        return {k: _template(v) for k, v in data.items()}
    return data


def _refs(template: Any) -> Iterator[str]:
    if isinstance(template, Ref):
        yield template.name
    elif isinstance(template, list):
        for v in template:
            yield from _refs(v)
    elif isinstance(template, dict):
        for v in template.values():
            yield from _refs(v)


def _fill(template: Any, candidate: Mapping[str, Any]) -> Any:
    if isinstance(template, Ref):
        return candidate[template.name]
    if isinstance(template, list):
        return [_fill(v, candidate) for v in template]
    if isinstance(template, dict):
        return {k: _fill(v, candidate) for k, v in template.items()}
    return template


def _plain(value: Any) -> Any:
    """Tuples as lists, so config values compare with YAML-declared choices."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _bind(template: Any, value: Any, bound: dict[str, Any], where: str) -> None:
    """Match a config value against a template, recording each ``$parameter``'s value."""
    value = _plain(value)
    if isinstance(template, Ref):
        if template.name in bound and not same(bound[template.name], value):
            tied = bound[template.name]
            raise UserError(f"{where} is {value!r}, but the space ties it to {template.name} = {tied!r}")
        bound[template.name] = value
    elif isinstance(template, list):
        if not isinstance(value, list) or len(value) != len(template):
            raise UserError(f"{where} is {value!r}; the space expects a list of {len(template)}")
        for t, v in zip(template, value):
            _bind(t, v, bound, where)
    elif not same(template, value):
        raise UserError(f"{where} is {value!r}; the space fixes it at {template!r}")


def _lookup(cfg: Mapping[str, Any], key: str) -> Any:
    """A dotted key from a flat or nested config, else its default (every space key has one)."""
    if key in cfg:
        return cfg[key]
    try:
        return get(cfg, key)
    except (KeyError, TypeError):
        return get(DEFAULTS, key)


def resolve_space_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A file path (relative to ``relative_to`` if given), or a shipped space's name."""
    return resolve_file(name_or_path, SPACE_DIR, "space", relative_to)


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping with its ``extends`` chain applied."""
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: a space file is a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)} (expected {sorted(_TOP_KEYS)})")
    for key in ("parameters", "config", "references"):
        if not isinstance(data.get(key, {}), Mapping):
            raise UserError(f"{path}: {key} must be a mapping")
    if "extends" not in data:
        return dict(data)
    base_path = resolve_space_path(data["extends"], path.parent).resolve()
    if base_path in seen:
        raise UserError(f"{path}: extends {data['extends']} makes a cycle")
    merged = _read(base_path, seen + (path.resolve(),))
    for key in ("parameters", "config"):
        merged[key] = {**merged.get(key, {}), **data.get(key, {})}
    merged.update({k: data[k] for k in ("name", "description", "arch", "references") if k in data})
    return merged


def load_space(name_or_path: str | Path) -> "SearchSpace":
    """Load and validate a space (path or shipped name); mistakes name the file and parameter."""
    path = resolve_space_path(name_or_path)
    return SearchSpace(path, _read(path))


class SearchSpace:
    """Parameters, the arch and config templates, and the maps between candidates,
    configs, costs, encodings and the unit cube."""

    latency_model: Any = None  # set by with_latency

    def __init__(self, path: Path, data: Mapping[str, Any]):
        self.path = path
        self.name = str(data.get("name", path.stem))
        self.description = str(data.get("description", ""))
        declared = [self._param(name, d) for name, d in (data.get("parameters") or {}).items()]
        self.arch_template = self._arch_template(data.get("arch"))
        self.config_template = {str(k): _template(v) for k, v in (data.get("config") or {}).items()}
        if ARCH_KEY in self.config_template:
            raise UserError(f"{path}: config sets {ARCH_KEY}; the architecture is the 'arch' template")
        self._check_refs({p.name for p in declared})
        arch_refs = {r for part in self.arch_template.values() for st in part for b in st for r in _refs(list(b))}
        arch_refs |= {r for k in COST_KEYS for r in _refs(self.config_template.get(k))}
        self.params: tuple[Param, ...] = tuple(sorted(declared, key=lambda p: p.name not in arch_refs))
        self.arch_names = frozenset(p.name for p in self.params if p.name in arch_refs)
        self.recipe_names = frozenset(p.name for p in self.params) - self.arch_names
        self._index = {p.name: i for i, p in enumerate(self.params)}
        self._check_conditions(declared)
        widths = [p.width for p in self.params]
        self.encoding_length = sum(widths)
        self.arch_slice = slice(0, sum(w for p, w in zip(self.params, widths) if p.name in self.arch_names))
        self.recipe_slice = slice(self.arch_slice.stop, self.encoding_length)
        self._slices = [slice(a - w, a) for a, w in zip(np.cumsum(widths), widths)]
        self.unit_dims = sum(p.unit_width for p in self.params)
        # the config keys a cost reads (input size, RoIs, detections), as templates over the params
        self.cost_templates = {k: self.config_template.get(k, get(DEFAULTS, k)) for k in LATENCY_KEYS}
        self._check_arch()
        self._check_config_keys()
        self.references = {str(n): self._reference(str(n), r) for n, r in (data.get("references") or {}).items()}

    # ----- loading checks -----

    def _reference(self, name: str, ref: Any) -> dict[str, Any]:
        """A member named by a config (shipped name or path), or given inline as dotted keys
        over the space's literal ones."""
        source = f"{self.path}: reference {name}"
        if isinstance(ref, str):
            try:
                return self.from_config(load_config(ref), f"{source} ({ref})")
            except UserError as e:
                raise UserError(f"{source}: {e}") from None
        literals = {k: t for k, t in self.config_template.items() if next(_refs(t), None) is None}
        return self.from_config({**literals, **ref}, source)

    def _param(self, name: str, data: Any) -> Param:
        try:
            return parse_param(str(name), data)
        except DomainError as e:
            raise UserError(f"{self.path}: parameter {name}: {e}") from None

    def _arch_template(self, data: Any) -> dict[str, list[list[tuple[Any, ...]]]]:
        where = f"{self.path}: arch"
        if not isinstance(data, Mapping) or set(data) != set(PARTS):
            raise UserError(f"{where} must be a mapping with exactly the parts {list(PARTS)}")
        out = {}
        for part in PARTS:
            stages = data[part]
            if not isinstance(stages, list) or not stages or not all(isinstance(s, list) and s for s in stages):
                raise UserError(f"{where} {part}: a non-empty list of stages, each a non-empty list of blocks")
            out[part] = [[self._block(b, f"{where} {part} stage {si} block {bi}") for bi, b in enumerate(s)]
                         for si, s in enumerate(stages)]
        return out

    def _block(self, data: Any, where: str) -> tuple[Any, ...]:
        if not isinstance(data, Mapping) or set(data) - set(BLOCK_FIELDS) or not {"k", "c"} <= set(data):
            optional = sorted(BLOCK_DEFAULTS)
            raise UserError(f"{where}: a block is a mapping with k and c, and optionally {optional}; got {data!r}")
        block = {**BLOCK_DEFAULTS, **{k: _template(v) for k, v in data.items()}}
        if block["op"] not in ("ir", "conv") or isinstance(block["s"], Ref):
            raise UserError(f"{where}: op must be ir or conv and s (stride) a literal, got {data!r}")
        return tuple(block[f] for f in BLOCK_FIELDS)

    def _check_refs(self, names: set[str]) -> None:
        """Every ``$x`` names a parameter and every parameter is used."""
        used: set[str] = set()
        places = [(f"arch {part} stage {si} block {bi} {f}", t) for part, stages in self.arch_template.items()
                  for si, st in enumerate(stages) for bi, b in enumerate(st) for f, t in zip(BLOCK_FIELDS, b)]
        places += [(f"config {key}", t) for key, t in self.config_template.items()]
        for where, template in places:
            for ref in _refs(template):
                if ref not in names:
                    raise UserError(f"{self.path}: {where}: unknown parameter {ref!r}")
                used.add(ref)
        unused = sorted(names - used)
        if unused:
            raise UserError(f"{self.path}: parameter {unused[0]} is not used by arch or config")

    def _check_conditions(self, declared: Sequence[Param]) -> None:
        order = {p.name: i for i, p in enumerate(declared)}
        for p in declared:
            if p.when is None:
                continue
            parent = self.params[self._index[p.when.parent]] if p.when.parent in self._index else None
            where = f"{self.path}: parameter {p.name}: when"
            if not isinstance(parent, Choice) or order[parent.name] > order[p.name]:
                raise UserError(f"{where}: {p.when.parent!r} must be a choice parameter declared before it")
            if (parent.name in self.arch_names) != (p.name in self.arch_names):
                raise UserError(f"{where}: {parent.name} and {p.name} must both be arch or both recipe parameters")
            for v in p.when.values:
                try:
                    parent.index(v)
                except DomainError as e:
                    raise UserError(f"{where}: {parent.name} {e}") from None

    def _check_arch(self) -> None:
        """Build the arch with every parameter at each of its extreme values (others at their first)."""
        base = {p.name: p.extremes()[0] for p in self.params}
        blocks = [b for stages in self.arch_template.values() for st in stages for b in st]
        for p in (p for p in self.params if p.name in self.arch_names):
            for value in p.extremes():
                probe = {**base, p.name: value}
                try:
                    if any(not isinstance(_fill(b[2], probe), bool) for b in blocks):
                        raise UserError("se must be true or false")
                    parse_arch(self._arch(probe).to_data(), self.name)
                except UserError as e:
                    where = f"{self.path}: parameter {p.name} = {value!r}"
                    raise UserError(f"{where} makes an invalid arch ({e})") from None

    def _check_config_keys(self) -> None:
        """Each key exists in nars.config DEFAULTS and takes the template's value type."""
        probe = {p.name: p.extremes()[0] for p in self.params}
        cfg = default_config()
        for key, template in self.config_template.items():
            set_key(cfg, key, _fill(template, probe), f"{self.path}: config")

    # ----- candidates -----

    def _active(self, p: Param, candidate: Mapping[str, Any]) -> bool:
        w = p.when
        return w is None or (w.parent in candidate and any(same(candidate[w.parent], v) for v in w.values))

    def canonical(self, candidate: Mapping[str, Any], source: str = "candidate") -> dict[str, Any]:
        """The candidate with every active parameter in its canonical spelling; a UserError
        names an unknown, missing, inactive or out-of-domain parameter."""
        if not isinstance(candidate, Mapping):
            raise UserError(f"{source}: a candidate is a mapping of parameter values, got {type(candidate).__name__}")
        unknown = sorted(set(candidate) - set(self._index))
        if unknown:
            raise UserError(f"{source}: unknown parameter {unknown[0]!r} for space {self.name}")
        out: dict[str, Any] = {}
        for p in self.params:
            active = self._active(p, out)
            if active and p.name not in candidate:
                raise UserError(f"{source}: missing parameter {p.name}")
            if not active and p.name in candidate:
                w = p.when
                raise UserError(f"{source}: parameter {p.name} is inactive unless {w.parent} in {list(w.values)}")
            if active:
                try:
                    out[p.name] = p.canonical(_plain(candidate[p.name]))
                except DomainError as e:
                    raise UserError(f"{source}: parameter {p.name}: {e}") from None
        return out

    def candidate_id(self, candidate: Mapping[str, Any]) -> str:
        """12 hex digits of the SHA-256 of the canonical candidate as sorted, compact JSON."""
        return canonical_id(self.canonical(candidate))

    def _arch(self, c: Mapping[str, Any]) -> ArchSpec:
        def block(b: tuple[Any, ...]) -> BlockSpec:
            return BlockSpec(*(c[v.name] if isinstance(v, Ref) else v for v in b))

        parts = {part: tuple(tuple(map(block, st)) for st in stages) for part, stages in self.arch_template.items()}
        return ArchSpec(name=self.name, **parts)

    def to_arch(self, candidate: Mapping[str, Any]) -> ArchSpec:
        return self._arch(self.canonical(candidate))

    def to_overrides(self, candidate: Mapping[str, Any]) -> dict[str, Any]:
        """Dotted config keys -> values (inline arch included); keys of inactive parameters are left out."""
        c = self.canonical(candidate)
        out = {k: _fill(t, c) for k, t in self.config_template.items() if all(r in c for r in _refs(t))}
        out[ARCH_KEY] = self._arch(c).to_data()
        return out

    def to_config(self, candidate: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The complete nested config that ``nars train`` consumes: ``base`` (a complete config,
        e.g. with the datasets; default: nars defaults) plus the candidate's overrides."""
        cfg = copy.deepcopy(dict(base)) if base is not None else default_config()
        for key, value in self.to_overrides(candidate).items():
            set_key(cfg, key, value, f"space {self.name}")
        return cfg

    def from_config(self, cfg: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
        """The candidate of a config (nested or dotted keys; absent keys take their defaults);
        a UserError says which key or block lies outside the space."""
        bound: dict[str, Any] = {}
        for key, template in self.config_template.items():
            _bind(template, _lookup(cfg, key), bound, f"{source}: {key}")
        arch = resolve_arch(_lookup(cfg, ARCH_KEY))
        for part in PARTS:
            template, stages = self.arch_template[part], arch.part(part)
            shape_t, shape = [len(s) for s in template], [len(s) for s in stages]
            if shape_t != shape:
                raise UserError(f"{source}: arch {part} has {shape} block specs per stage; the space has {shape_t}")
            for si, (st, ss) in enumerate(zip(template, stages)):
                for bi, (bt, spec) in enumerate(zip(st, ss)):
                    e = int(spec.expansion) if float(spec.expansion).is_integer() else spec.expansion
                    values = (spec.kind, spec.kernel, spec.se, spec.out_channels, spec.stride, spec.repeats, e)
                    for f, t, v in zip(BLOCK_FIELDS, bt, values):
                        _bind(t, v, bound, f"{source}: arch {part} stage {si} block {bi} {f}")
        candidate: dict[str, Any] = {}
        for p in self.params:  # every parameter is bound: config keys all have defaults
            if self._active(p, candidate):
                candidate[p.name] = bound[p.name]
        return self.canonical(candidate, f"{source}: {self.name}")

    # ----- costs -----

    def cost_config(self, c: Mapping[str, Any]) -> dict[str, Any]:
        """The nested config of ``LATENCY_KEYS`` a canonical candidate's trials run with."""
        cfg: dict[str, Any] = {}
        for key, template in self.cost_templates.items():
            *path, leaf = key.split(".")
            node = cfg
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = _fill(template, c)
        return cfg

    def bind(self, base: Mapping[str, Any], pinned: Mapping[str, Any] | None = None) -> "SearchSpace":
        """This space costing the configs its trials really train: ``base`` (the complete
        config candidates override) for the keys the space leaves alone, and ``pinned`` (an
        experiment's ``config``, set over every candidate) over the space's own keys."""
        pinned = pinned or {}
        bound = copy.copy(self)
        bound.cost_templates = {
            k: pinned[k] if k in pinned else self.config_template.get(k, get(base, k)) for k in LATENCY_KEYS
        }
        return bound

    def with_latency(self, model: Any) -> "SearchSpace":
        """This space predicting each candidate's latency with ``model`` (a fitted
        ``predictor.latency.LatencyPredictor``): ``latencies``, and sampling and stage 2
        under ``max_latency_ms``."""
        space = copy.copy(self)
        space.latency_model = model
        return space

    def latencies(self, candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Predicted latency (ms) of canonical candidates, in one predictor call."""
        if self.latency_model is None:
            raise UserError(f"space {self.name}: no latency model (fit one with predictor.latency.fit_space_latency)")
        return self.latency_model.predict_configs([(self.cost_config(c), self._arch(c)) for c in candidates])

    def cost(self, candidate: Mapping[str, Any], *, canonical: bool = False) -> tuple[float, int]:
        """(MFLOPs, learnable params) of the candidate's model (``config_cost``: a square
        MIN_SIZE_TEST input, POST_NMS_TOPK_TEST RoIs), on the defaults unless ``bind`` gave a base.
        ``canonical``: the candidate is already canonical (``from_unit``'s, ``decode``'s), so
        sampling loops skip the check."""
        c = candidate if canonical else self.canonical(candidate)
        cost = config_cost(self.cost_config(c), self._arch(c))
        return cost.mflops["total"], cost.params["total"]

    # ----- vectors -----

    def from_codes(self, codes: np.ndarray) -> list[dict[str, Any]]:
        """Canonical candidates of code rows (one float per parameter, as ``unit_codes`` gives
        them; inactive parameters' codes are ignored)."""
        active = active_mask(self.params, codes, self._index)
        columns = [[p.value(x) for x in codes[:, j].tolist()] for j, p in enumerate(self.params)]
        names = [p.name for p in self.params]
        return [{n: col[i] for n, col, a in zip(names, columns, row) if a} for i, row in enumerate(active.tolist())]

    def codes(self, candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Code rows [N, len(params)] of candidates (NaN for inactive parameters): the inverse
        of ``from_codes``."""
        codes = np.full((len(candidates), len(self.params)), np.nan)
        for i, candidate in enumerate(candidates):
            for name, value in self.canonical(candidate, f"candidate {i}").items():
                j = self._index[name]
                codes[i, j] = self.params[j].code(value)
        return codes

    def encode(self, candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Float64 matrix [N, encoding_length]: one-hot choices, numbers scaled to [0, 1],
        zeros for inactive parameters; columns ``arch_slice`` then ``recipe_slice``."""
        codes = self.codes(candidates)
        return self._encode(codes)

    def encode_codes(self, codes: np.ndarray) -> np.ndarray:
        """``encode(from_codes(codes))`` without building the candidates (stage 2 encodes a
        million of them)."""
        return self._encode(np.where(active_mask(self.params, codes, self._index), codes, np.nan))

    def _encode(self, codes: np.ndarray) -> np.ndarray:
        """The encoding of code rows with NaN for inactive parameters."""
        return np.hstack([p.encode(codes[:, j]) for j, p in enumerate(self.params)] + [np.zeros((len(codes), 0))])

    def decode(self, x: np.ndarray) -> list[dict[str, Any]]:
        """Candidates of encoded rows (exact inverse of ``encode``; other rows are snapped
        to the nearest value: argmax for choices, rounding and clipping for numbers)."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        if x.shape[1] != self.encoding_length:
            raise UserError(f"space {self.name}: encodings have {self.encoding_length} columns, got {x.shape[1]}")
        return self.from_codes(np.column_stack([p.decode(x[:, s]) for p, s in zip(self.params, self._slices)]))

    def from_unit(self, u: np.ndarray) -> list[dict[str, Any]]:
        """Candidates of points of the unit cube [0, 1)^unit_dims (one coordinate per non-fixed parameter)."""
        return self.from_codes(self.unit_codes(u))

    def unit_codes(self, u: np.ndarray) -> np.ndarray:
        """Code rows [N, len(params)] of points of the unit cube: ``from_unit`` before the
        candidates are built, for the batch paths (``encode_codes``, ``batch_cost``)."""
        u = np.atleast_2d(np.asarray(u, dtype=float))
        if u.shape[1] != self.unit_dims:
            raise UserError(f"space {self.name}: unit points have {self.unit_dims} coordinates, got {u.shape[1]}")
        columns = iter(u.T)
        codes = [p.from_unit(next(columns)) if p.unit_width else np.zeros(len(u)) for p in self.params]
        return np.column_stack(codes)

    def log10_size(self) -> float:
        """log10 of the number of distinct candidates, counting conditions; continuous floats count once."""
        children: dict[str, list[Param]] = {}
        for p in self.params:
            if p.when is not None:
                children.setdefault(p.when.parent, []).append(p)

        def size(p: Param) -> int:
            if p.name not in children:
                return p.count()
            kids = children[p.name]  # p is a choice: sum over its values of what each enables
            return sum(math.prod(size(k) for k in kids if any(same(v, w) for w in k.when.values))  # type: ignore
                       for v in p.values)  # type: ignore

        return math.log10(math.prod(size(p) for p in self.params if p.when is None))


def canonical_id(candidate: Mapping[str, Any]) -> str:
    text = json.dumps(candidate, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
