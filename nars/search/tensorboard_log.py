"""A search in TensorBoard: ``RUN/tensorboard/<trial id>/`` per finished trial.

Each trial folder is one HParams session (its candidate's choices, stage, round and status
as hparams) and holds its metrics as scalars: every reported value of its history (segm and
bbox AP ...) by iteration, so a learning curve's last point is the trial's final value, and
its MFLOPs, params and latency at its last iteration.

No experiment config (``hparams_config``) is written on purpose: without one, TensorBoard
builds the experiment from every session it finds, with each hparam's domain taken from the
values the trials actually have. A config written up front would have to list every value a
choice can take, or the dashboard filters out the trials outside it. A session's metrics
are the scalars of its own folder; so nothing but the trial's own values goes there.

Writing a trial replaces its folder whole (written next to it, then renamed in), so logging
a trial again after a resume leaves one copy. ``.updated`` in the folder records the store
row it was written from, so ``log_run`` rewrites only what changed since.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from nars.fileio import atomic_write_text, make_dirs, staged_folder
from nars.search.store import FINAL, open_run

TENSORBOARD_DIR = "tensorboard"
_STAMP = ".updated"
_COSTS = {"MFLOPs": "mflops", "params": "params", "latency_ms": "latency_ms",
          "measured_latency_ms": "measured_latency_ms"}


def hparams(trial: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """The trial's choices as the scalars HParams accepts (lists and mappings as JSON text),
    plus its stage, round and status."""
    out: dict[str, bool | int | float | str] = {}
    for name, value in trial["candidate"].items():
        if value is None:
            continue
        out[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)
    out.update(stage=trial["stage"], round=trial["round"], status=trial["status"])
    return out


def _scalars(trial: Mapping[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: value}) events: each report of the history by its iteration, then the
    costs at the last one."""
    events = [(int(r["iteration"]), {k: float(v) for k, v in r.items() if k not in ("iteration", "wall_time")
                                     and isinstance(v, (int, float)) and not isinstance(v, bool)})
              for r in trial["history"]]
    costs = {tag: float(trial[key]) for tag, key in _COSTS.items() if trial.get(key) is not None}
    return events + [(events[-1][0] if events else 0, costs)]


def log_trial(run_dir: Path, trial: Mapping[str, Any]) -> None:
    """Write (or replace) ``RUN/tensorboard/<trial id>/`` from the trial's store row, as
    ``RunStore.trials()`` returns it."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    root = make_dirs(Path(run_dir) / TENSORBOARD_DIR, "the TensorBoard folder")
    final = root / trial["id"]
    try:
        # staged outside the logdir, where TensorBoard would take it for a run
        with staged_folder(final, f"trial {trial['id']}'s TensorBoard events", beside=root.parent,
                           replace=True) as tmp:
            writer = EventFileWriter(str(tmp))
            start, end = trial["created"], trial["updated"]
            writer.add_event(Event(wall_time=start, summary=hparams_pb(hparams(trial), trial["id"], start)))
            for step, values in _scalars(trial):
                summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
                writer.add_event(Event(wall_time=end, step=step, summary=summary))
            writer.close()
            atomic_write_text(tmp / _STAMP, repr(trial["updated"]))
    except OSError:
        if not final.is_dir():
            raise  # else a concurrent writer (the driver, nars report) put the same trial there first


def _stale(run_dir: Path, trial: Mapping[str, Any]) -> bool:
    stamp = Path(run_dir) / TENSORBOARD_DIR / trial["id"] / _STAMP
    return not stamp.is_file() or stamp.read_text() != repr(trial["updated"])


def log_run(run_dir: Path) -> int:
    """(Re)write every finished trial whose folder is missing or older than its store row (a
    run searched before this existed, a latency measured after the trial finished); returns
    how many were written."""
    store = open_run(Path(run_dir))
    try:
        trials = store.trials(status=FINAL)
    finally:
        store.close()
    todo = [t for t in trials if _stale(run_dir, t)]
    for trial in todo:
        log_trial(run_dir, trial)
    return len(todo)
