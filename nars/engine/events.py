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

from nars.fileio import atomic_write_text, writing

METRICS_FILE = "metrics.jsonl"
_METRICS, _EVENTS = "the metrics", "the TensorBoard events"


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
    """Writes scalars of an iteration to both sinks; main process only. A full disk is a
    UserError naming the file (TensorBoard's writer thread re-raises its errors in ``flush``)."""

    def __init__(self, directory: str | Path, start_iter: int = 0):
        self.directory = Path(directory)
        self._metrics = self.directory / METRICS_FILE
        if start_iter > 0:
            kept = [r for r in read_metrics(self.directory) if r.get("iteration", 0) < start_iter]
            atomic_write_text(self._metrics, "".join(json.dumps(r) + "\n" for r in kept), _METRICS)
        with writing(self._metrics, _METRICS):
            self._jsonl = open(self._metrics, "a", encoding="utf-8")
        with writing(self.directory, _EVENTS):
            self._tensorboard = SummaryWriter(str(self.directory), purge_step=start_iter or None)

    def write(self, iteration: int, scalars: Mapping[str, float | None]) -> None:
        values = {k: v for k, v in scalars.items() if v is not None}
        with writing(self._metrics, _METRICS):
            self._jsonl.write(json.dumps({"iteration": iteration, **values}) + "\n")
            self._jsonl.flush()
        with writing(self.directory, _EVENTS):
            for name, value in values.items():
                if math.isfinite(value):
                    self._tensorboard.add_scalar(name, value, iteration)
            self._tensorboard.flush()

    def close(self) -> None:
        try:
            with writing(self._metrics, _METRICS):
                self._jsonl.close()
        finally:
            with writing(self.directory, _EVENTS):
                self._tensorboard.close()
