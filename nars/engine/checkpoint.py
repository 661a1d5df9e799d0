"""Training checkpoints: written atomically, the last N kept, and complete enough to resume.

Layout of a run folder, as fvcore/detectron2 write it: ``model_0004999.pth`` after iteration
4999 (0-based; every ``SOLVER.CHECKPOINT_PERIOD`` iterations), ``model_final.pth`` at the
end, and ``last_checkpoint``, a text file naming the newest of them. Only the newest
``SOLVER.MAX_TO_KEEP`` periodic files are kept; ``model_final.pth`` is never removed.

A checkpoint is fvcore's dict, loadable with ``torch.load(weights_only=True)``:
``{"model", "optimizer", "scheduler", "iteration", "ema_state" (when MODEL_EMA is on),
"rng" (one state per process: torch, CUDA, numpy, random), "seed", "categories"}``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from nars.errors import UserError
from nars.fileio import atomic_torch_save, atomic_write_text
from nars.model.weights import FINAL_WEIGHTS

LAST = "last_checkpoint"
FINAL = FINAL_WEIGHTS
_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


def periodic_name(iteration: int) -> str:
    return f"model_{iteration:07d}.pth"


class Checkpointer:
    """Saves and finds the checkpoints of one run folder."""

    def __init__(self, directory: str | Path, max_to_keep: int):
        if max_to_keep < 1:
            raise UserError(f"SOLVER.MAX_TO_KEEP must be >= 1, got {max_to_keep}")
        self.directory, self.max_to_keep = Path(directory), max_to_keep

    def save(self, name: str, checkpoint: Mapping[str, Any]) -> Path:
        """Write ``name`` atomically, point ``last_checkpoint`` at it, drop old periodic files."""
        path = self.directory / name
        atomic_torch_save(path, dict(checkpoint), "the checkpoint")
        atomic_write_text(self.directory / LAST, name, "the pointer to the last checkpoint")
        periodic = sorted(p for p in self.directory.iterdir() if _PERIODIC.match(p.name))
        for old in periodic[: max(0, len(periodic) - self.max_to_keep)]:
            old.unlink(missing_ok=True)
        return path

    def last(self) -> Path | None:
        """The checkpoint ``last_checkpoint`` names; None in a folder without one."""
        pointer = self.directory / LAST
        if not pointer.is_file():
            return None
        path = self.directory / pointer.read_text(encoding="utf-8").strip()
        if not path.is_file():
            raise UserError(f"{pointer} names {path.name}, which does not exist; cannot resume")
        return path


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's random state: torch (and CUDA), numpy and ``random``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "random": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    r = state["random"]
    random.setstate((r["version"], tuple(r["internal"]), r["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_all(seed: int) -> None:
    """Seed torch (every device), numpy and ``random`` from one integer."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
