"""A training run's metrics: ``DIR/metrics.jsonl`` and TensorBoard event files in ``DIR``.

``metrics.jsonl`` holds one JSON object per line, ``{"iteration": i, name: value, ...}``,
each appended whole in one write (a crash loses at most the line being written). The same
scalars go to TensorBoard under the same names (``loss_mask``, ``lr``, ``segm/AP`` ...).
On resume from iteration i, lines and events from i on (written after that checkpoint by
the interrupted run) are dropped first, so the history reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

from torch.utils.tensorboard import SummaryWriter

from nars.fileio import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def read_metrics(directory: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (a torn last line is skipped)."""
    path = Path(directory) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class EventWriter:
    """Writes scalars of an iteration to both sinks; main process only."""

    def __init__(self, directory: str | Path, start_iter: int = 0):
        self.directory = Path(directory)
        if start_iter > 0:
            kept = [r for r in read_metrics(self.directory) if r.get("iteration", 0) < start_iter]
            atomic_write_text(self.directory / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
        self._jsonl = open(self.directory / METRICS_FILE, "a", encoding="utf-8")
        self._tensorboard = SummaryWriter(str(self.directory), purge_step=start_iter or None)

    def write(self, iteration: int, scalars: Mapping[str, float | None]) -> None:
        values = {k: v for k, v in scalars.items() if v is not None}
        self._jsonl.write(json.dumps({"iteration": iteration, **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            if math.isfinite(value):
                self._tensorboard.add_scalar(name, value, iteration)
        self._tensorboard.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()
