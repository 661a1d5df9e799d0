"""``MODEL.WEIGHTS``: load this project's and d2go/fvcore checkpoints into FBNetV3IS.

A checkpoint is ``{"model": state_dict, "ema_state": ..., ...}`` (fvcore's layout, which
NARS also writes) or a bare state dict. d2go names the RPN ``proposal_generator.rpn_head``
where torchvision has ``rpn.head``; every other key already matches (see fbnetv3is.py).
Named checkpoints (``FBNetV3a-DSMask-C4 COCO``) are d2go's model-zoo files in the weights
folder; nothing downloads by itself: ``nars weights download NAME`` (nars.model.zoo) fetches
one when asked, or the user saves it there.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from nars.errors import UserError
from nars.model.arch import ArchSpec, parse_arch, resolve_arch
from nars.schema import read_yaml

WEIGHTS_DIR_ENV = "NARS_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path.home() / ".cache" / "nars" / "weights"


@dataclass(frozen=True)
class NamedCheckpoint:
    """One of d2go's released COCO Mask R-CNN checkpoints (80 classes), as NARS names it.

    Checked against d2go (facebookresearch/d2go at f4ac156, 2024-11-01):
    ``d2go/model_zoo/model_zoo.py`` lines 21-22 (``_ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX``)
    map ``mask_rcnn_fbnetv3a_C4.yaml`` to ``268421013/model_final.pth`` and
    ``mask_rcnn_fbnetv3a_dsmask_C4.yaml`` to ``268412271/model_0499999.pth``, under
    ``MODEL_ZOO_STORAGE_PREFIX`` (``d2go/utils/launch_environment.py`` line 9); lines 50-51 of
    ``MODEL_ZOO.md`` ("COCO Instance Segmentation") give the same ids and files, with box/mask
    AP 23.05/20.71 (Mask-RCNN-FBNetV3A) and 21.76/19.97 (Mask-RCNN-FBNetV3A-dsmask); the two
    ``configs/mask_rcnn_fbnetv3a*_C4.yaml`` set MODEL.FBNET_V2.ARCH FBNetV3_A / FBNetV3_A_dsmask.
    d2go publishes no checksums: a download is checked by loading it whole (nars.model.zoo).
    """

    name: str  # as users write it; looked up case-insensitively
    arch: str  # MODEL.FBNET_V2.ARCH
    filename: str  # in the weights folder
    d2go_config: str  # d2go's configs/<this>
    zoo_path: str  # relative to the model zoo's base URL
    box_ap: float  # COCO val2017, d2go's MODEL_ZOO.md
    mask_ap: float


NAMED_CHECKPOINTS: dict[str, NamedCheckpoint] = {
    c.name.lower(): c
    for c in (
        NamedCheckpoint("FBNetV3a-DSMask-C4 COCO", "FBNetV3_A_dsmask", "mask_rcnn_fbnetv3a_dsmask_C4.pth",
                        "mask_rcnn_fbnetv3a_dsmask_C4.yaml", "268412271/model_0499999.pth", 21.76, 19.97),
        NamedCheckpoint("FBNetV3a-C4 COCO", "FBNetV3_A", "mask_rcnn_fbnetv3a_C4.pth",
                        "mask_rcnn_fbnetv3a_C4.yaml", "268421013/model_final.pth", 23.05, 20.71),
    )
}

FINAL_WEIGHTS = "model_final.pth"  # what a run folder's training ends with
_KEY_RENAMES = (("proposal_generator.rpn_head.", "rpn.head."), ("module.", ""))
# Parts whose shape follows the class count; re-initialised when it differs.
PREDICTOR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")


@dataclass
class LoadReport:
    """What a load did, as ``nars model info --weights`` prints it."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_DIR_ENV, DEFAULT_WEIGHTS_DIR))


def named_checkpoint(value: str) -> NamedCheckpoint | None:
    return NAMED_CHECKPOINTS.get(value.strip().lower())


def resolve_weights(value: str) -> tuple[Path, str | None]:
    """A path (a NARS run, trial or export folder: its model_final.pth), or a named
    checkpoint; returns (file, the architecture the name implies)."""
    named = named_checkpoint(value)
    if named is None:
        path = Path(value).expanduser()
        if path.is_dir():
            path = path / FINAL_WEIGHTS
        if not path.is_file():
            raise UserError(f"MODEL.WEIGHTS: checkpoint file {path} does not exist")
        return path, None
    path = weights_dir() / named.filename
    if not path.is_file():
        raise UserError(
            f"MODEL.WEIGHTS {value!r}: {path} is missing; fetch d2go's checkpoint with "
            f"`nars weights download '{named.name}'`, or save it there yourself "
            f"(or set {WEIGHTS_DIR_ENV} to the folder holding {named.filename})"
        )
    return path, named.arch


_TORCH_ADVICE = re.compile(r"weights.only|trust|check the documentation|file an issue", re.IGNORECASE)


def _refusal(error: Exception) -> str | None:
    """What torch's weights-only unpickler refused (``Unsupported global: GLOBAL x.Y``), without
    the advice around it: torch suggests ``weights_only=False`` or allowlisting the global,
    either of which would let the file run code. None when ``error`` is not such a refusal."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours its advice
    if not re.search(r"weights.only", text, re.IGNORECASE):
        return None
    details = (re.split(r" was not an allowed global|\. Please use", line)[0].strip().rstrip(".")
               for line in text.split("WeightsUnpickler error:", 1)[-1].splitlines())
    return next((d for d in details if d and not _TORCH_ADVICE.search(d)), "objects beyond tensors and containers")


def torch_load(path: str | Path, what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(weights_only=True)`` onto the CPU; a file it cannot read, or refuses, is a
    UserError naming the file and what it should be, never with torch's advice to load it unsafely."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, IndexError) as e:  # IndexError: junk bytes
        refused = _refusal(e)
        if refused is not None:
            raise UserError(f"{path}: not a readable {what} (not a valid or safe one: {refused}; NARS "
                            "loads only tensors and plain containers, never code)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable {what} ({first})") from None


def read_checkpoint(path: Path) -> Mapping[str, Any]:
    """A checkpoint (``torch_load``), which must be a dict."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, Mapping):
        raise UserError(f"{path}: a checkpoint must hold a dict, got {type(ckpt).__name__}")
    return ckpt


def checkpoint_arch(path: Path, ckpt: Mapping[str, Any], named_arch: str | None, explicit: Any) -> ArchSpec | None:
    """The architecture a checkpoint's weights are of, when known: ``explicit``
    (MODEL.WEIGHTS_ARCH), else what the checkpoint records (NARS writes ``"arch"``), else the
    named checkpoint's, else the run's ``config.yaml`` beside the file; None when unknown."""
    source = "MODEL.WEIGHTS_ARCH"
    arch = explicit or None
    if arch is None and isinstance(ckpt.get("arch"), (str, Mapping)):
        arch, source = ckpt["arch"], f"{path}: arch"
    if arch is None and named_arch:
        arch = named_arch
    config = path.parent / "config.yaml"
    if arch is None and config.is_file():
        data = read_yaml(config)
        arch = ((data.get("MODEL") or {}).get("FBNET_V2") or {}).get("ARCH") if isinstance(data, Mapping) else None
        source = f"{config}: MODEL.FBNET_V2.ARCH"
    if arch is None:
        return None
    if isinstance(arch, str):
        return resolve_arch(arch)
    return parse_arch(arch, "parent", source)


def state_dict_of(ckpt: Mapping[str, Any], use_ema: bool, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights (the EMA copy when present and asked for), keys in NARS's names."""
    state = ckpt.get("model", ckpt)
    ema = ckpt.get("ema_state")
    if use_ema and isinstance(ema, Mapping) and ema:
        state = {**state, **ema.get("model", ema)} if isinstance(state, Mapping) else ema
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    if not tensors:
        raise UserError(f"{path}: no tensors found (expected a state dict, bare or under 'model')")
    renamed = {}
    for key, value in tensors.items():
        for old, new in _KEY_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
        renamed[key] = value
    return renamed


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """Load matching keys; report the rest. A different class count re-initialises the
    predictors (with a warning) instead of failing."""
    own = model.state_dict()
    report = LoadReport()
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    other_classes = cls_key in state and cls_key in own and state[cls_key].shape[0] != own[cls_key].shape[0]
    usable = {}
    for key, value in state.items():
        if key not in own:
            if not key.endswith("num_batches_tracked"):  # absent from frozen BN, harmless
                report.unexpected.append(key)
        elif value.shape != own[key].shape:
            if other_classes and key.startswith(PREDICTOR_PREFIXES):
                report.reinitialized.append(key)
            else:
                report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    if report.reinitialized:
        warnings.warn(
            f"checkpoint has {state[cls_key].shape[0] - 1} classes, the model {own[cls_key].shape[0] - 1}: "
            "box predictor and mask logits keep their fresh initialisation",
            stacklevel=2,
        )
    return report


def load_weights(model: nn.Module, value: str, use_ema: bool = True) -> LoadReport:
    """Resolve ``MODEL.WEIGHTS`` and load it; a named checkpoint must match the model's arch."""
    path, arch = resolve_weights(value)
    model_arch = getattr(getattr(model, "arch", None), "name", None)
    if arch is not None and model_arch is not None and model_arch != arch:
        raise UserError(f"MODEL.WEIGHTS {value!r} is for MODEL.FBNET_V2.ARCH {arch}, the config has {model_arch}")
    return load_state(model, state_dict_of(read_checkpoint(path), use_ema, path))
