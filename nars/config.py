"""FBNetV3IS configs: detectron2/d2go key names, defaults, YAML loading and validation.

A config is a plain nested dict. Every key a user may set exists in ``DEFAULTS``; a YAML
file or ``KEY VALUE`` overrides are merged on top and type-checked, and an unknown key is
an error that names the closest valid one. Values are parsed with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from nars.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"

DEFAULTS: dict[str, Any] = {
    "MODEL": {
        "DEVICE": "cpu",
        "WEIGHTS": "",
        "WEIGHTS_EMA": True,
        "PIXEL_MEAN": [103.53, 116.28, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "FBNET_V2": {"ARCH": "FBNetV3_A_dsmask", "NORM": "naiveSyncBN", "NORM_GROUPS": 32, "WIDTH_DIVISOR": 8},
        "BACKBONE": {"FREEZE_AT": 0},
        "ANCHOR_GENERATOR": {"SIZES": [[32, 64, 96, 128, 160]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
        "RPN": {
            "IOU_THRESHOLDS": [0.3, 0.7],
            "BATCH_SIZE_PER_IMAGE": 256,
            "POSITIVE_FRACTION": 0.5,
            "PRE_NMS_TOPK_TRAIN": 2000,
            "PRE_NMS_TOPK_TEST": 1000,
            "POST_NMS_TOPK_TRAIN": 2000,
            "POST_NMS_TOPK_TEST": 30,
            "NMS_THRESH": 0.7,
        },
        "ROI_HEADS": {
            "NUM_CLASSES": 80,
            "IOU_THRESHOLDS": [0.5],
            "BATCH_SIZE_PER_IMAGE": 512,
            "POSITIVE_FRACTION": 0.25,
            "SCORE_THRESH_TEST": 0.05,
            "NMS_THRESH_TEST": 0.5,
        },
        "ROI_BOX_HEAD": {"POOLER_RESOLUTION": 6, "POOLER_SAMPLING_RATIO": 0, "POOLER_TYPE": "ROIAlignV2"},
        "ROI_MASK_HEAD": {"POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0, "POOLER_TYPE": "ROIAlignV2"},
    },
    "INPUT": {
        "FORMAT": "BGR",
        "MIN_SIZE_TRAIN": [224],
        "MAX_SIZE_TRAIN": 320,
        "MIN_SIZE_TEST": 224,
        "MAX_SIZE_TEST": 320,
    },
    "TEST": {"DETECTIONS_PER_IMAGE": 100},
}

# Keys whose value may take more than the default's type.
_ALTERNATIVE_TYPES: dict[str, tuple[type, ...]] = {
    "MODEL.FBNET_V2.ARCH": (str, dict),
    "MODEL.RPN.IOU_THRESHOLDS": (list, float),
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": (list, float),
    "INPUT.MIN_SIZE_TRAIN": (list, int),
}


def flat_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs; dict values of keys in _ALTERNATIVE_TYPES are leaves."""
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full not in _ALTERNATIVE_TYPES:
            yield from flat_keys(value, full + ".")
        else:
            yield full, value


def _all_keys() -> list[str]:
    return [k for k, _ in flat_keys(DEFAULTS)]


def _unknown_key(key: str, source: str) -> UserError:
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return UserError(f"{source}: unknown config key {key}{hint}")


def _type_name(types: Sequence[type]) -> str:
    names = {bool: "bool", int: "int", float: "number", str: "string", list: "list", dict: "mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_value(key: str, value: Any, default: Any, source: str) -> Any:
    types = _ALTERNATIVE_TYPES.get(key, (type(default),))
    for t in types:
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, bool):
            continue
        if isinstance(value, t):
            return value
    raise UserError(f"{source}: {key} expects {_type_name(types)}, got {type(value).__name__} {value!r}")


def set_key(cfg: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set a dotted key after checking it exists in DEFAULTS and the value's type."""
    node: Any = DEFAULTS
    target = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            raise _unknown_key(key, source)
        node, target = node[part], target.setdefault(part, {})
    leaf = parts[-1]
    if not isinstance(node, dict) or leaf not in node:
        raise _unknown_key(key, source)
    target[leaf] = _check_value(key, value, node[leaf], source)


def merge(cfg: dict[str, Any], updates: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Merge a nested mapping of updates into cfg (validated key by key)."""
    if not isinstance(updates, Mapping):
        raise UserError(f"{source}: a config must be a mapping of keys, got {type(updates).__name__}")
    for key, value in flat_keys(updates):
        set_key(cfg, key, value, source)
    return cfg


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


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a config shipped in ``nars/configs``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise UserError(f"config {name_or_path}: no such file and no shipped config of that name (shipped: {known})")


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


def default_config() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


def load_config(name_or_path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file (path or shipped name), then ``KEY VALUE`` overrides."""
    cfg = default_config()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        data = read_yaml(path)
        merge(cfg, data or {}, str(path))
    for key, value in parse_overrides(overrides):
        set_key(cfg, key, value, "command line")
    return cfg


def get(cfg: Mapping[str, Any], key: str) -> Any:
    """Read a dotted key."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def dump(cfg: Mapping[str, Any]) -> str:
    """The fully resolved config as YAML (what ``nars train`` writes to DIR/config.yaml)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)
