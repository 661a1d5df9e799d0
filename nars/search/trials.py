"""Search trials on Ray Tune: each trial trains one candidate with ``nars.engine.train``, to a stop.

The driver hands a batch of trials (id, complete FBNetV3IS config, the iteration to stop at,
the checkpoint to continue from) to one ``Tuner.fit``. A trial trains in a scratch folder of
whichever node runs it, reports COCO AP at every evaluation and ends with a Tune checkpoint of
that folder, which Ray moves to its storage (``ray.storage_path``: a folder every node mounts,
or cloud storage). The next rung continues from there, and the driver copies a finished
trial's folder (``model_final.pth``, config, metrics, events) into the run. A trial needs no
path of the driver's; every node reads the dataset and the parent weights at their paths.

Failures: a trial that raises (a diverged recipe, a missing file) reports the error and ends,
recorded as failed and never retried (it would fail again). A trial whose process or node
dies is retried by Tune (``FailureConfig``) from the checkpoint it had continued from.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ray.tune import Callback
from tqdm import tqdm

from nars.engine.trainer import START_WEIGHTS_FILE
from nars.interrupts import check
from nars.search.store import RunStore
from nars.search.tensorboard_log import log_trial

# besides the APs; loss: the training loss logged last (early stopping's tie-break)
_REPORTED = ("iteration", "wall_time", "inherited", "loss")


@dataclass
class TrialSpec:
    id: str
    cfg: dict[str, Any]  # the complete config nars train consumes
    out_dir: str  # where the driver puts the finished trial's folder (the trial never writes there)
    stop_at: int  # the iteration this fit trains to: a rung, or MAX_ITER
    resume: str | None = None  # the checkpoint (path or URI in Ray's storage) of the rung reached before

    @property
    def max_iter(self) -> int:
        return self.cfg["SOLVER"]["MAX_ITER"]


def checkpoint_uri(checkpoint: Any) -> str:
    """Where a Tune checkpoint lies, as a path or URI any node (and a later driver) can open."""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def open_checkpoint(uri: str) -> Any:
    from ray.tune import Checkpoint

    return Checkpoint(uri)


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
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
    """The Ray Tune trainable: train the candidate to ``stop_at`` (from its parent, or from the
    rung it reached) in a scratch folder, report AP as it goes, and end with its checkpoint."""
    import torch
    from ray import tune

    from nars.engine.evaluator import recipe_metrics
    from nars.engine.events import read_metrics
    from nars.engine.trainer import train

    torch.set_num_threads(threads)
    spec = specs[config["trial_id"]]
    start = time.time()
    # a retry after a dead worker continues from this fit's own checkpoint, else the last rung's
    restored = tune.get_checkpoint() or (open_checkpoint(spec.resume) if spec.resume else None)
    with tempfile.TemporaryDirectory(prefix="nars-trial-") as scratch:
        out = Path(scratch) / "trial"
        if restored is not None:
            restored.to_directory(str(out))
        end = min(spec.stop_at, spec.max_iter)

        final: dict[str, Any] = {}

        def on_eval(iteration: int, metrics: Mapping[str, Any]) -> None:
            # the candidate is scored by the weights its recipe delivers (EMA's when it keeps one)
            logged = [r["loss"] for r in read_metrics(out) if "loss" in r]
            report = {"iteration": iteration + 1, "wall_time": time.time() - start, **_inherited(out),
                      **flat_metrics(recipe_metrics(metrics)), **({"loss": logged[-1]} if logged else {})}
            if iteration + 1 == end:  # reported with the checkpoint once training has written everything
                final.update(report)
            else:
                tune.report(report)

        try:
            train(spec.cfg, out, resume=restored is not None, progress=False, on_eval=on_eval, stop_at=end)
        except Exception as e:  # the candidate's own failure: recorded, not retried
            tune.report({"trial_error": f"{type(e).__name__}: {e}"})
            return
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(out)))


class StoreCallback(Callback):
    """Tune callback (driver side): reports, outcomes and a live progress line."""

    def __init__(self, store: RunStore, specs: Mapping[str, TrialSpec], label: str, best: float):
        self.store, self.specs, self.label, self.best = store, specs, label, best
        self.last: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.counts = {"running": 0, "done": 0, "failed": 0, "paused": 0, "retried": 0}
        self.bar = tqdm(total=len(specs), desc=label, unit="trial", dynamic_ncols=True)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into its experiment state; the live handles stay behind."""
        return {k: v for k, v in self.__dict__.items() if k not in ("store", "bar")}

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        check()  # each turn of Tune's event loop: a swallowed Ctrl-C still stops the search

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._error(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """The trial's worker died; Tune starts it again (FailureConfig)."""
        self.store.add_retry(self._id(trial))
        self.counts["retried"] += 1
        self._show()

    def _id(self, trial: Any) -> str:
        return trial.config["trial_id"]

    def _start(self, trial: Any) -> None:
        self.store.set_status(self._id(trial), "running")
        self.counts["running"] += 1
        self._show()

    def _result(self, trial: Any, result: Mapping[str, Any]) -> None:
        if "trial_error" in result:
            self.errors[self._id(trial)] = str(result["trial_error"])[:2000]
            return
        report = {k: result[k] for k in result if k in _REPORTED or k.startswith(("segm_", "bbox_"))}
        self.last[self._id(trial)] = report
        self.store.append_history(self._id(trial), report)
        self.best = max(self.best, report.get("segm_AP", 0.0))
        self._show()

    def _complete(self, trial: Any) -> None:
        tid, spec = self._id(trial), self.specs[self._id(trial)]
        last = self.last.get(tid, {})
        if tid in self.errors or trial.checkpoint is None or last.get("iteration") != min(spec.stop_at, spec.max_iter):
            self._fail(tid, self.errors.get(tid, "the trial ended without reaching its stop"))
            return
        metrics = {k: v for k, v in last.items() if k not in ("iteration", "wall_time")}  # AP, inherited
        uri = checkpoint_uri(trial.checkpoint)
        if last["iteration"] < spec.max_iter:
            self.store.pause(tid, last["iteration"], uri, metrics, wall_time=last.get("wall_time"))
            self._finished("paused")
            return
        out = Path(spec.out_dir)
        if out.exists():  # left by a driver killed while copying
            shutil.rmtree(out)
        open_checkpoint(uri).to_directory(str(out))
        self.store.finish(tid, "done", metrics, wall_time=last.get("wall_time"), reached=last["iteration"], checkpoint=uri)
        log_trial(self.store.path.parent, self.store.trial(tid))
        self._finished("done")

    def _error(self, trial: Any) -> None:
        self._fail(self._id(trial), _error_text(trial))

    def _fail(self, tid: str, error: str) -> None:
        self.store.finish(tid, "failed", None, error=error)
        log_trial(self.store.path.parent, self.store.trial(tid))
        self._finished("failed")

    def _finished(self, status: str) -> None:
        self.counts["running"] -= 1
        self.counts[status] += 1
        self.bar.update(1)
        self._show()

    def _show(self) -> None:
        c = self.counts
        self.bar.set_postfix_str(
            f"running {c['running']} done {c['done']} at rung {c['paused']} failed {c['failed']} "
            f"retried {c['retried']} best segm AP {self.best:.3f}"
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
    max_failures: int,
    best: float = 0.0,
) -> None:
    """Run the trials to their stops on the connected Ray cluster; outcomes land in the store.
    No scheduler stops anything here: early stopping is decided between fits, per rung
    (``nars.search.halving``), so it does not depend on which trial reports first."""
    from ray import tune

    if not specs:
        return
    by_id = {s.id: s for s in specs}
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
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=False),
        run_config=tune.RunConfig(
            name=f"{label.replace(' ', '_').replace('/', '-')}-{int(time.time() * 1000)}",
            storage_path=storage_path,
            callbacks=[callback],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        tuner.fit()
    finally:
        callback.close()
