"""Search trials on Ray Tune: each trial trains one candidate with ``nars.engine.train``.

The driver hands a batch of trials (id, complete FBNetV3IS config, output folder, where to
stop) to one ``Tuner.fit``; trials report COCO AP at every evaluation, ASHA stops weak ones
early, and a callback in the driver writes every report and outcome to the run store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ray.tune import Callback
from tqdm import tqdm

from nars.engine.trainer import START_WEIGHTS_FILE
from nars.search.store import RunStore

_REPORTED = ("iteration", "wall_time", "inherited")  # besides the APs


@dataclass
class TrialSpec:
    id: str
    cfg: dict[str, Any]  # the complete config nars train consumes
    out_dir: str

    @property
    def max_iter(self) -> int:
        return self.cfg["SOLVER"]["MAX_ITER"]


def _flat(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{"segm": {"AP": x}, ...}`` -> ``{"segm_AP": x, ...}`` (None/-1 become 0: nothing found)."""
    out = {}
    for task, values in metrics.items():
        for name, value in (values or {}).items():
            out[f"{task}_{name}"] = float(value) if value is not None and value >= 0 else 0.0
    return out


def _inherited(out: Path) -> dict[str, float]:
    """The share of the candidate's weights its parent gave it (``start_weights.json``)."""
    path = out / START_WEIGHTS_FILE
    return {"inherited": json.loads(path.read_text())["fraction"]} if path.is_file() else {}


def run_trial(config: dict[str, Any], specs: Mapping[str, TrialSpec], threads: int) -> None:
    """The Ray Tune trainable: train the candidate (from its config's MODEL.WEIGHTS, the
    experiment's parent, when set) and report AP as it goes."""
    import torch
    from ray import tune

    from nars.engine.evaluator import recipe_metrics
    from nars.engine.trainer import train

    torch.set_num_threads(threads)
    spec = specs[config["trial_id"]]
    out = Path(spec.out_dir)
    if out.exists():  # a run interrupted with its driver: start it again from scratch
        shutil.rmtree(out)
    start = time.time()

    def on_eval(iteration: int, metrics: Mapping[str, Any]) -> None:
        # the candidate is scored by the weights its recipe delivers (EMA's when it keeps one)
        tune.report({"iteration": iteration + 1, "wall_time": time.time() - start, **_inherited(out),
                     **_flat(recipe_metrics(metrics))})

    train(spec.cfg, out, progress=False, on_eval=on_eval)


class StoreCallback(Callback):
    """Tune callback (driver side): reports, outcomes and a live progress line."""

    def __init__(self, store: RunStore, specs: Mapping[str, TrialSpec], label: str, best: float):
        self.store, self.specs, self.label, self.best = store, specs, label, best
        self.last: dict[str, dict[str, Any]] = {}
        self.counts = {"running": 0, "done": 0, "failed": 0, "pruned": 0}
        self.bar = tqdm(total=len(specs), desc=label, unit="trial", dynamic_ncols=True)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into its experiment state; the live handles stay behind."""
        return {k: v for k, v in self.__dict__.items() if k not in ("store", "bar")}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._error(trial)

    def _id(self, trial: Any) -> str:
        return trial.config["trial_id"]

    def _start(self, trial: Any) -> None:
        self.store.set_status(self._id(trial), "running")
        self.counts["running"] += 1
        self._show()

    def _result(self, trial: Any, result: Mapping[str, Any]) -> None:
        report = {k: result[k] for k in result if k in _REPORTED or k.startswith(("segm_", "bbox_"))}
        self.last[self._id(trial)] = report
        self.store.append_history(self._id(trial), report)
        self.best = max(self.best, report.get("segm_AP", 0.0))
        self._show()

    def _complete(self, trial: Any) -> None:
        tid = self._id(trial)
        last = self.last.get(tid, {})
        status = "done" if last.get("iteration", 0) >= self.specs[tid].max_iter else "pruned"
        metrics = {k: v for k, v in last.items() if k not in ("iteration", "wall_time")}  # AP, inherited
        self.store.finish(tid, status, metrics, wall_time=last.get("wall_time"))
        self._finished(status)

    def _error(self, trial: Any) -> None:
        error = _error_text(trial)
        self.store.finish(self._id(trial), "failed", None, error=error)
        self._finished("failed")

    def _finished(self, status: str) -> None:
        self.counts["running"] -= 1
        self.counts[status] += 1
        self.bar.update(1)
        self._show()

    def _show(self) -> None:
        c = self.counts
        self.bar.set_postfix_str(
            f"running {c['running']} done {c['done']} pruned {c['pruned']} failed {c['failed']} best segm AP {self.best:.3f}"
        )

    def close(self) -> None:
        self.bar.close()


def _error_text(trial: Any) -> str:
    """The last line of the trial's traceback: the exception and its message."""
    path = getattr(trial, "error_file", None)
    text = Path(path).read_text(errors="replace") if path and os.path.isfile(path) else str(trial.get_error() or "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors[-1] if errors else lines[-1] if lines else "unknown error").strip()[:2000]


def run_trials(
    store: RunStore,
    specs: list[TrialSpec],
    *,
    label: str,
    storage_path: str,
    cpus_per_trial: float,
    gpus_per_trial: float,
    max_concurrent: int,
    asha: Mapping[str, Any] | None,
    best: float = 0.0,
) -> None:
    """Run the trials on the connected Ray cluster; outcomes land in the store."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not specs:
        return
    by_id = {s.id: s for s in specs}
    scheduler = FIFOScheduler()
    if asha:
        max_t = max(s.max_iter for s in specs)
        scheduler = ASHAScheduler(time_attr="iteration", metric="segm_AP", mode="max", max_t=max_t,
                                  grace_period=min(asha["grace_period"], max_t), reduction_factor=asha["reduction_factor"])
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, specs=by_id, threads=max(1, math.floor(cpus_per_trial))),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
    )
    callback = StoreCallback(store, by_id, label, best)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search([s.id for s in specs])},
        # a fresh worker per trial: reused workers were seen at 5-6 GiB resident after a few
        # trials (one trial alone peaks at 2-3 GiB); a new process costs a few seconds
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"{label.replace(' ', '_')}-{int(time.time())}",
            storage_path=storage_path,
            callbacks=[callback],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        tuner.fit()
    finally:
        callback.close()
