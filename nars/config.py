"""FBNetV3IS configs: detectron2/d2go key names and their defaults.

A config is a plain nested dict. Every key a user may set exists in ``DEFAULTS``; a YAML
file or ``KEY VALUE`` overrides are merged on top and validated by ``nars.schema``
(unknown keys name the closest valid one; values are parsed with ``yaml.safe_load`` only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from nars.schema import Schema, resolve_file

CONFIG_DIR = Path(__file__).parent / "configs"

DEFAULTS: dict[str, Any] = {
    "MODEL": {
        "DEVICE": "cpu",
        "WEIGHTS": "",
        "WEIGHTS_EMA": False,
        # The architecture of MODEL.WEIGHTS when the file does not record it ("": its own
        # record, the named checkpoint's, or this config's). Another architecture than the
        # config's is inherited at the start of a training (nars.model.inherit).
        "WEIGHTS_ARCH": "",
        "PIXEL_MEAN": [103.53, 116.28, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "FBNET_V2": {
            "ARCH": "FBNetV3_A_dsmask",
            "NORM": "naiveSyncBN",
            "NORM_GROUPS": 32,
            "WIDTH_DIVISOR": 8,
            "DROP_CONNECT_RATE": 0.0,
        },
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
            "SMOOTH_L1_BETA": 0.0,
        },
        "ROI_HEADS": {
            "NUM_CLASSES": 80,
            "IOU_THRESHOLDS": [0.5],
            "BATCH_SIZE_PER_IMAGE": 512,
            "POSITIVE_FRACTION": 0.25,
            "SCORE_THRESH_TEST": 0.05,
            "NMS_THRESH_TEST": 0.5,
        },
        "ROI_BOX_HEAD": {
            "POOLER_RESOLUTION": 6,
            "POOLER_SAMPLING_RATIO": 0,
            "POOLER_TYPE": "ROIAlignV2",
            "SMOOTH_L1_BETA": 0.0,
        },
        "ROI_MASK_HEAD": {"POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0, "POOLER_TYPE": "ROIAlignV2"},
    },
    "INPUT": {
        "FORMAT": "BGR",
        "MIN_SIZE_TRAIN": [224],
        "MAX_SIZE_TRAIN": 320,
        "MIN_SIZE_TEST": 224,
        "MAX_SIZE_TEST": 320,
        # Training-time augmentation (nars.data.coco), on the raw image before the model resizes it.
        "RANDOM_FLIP": "horizontal",
        "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9]},
    },
    "TEST": {"DETECTIONS_PER_IMAGE": 100, "EVAL_PERIOD": 0},
    # ALLOW_OUTSIDE_IMAGES: a JSON's file_name may leave its image folder (../, absolute); off, such a JSON is refused.
    "DATASETS": {"TRAIN": {"JSON": "", "IMAGES": ""}, "TEST": {"JSON": "", "IMAGES": ""},
                 "ALLOW_OUTSIDE_IMAGES": False},
    "DATALOADER": {"NUM_WORKERS": 2},
    # The training recipe (nars.engine.solver); values of d2go's mask_rcnn_fbnetv3a_dsmask_C4.
    "SOLVER": {
        "OPTIMIZER": "sgd",
        "BASE_LR": 0.16,
        "MOMENTUM": 0.9,
        "WEIGHT_DECAY": 0.0001,
        "WEIGHT_DECAY_NORM": 0.0,
        "IMS_PER_BATCH": 32,
        "MAX_ITER": 540000,
        "WARMUP_ITERS": 1000,
        "WARMUP_FACTOR": 0.001,
        "LR_SCHEDULER_NAME": "WarmupCosineLR",
        "STEPS": [30000],
        "GAMMA": 0.1,
        "CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0, "NORM_TYPE": 2.0},
        "CHECKPOINT_PERIOD": 5000,
        "MAX_TO_KEEP": 3,
    },
    "MODEL_EMA": {"ENABLED": True, "DECAY": 0.9998},
    # Quantization-aware fine-tuning (nars.model.qat) for an int8 deployment (nars deploy --int8):
    # from START_ITER the network trains on fake-quantized weights and activations; the activation
    # ranges stop moving at DISABLE_OBSERVER_ITER (-1: never). d2go's key names.
    "QUANTIZATION": {"QAT": {"ENABLED": False, "START_ITER": 0, "DISABLE_OBSERVER_ITER": -1}},
    "SEED": -1,
    "OUTPUT_DIR": "./output",
}

# Keys whose value may take more than the default's type.
_ALTERNATIVE_TYPES: dict[str, tuple[type, ...]] = {
    "MODEL.FBNET_V2.ARCH": (str, dict),
    "MODEL.WEIGHTS_ARCH": (str, dict),
    "MODEL.RPN.IOU_THRESHOLDS": (list, float),
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": (list, float),
    "INPUT.MIN_SIZE_TRAIN": (list, int),
}


CONFIG_SCHEMA = Schema(DEFAULTS, _ALTERNATIVE_TYPES)


def set_key(cfg: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set a dotted key after checking it exists in DEFAULTS and the value's type."""
    CONFIG_SCHEMA.set_key(cfg, key, value, source)


def merge(cfg: dict[str, Any], updates: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Merge a nested mapping of updates into cfg (validated key by key)."""
    return CONFIG_SCHEMA.merge(cfg, updates, source)


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a config shipped in ``nars/configs``."""
    return resolve_file(name_or_path, CONFIG_DIR, "config")


def default_config() -> dict[str, Any]:
    return CONFIG_SCHEMA.default()


def load_config(name_or_path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file (path or shipped name), then ``KEY VALUE`` overrides."""
    path = None if name_or_path is None else resolve_config_path(name_or_path)
    return CONFIG_SCHEMA.load(path, overrides)


def get(cfg: Mapping[str, Any], key: str) -> Any:
    """Read a dotted key."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def dump(cfg: Mapping[str, Any]) -> str:
    """The fully resolved config as YAML (what ``nars train`` writes to DIR/config.yaml)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)
