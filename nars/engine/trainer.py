"""Training FBNetV3IS from a config: the same code in one process or in each of N.

``train(cfg, out_dir, resume=...)`` first builds and checks everything a run needs (model,
weights or the checkpoint to resume, datasets, recipe) and only then writes to the run
folder, so a failed start leaves it as it was. A new run needs a missing or empty folder.

The loop, per iteration i (0-based): a batch of ``SOLVER.IMS_PER_BATCH / world size``
images per process, the losses (averaged over processes; a non-finite loss stops the run
before the weights are touched), backward (DDP averages gradients), optional clipping,
the optimizer and scheduler steps, the EMA update. Every 20 iterations the averaged losses,
lr and timings go to ``metrics.jsonl`` and TensorBoard; every ``SOLVER.CHECKPOINT_PERIOD`` a
checkpoint is saved; every ``TEST.EVAL_PERIOD`` (0: only at the end) and at the end, COCO AP
on ``DATASETS.TEST`` with the EMA weights when ``MODEL_EMA.ENABLED``; the last goes to
``eval.json``. With ``QUANTIZATION.QAT.ENABLED`` the network trains fake-quantized from
``START_ITER`` (nars.model.qat; periodic evaluations see it so); checkpoints and the final
evaluation are of the float weights, which ``nars deploy --int8`` quantizes.

Randomness: ``SEED`` (-1: drawn once and recorded in ``config.yaml`` and the checkpoints)
initialises the model identically in every process, fixes the data order (see
``nars.data.loader``), and seeds each process's own stream (multi-scale sizes, RPN and RoI
sampling). Checkpoints hold every process's stream, so a resumed run continues exactly as
the uninterrupted one would have (same world size; otherwise the streams are re-seeded).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nars.config import dump
from nars.data.coco import CocoInstances, dataset_from_config
from nars.data.loader import build_test_loader, build_train_loader
from nars.engine import distributed as comm
from nars.engine.checkpoint import FINAL, Checkpointer, capture_rng, periodic_name, restore_rng, seed_all
from nars.engine.console import progress_bar
from nars.engine.ema import ModelEMA
from nars.engine.evaluator import CocoEvaluator, Evaluation, Metrics, check_classes, inference_on_dataset, with_ema
from nars.engine.events import EventWriter
from nars.engine.loading import load_resume_state, load_start_weights
from nars.engine.solver import GradientClipper, WarmupLR, build_gradient_clipper, build_lr_scheduler, build_optimizer
from nars.errors import UserError
from nars.interrupts import check
from nars.fileio import atomic_write_text, make_dirs
from nars.model.fbnetv3is import FBNetV3IS, build_model
from nars.model.qat import QuantizationAwareTraining
from nars.model.weights import read_checkpoint

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
START_WEIGHTS_FILE = "start_weights.json"  # what MODEL.WEIGHTS gave the run: loaded or inherited, and how much
EVAL_FILE = "eval.json"
PER_IMAGE_FILE = "per_image.json"  # the last evaluation's segm AP per validation image (a rung's, or the end's)
LOG_PERIOD = 20
_SHORT = {"loss_classifier": "cls", "loss_box_reg": "box", "loss_mask": "mask", "loss_objectness": "obj",
          "loss_rpn_box_reg": "rpn"}

EvalCallback = Callable[[int, Metrics], None]


@dataclass
class TrainingRun:
    """Everything a run needs, built and checked; nothing written yet."""

    cfg: dict[str, Any]
    out_dir: Path
    device: torch.device
    model: FBNetV3IS
    train_set: CocoInstances
    test_set: CocoInstances | None
    optimizer: torch.optim.Optimizer
    scheduler: WarmupLR
    clipper: GradientClipper | None
    ema: ModelEMA | None
    checkpointer: Checkpointer
    seed: int
    start_iter: int
    rng: list[Any] | None  # per-process random states from the checkpoint resumed
    start_weights: dict[str, Any] | None = None  # what MODEL.WEIGHTS gave (loading.load_start_weights)


def check_output_dir(out_dir: Path, resume: bool) -> None:
    """A new run needs a new or empty folder; ``--resume`` needs a folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    if not resume and out_dir.is_dir() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: not empty; choose a new --out folder, or add --resume to continue its run")


def _categories(dataset: CocoInstances) -> list[dict[str, Any]]:
    return [{"id": dataset.label_to_category_id[label], "name": name}
            for label, name in enumerate(dataset.category_names, start=1)]


def _datasets(cfg: Mapping[str, Any]) -> tuple[CocoInstances, CocoInstances | None]:
    train_set = dataset_from_config(cfg, "TRAIN", train=True)
    check_classes(cfg, train_set)
    if not cfg["DATASETS"]["TEST"]["JSON"]:
        logger.info("DATASETS.TEST is not set: no evaluation")
        return train_set, None
    test_set = dataset_from_config(cfg, "TEST", train=False)
    if _categories(test_set) != _categories(train_set):
        raise UserError(f"the categories of {test_set.json_path} differ from those of {train_set.json_path}")
    return train_set, test_set


def _resolve_seed(cfg: Mapping[str, Any], checkpoint: Mapping[str, Any] | None) -> int:
    """``SEED``, or for -1 the resumed run's seed or a fresh one; the same in every process."""
    seed = cfg["SEED"]
    if seed < 0:
        seed = int(checkpoint["seed"]) if checkpoint and "seed" in checkpoint else int.from_bytes(os.urandom(4), "little")
    return int(comm.broadcast_object(seed))


def prepare(cfg: Mapping[str, Any], out_dir: str | Path, *, resume: bool, world_size: int) -> TrainingRun:
    """Build and check a run for a process of a ``world_size``-process training; writes nothing."""
    cfg, out_dir = copy.deepcopy(dict(cfg)), Path(out_dir)
    check_output_dir(out_dir, resume)
    solver = cfg["SOLVER"]
    batch = solver["IMS_PER_BATCH"]
    if batch < world_size or batch % world_size:
        raise UserError(f"SOLVER.IMS_PER_BATCH {batch} (the global batch) must be a positive multiple of the "
                        f"{world_size} training processes")
    if solver["CHECKPOINT_PERIOD"] < 1:
        raise UserError(f"SOLVER.CHECKPOINT_PERIOD must be >= 1, got {solver['CHECKPOINT_PERIOD']}")
    if cfg["TEST"]["EVAL_PERIOD"] < 0:
        raise UserError(f"TEST.EVAL_PERIOD must be >= 0 (0: only at the end), got {cfg['TEST']['EVAL_PERIOD']}")
    if cfg["QUANTIZATION"]["QAT"]["START_ITER"] < 0:
        raise UserError(f"QUANTIZATION.QAT.START_ITER must be >= 0, got {cfg['QUANTIZATION']['QAT']['START_ITER']}")
    device = comm.device_for(cfg["MODEL"]["DEVICE"])
    checkpointer = Checkpointer(out_dir, solver["MAX_TO_KEEP"])
    last = checkpointer.last() if resume and out_dir.is_dir() else None
    if resume and last is None:
        logger.info("%s holds no checkpoint: --resume starts a new run", out_dir)
    checkpoint = read_checkpoint(last) if last else None
    cfg["SEED"] = seed = _resolve_seed(cfg, checkpoint)
    cfg["OUTPUT_DIR"] = str(out_dir)

    torch.manual_seed(seed)  # the same initial weights in every process
    model = build_model(cfg)
    start_weights = None
    if checkpoint is not None:
        load_resume_state(model, checkpoint, str(last))
    elif cfg["MODEL"]["WEIGHTS"]:
        start_weights = load_start_weights(model, cfg["MODEL"])
    comm.to_device(model, device)
    optimizer = build_optimizer(model, solver)
    scheduler = build_lr_scheduler(optimizer, solver)
    clipper = build_gradient_clipper(solver)
    ema = ModelEMA(model, cfg["MODEL_EMA"]["DECAY"]) if cfg["MODEL_EMA"]["ENABLED"] else None
    train_set, test_set = _datasets(cfg)  # last: the slowest check
    run = TrainingRun(cfg, out_dir, device, model, train_set, test_set, optimizer, scheduler, clipper, ema,
                      checkpointer, seed, start_iter=0, rng=None, start_weights=start_weights)
    if checkpoint is not None:
        _restore(run, checkpoint, last)
    return run


def _restore(run: TrainingRun, checkpoint: Mapping[str, Any], path: Path) -> None:
    """The optimizer, scheduler, EMA, position and random states of a checkpoint (the
    weights are loaded before the optimizer exists)."""
    try:
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scheduler.load_state_dict(checkpoint["scheduler"])
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: optimizer or scheduler state does not fit this config ({e})") from None
    if run.ema is not None and "ema_state" in checkpoint:
        run.ema.load_state_dict(checkpoint["ema_state"])
    run.start_iter, run.rng = int(checkpoint["iteration"]) + 1, checkpoint.get("rng")
    logger.info("resuming from %s at iteration %d", path, run.start_iter)


def _seed_process(run: TrainingRun) -> None:
    """This process's random stream: the checkpoint's, or fresh from (SEED, rank, start)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    if run.rng is not None and len(run.rng) == world:
        restore_rng(run.rng[rank], run.device)
        return
    if run.rng is not None:
        logger.warning("the checkpoint holds random states of %d processes, this run has %d: re-seeding",
                       len(run.rng), world)
    seed_all(int(np.random.SeedSequence([run.seed, rank, run.start_iter]).generate_state(1)[0]))


def _to_device(images: list[torch.Tensor], targets: list[dict[str, Any]],
               device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def _flatten(metrics: Metrics) -> dict[str, float | None]:
    return {f"{kind}/{name}": value for kind, values in metrics.items() for name, value in values.items()}


class Trainer:
    """The loop over one prepared run (in every process of the run)."""

    def __init__(self, run: TrainingRun, writer: EventWriter | None, *, progress: bool = True,
                 on_eval: EvalCallback | None = None, log_period: int = LOG_PERIOD):
        self.run, self.writer, self.progress, self.on_eval, self.log_period = run, writer, progress, on_eval, log_period
        self.module: nn.Module = run.model
        self.model: nn.Module = run.model
        if comm.get_world_size() > 1:
            ids = [run.device.index] if run.device.type == "cuda" else None
            # BN buffers are not re-broadcast every forward (detectron2's broadcast_buffers=False)
            self.model = DistributedDataParallel(run.model, device_ids=ids, forward_sync_buffers=False)
        self.max_iter: int = run.cfg["SOLVER"]["MAX_ITER"]

    def _checkpoint(self, iteration: int) -> dict[str, Any]:
        run = self.run
        checkpoint = {
            "model": self.module.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "iteration": iteration,
            "rng": comm.all_gather_object(capture_rng(run.device)),
            "seed": run.seed,
            "categories": _categories(run.train_set),
            "arch": run.model.arch.to_data(),  # what a checkpoint's weights are of, for inheriting them
        }
        if run.ema is not None:
            checkpoint["ema_state"] = run.ema.state_dict()
        return checkpoint

    def save(self, name: str, iteration: int) -> None:
        checkpoint = self._checkpoint(iteration)  # collective: every process takes part
        if comm.is_main_process():
            path = self.run.checkpointer.save(name, checkpoint)
            logger.info("saved %s", path)

    def evaluate(self, iteration: int, last: bool = False) -> Metrics | None:
        """COCO AP of the model (and its EMA copy); ``last`` (the evaluation this training ends
        with: its end, or a rung it stops at): also the recipe's weights' segm AP per image into
        ``per_image.json`` with the iteration, so that two runs on the same images pair up there."""
        run = self.run
        if run.test_set is None:
            return None
        loader = build_test_loader(run.test_set, 1, run.cfg["DATALOADER"]["NUM_WORKERS"],
                                   distributed=comm.get_world_size() > 1)
        evaluator = CocoEvaluator(run.test_set.json_path, run.test_set.label_to_category_id)
        result = inference_on_dataset(self.module, loader, evaluator, run.device)
        if run.ema is not None:  # d2go evaluates the model, then its EMA copy
            with run.ema.applied_to(self.module):
                ema = inference_on_dataset(self.module, loader, evaluator, run.device)
            result = Evaluation(with_ema(result.metrics, ema.metrics), result.images, result.seconds)
        if last and comm.is_main_process():  # the evaluator holds the last weights scored: the recipe's
            per_image = {str(k): v for k, v in evaluator.per_image("segm").items()}
            atomic_write_text(run.out_dir / PER_IMAGE_FILE, json.dumps({"iteration": iteration + 1, "segm_AP": per_image})
                              + "\n", "per-image AP")
        self._report(iteration, result)
        return result.metrics

    def _report(self, iteration: int, result: Evaluation) -> None:
        if not comm.is_main_process():
            return
        m = result.metrics
        ema = f" (EMA: bbox AP {_fmt(m['ema_bbox']['AP'])}, segm AP {_fmt(m['ema_segm']['AP'])})" if "ema_segm" in m else ""
        logger.info("iteration %d: bbox AP %s, segm AP %s%s (%d images, %.1f img/s)", iteration,
                    _fmt(m["bbox"]["AP"]), _fmt(m["segm"]["AP"]), ema, result.images, result.images_per_second)
        if self.writer is not None:
            self.writer.write(iteration, {**_flatten(m), "eval/images_per_second": result.images_per_second})
        if self.on_eval is not None:
            self.on_eval(iteration, m)

    def train(self, stop_at: int | None = None) -> Metrics | None:
        """Iterations ``start_iter .. MAX_ITER - 1``, then the final checkpoint and evaluation.

        ``stop_at`` < MAX_ITER ends early, after iteration ``stop_at - 1``, with a periodic
        checkpoint and an evaluation there: the schedule stays MAX_ITER's, so resuming from
        that checkpoint continues the same run (a rung of successive halving).
        """
        run, cfg = self.run, self.run.cfg
        end = self.max_iter if stop_at is None else min(stop_at, self.max_iter)
        solver, eval_period = cfg["SOLVER"], cfg["TEST"]["EVAL_PERIOD"]
        world = comm.get_world_size()
        _seed_process(run)
        loader = build_train_loader(run.train_set, solver["IMS_PER_BATCH"] // world, cfg["DATALOADER"]["NUM_WORKERS"],
                                    seed=run.seed, distributed=world > 1, start_iter=run.start_iter)
        logger.info("training %s on %d images (%d classes) for %d iterations from %d: %d images per batch over %d "
                    "process(es), %s", run.model.arch.name, len(run.train_set), run.model.num_classes, self.max_iter,
                    run.start_iter, solver["IMS_PER_BATCH"], world, run.device)
        bar = progress_bar(self.max_iter, run.start_iter, self.progress and comm.is_main_process())
        window: list[dict[str, float]] = []
        data = iter(loader)
        self.model.train()
        qat = cfg["QUANTIZATION"]["QAT"]
        fake_quant = QuantizationAwareTraining() if qat["ENABLED"] else None
        try:
            for it in range(run.start_iter, end):
                check()  # a signal that landed in a DataLoader worker's fork hooks
                if fake_quant is not None and it == max(qat["START_ITER"], run.start_iter):
                    logger.info("iteration %d: quantization-aware training starts", it)
                    fake_quant.enable(self.module)
                if fake_quant is not None and it == qat["DISABLE_OBSERVER_ITER"] and it > qat["START_ITER"]:
                    fake_quant.freeze_observers()
                window.append(self.step(it, data))
                bar.update()
                bar.set_postfix_str(_postfix(window[-1]), refresh=False)
                if (it + 1) % self.log_period == 0 or it + 1 == end:
                    self._log(it, window, bar)
                    window = []
                if (it + 1) % solver["CHECKPOINT_PERIOD"] == 0 and it + 1 < self.max_iter:
                    self.save(periodic_name(it), it)
                if eval_period and (it + 1) % eval_period == 0 and it + 1 < end:
                    self.evaluate(it)
        finally:
            bar.close()
            del data
            if fake_quant is not None:  # what is saved and finally evaluated is the float model
                fake_quant.remove()
        if end < self.max_iter:
            if run.start_iter < end and end % solver["CHECKPOINT_PERIOD"]:
                self.save(periodic_name(end - 1), end - 1)
            return self.evaluate(end - 1, last=True)
        if run.start_iter < self.max_iter:
            self.save(FINAL, self.max_iter - 1)
        metrics = self.evaluate(self.max_iter - 1, last=True)
        if metrics is not None and comm.is_main_process():
            atomic_write_text(run.out_dir / EVAL_FILE, json.dumps(metrics, indent=2) + "\n", "the final evaluation")
        comm.barrier()
        return metrics

    def step(self, it: int, data: Any) -> dict[str, float]:
        """One iteration; returns its (process-averaged) losses, lr and timings."""
        run = self.run
        start = time.perf_counter()
        images, targets = _to_device(*next(data), run.device)
        data_time = time.perf_counter() - start
        loss_dict = self.model(images, targets)
        loss = sum(loss_dict.values())
        scalars = comm.average_scalars({"loss": loss.item(), **{k: v.item() for k, v in loss_dict.items()}}, run.device)
        bad = [k for k, v in scalars.items() if not math.isfinite(v)]
        if bad:
            raise UserError(f"iteration {it}: {bad[0]} is {scalars[bad[0]]}; the recipe diverged (lower SOLVER.BASE_LR, "
                            f"raise SOLVER.WARMUP_ITERS or enable SOLVER.CLIP_GRADIENTS)")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if run.clipper is not None:
            run.clipper(self.module.parameters())
        lr = run.optimizer.param_groups[0]["lr"]
        run.optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(self.module)
        return {**scalars, "lr": lr, "data_time": data_time, "time": time.perf_counter() - start}

    def _log(self, it: int, window: list[dict[str, float]], bar: Any) -> None:
        if not comm.is_main_process() or self.writer is None:
            return
        mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
        mean["lr"] = window[-1]["lr"]
        mean["eta_seconds"] = mean["time"] * (self.max_iter - it - 1)
        self.writer.write(it, mean)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _postfix(scalars: Mapping[str, float]) -> str:
    parts = [f"loss {scalars['loss']:.3f}"]
    parts += [f"{_SHORT.get(k, k.removeprefix('loss_'))} {v:.3f}" for k, v in scalars.items() if k.startswith("loss_")]
    return " ".join(parts) + f" lr {scalars['lr']:.2e}"


def train(cfg: Mapping[str, Any], out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          on_eval: EvalCallback | None = None, stop_at: int | None = None) -> Metrics | None:
    """Train (in this process, as one of the run's processes); returns the final metrics
    (``{"bbox": {...}, "segm": {...}}``, or None without ``DATASETS.TEST``), or those at
    ``stop_at`` when training stops there (``Trainer.train``)."""
    run = prepare(cfg, out_dir, resume=resume, world_size=comm.get_world_size())
    comm.barrier()  # every process has checked everything before anything is written
    writer = None
    if comm.is_main_process():
        make_dirs(run.out_dir, "the run folder")
        atomic_write_text(run.out_dir / CONFIG_FILE, dump(run.cfg), "the resolved config")
        if run.start_weights is not None:
            atomic_write_text(run.out_dir / START_WEIGHTS_FILE, json.dumps(run.start_weights, indent=2) + "\n",
                              "the start weights' report")
        writer = EventWriter(run.out_dir, run.start_iter)
    try:
        return Trainer(run, writer, progress=progress, on_eval=on_eval).train(stop_at)
    finally:
        if writer is not None:
            writer.close()
