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

A run with a weight-sharing supernet (``stage1.fidelity: supernet``) also gets
``RUN/tensorboard/supernet/``: the supernet's training scalars from ``RUN/supernet/metrics.jsonl``
(losses, distillation terms, lr ... by iteration: that file is its history with a resume's
dropped steps already gone), and its zero-shot results as ``zero_shot/segm_AP`` and
``zero_shot/bbox_AP`` with the sub-network's MFLOPs (rounded) as the step: TensorBoard's chart of
them is AP against cost, the search's question. Scalars rather than a text table because the
ids and choices are in ``nars report``'s table; here the point is the shape of the cloud.

Writing a folder replaces it whole (written next to it, then renamed in), so logging a trial
again after a resume leaves one copy. ``.updated`` in the folder records what it was written
from (a trial's store row; a digest of the supernet's metrics and zero-shot records), so
``log_run`` rewrites only what changed since.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from nars.engine.events import read_metrics
from nars.fileio import atomic_write_text, make_dirs, staged_folder
from nars.search.store import FINAL, open_run

if TYPE_CHECKING:
    from tensorboard.compat.proto.event_pb2 import Event

TENSORBOARD_DIR = "tensorboard"
# the run's supernet folder (stage1.fidelity supernet), where the driver trains it
SUPERNET_DIR = "supernet"
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


def _scalar_event(wall_time: float, step: int, values: Mapping[str, float]) -> Event:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    return Event(wall_time=wall_time, step=step, summary=summary)


def _replace_folder(run_dir: Path, name: str, what: str, events: Iterable[Event], stamp: str) -> None:
    """Write ``RUN/tensorboard/<name>/`` anew from ``events``, stamped with ``stamp``."""
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    root = make_dirs(Path(run_dir) / TENSORBOARD_DIR, "the TensorBoard folder")
    final = root / name
    try:
        # staged outside the logdir, where TensorBoard would take it for a run
        with staged_folder(final, what, beside=root.parent, replace=True) as tmp:
            writer = EventFileWriter(str(tmp))
            for event in events:
                writer.add_event(event)
            writer.close()
            atomic_write_text(tmp / _STAMP, stamp)
    except OSError:
        if not final.is_dir():
            raise  # else a concurrent writer (the driver, nars report) put the same folder there first


def _stale(run_dir: Path, name: str, stamp: str) -> bool:
    path = Path(run_dir) / TENSORBOARD_DIR / name / _STAMP
    return not path.is_file() or path.read_text() != stamp


def log_trial(run_dir: Path, trial: Mapping[str, Any]) -> None:
    """Write (or replace) ``RUN/tensorboard/<trial id>/`` from the trial's store row, as
    ``RunStore.trials()`` returns it."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb

    start, end = trial["created"], trial["updated"]
    session = Event(wall_time=start, summary=hparams_pb(hparams(trial), trial["id"], start))
    scalars = [_scalar_event(end, step, values) for step, values in _scalars(trial)]
    _replace_folder(run_dir, trial["id"], f"trial {trial['id']}'s TensorBoard events", [session, *scalars],
                    repr(trial["updated"]))


def _supernet_scalars(metrics: Sequence[Mapping[str, Any]],
                      zero_shot: Sequence[Mapping[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: value}): each training record by its iteration, then each zero-shot
    sub-network's APs at its MFLOPs, cheapest first."""
    training = [(int(r["iteration"]), {k: float(v) for k, v in r.items() if k != "iteration"}) for r in metrics]
    shots = [(round(z["mflops"]), {"zero_shot/segm_AP": float(z["segm_AP"]), "zero_shot/bbox_AP": float(z["bbox_AP"])})
             for z in sorted(zero_shot, key=lambda z: z["mflops"])]
    return training + shots


def _supernet_stamp(metrics: Sequence[Mapping[str, Any]], zero_shot: Sequence[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([metrics, zero_shot], sort_keys=True).encode()).hexdigest()


def log_run(run_dir: Path) -> int:
    """(Re)write every finished trial whose folder is missing or older than its store row (a
    run searched before this existed, a latency measured after the trial finished), and the
    supernet's folder when its metrics or zero-shot records changed; returns how many folders
    were written."""
    store = open_run(Path(run_dir))
    try:
        trials = store.trials(status=FINAL)
        zero_shot = store.get_meta("zero_shot") or []
    finally:
        store.close()
    todo = [t for t in trials if _stale(run_dir, t["id"], repr(t["updated"]))]
    for trial in todo:
        log_trial(run_dir, trial)
    written = len(todo)
    metrics = read_metrics(Path(run_dir) / SUPERNET_DIR)
    stamp = _supernet_stamp(metrics, zero_shot)
    if (metrics or zero_shot) and _stale(run_dir, SUPERNET_DIR, stamp):
        now = time.time()  # the records carry no wall time; steps (iterations, MFLOPs) are the axis
        events = [_scalar_event(now, step, values) for step, values in _supernet_scalars(metrics, zero_shot)]
        _replace_folder(run_dir, SUPERNET_DIR, "the supernet's TensorBoard events", events, stamp)
        written += 1
    return written
