"""``nars supernet train``: one weight-sharing training serving every architecture of a space.

Start: the experiment's parent grown to the space's largest architecture by the
function-preserving inheritance (``nars.model.inherit``), or fresh weights without a parent.
Each step follows BigNAS's sandwich rule on one batch: the largest sub-network, the smallest,
with ``supernet.anchor`` the parent's own architecture (the prior a search starts from), and
``supernet.k`` random ones, each forward and backward on the shared weights
(``nars.model.elastic``), one optimizer step for the sum of their gradients.

In-place distillation, as it fits a two-stage detector: the largest network teaches the
others on the same batch and on the same RoIs. Each smaller network's RoI heads take the
largest's sampled RoIs (proposals, matches, labels), so its class logits and mask logits
align one to one with the teacher's; its losses are its ground-truth losses plus
``supernet.distill`` x (RPN objectness against the teacher's probabilities on every anchor +
the KL divergence of the RoI class distributions + the foreground masks' binary cross-entropy
against the teacher's mask probabilities). The teacher is detached; its own loss is the
ground truth's.

Channel order: every ``supernet.sort_period`` iterations (and before the first) the
expanded and SE channels are re-sorted by importance (``ElasticFBNetV3IS.sort_channels``).

The run is ``nars train``'s: the base recipe's optimizer and schedule stretched to
``supernet.max_iter``, one or N processes (gradients all-reduced, the same sub-networks
drawn in every process from (seed, iteration)), checkpoints with every random state, so a
resumed run continues exactly as the uninterrupted one, metrics in ``metrics.jsonl`` and
TensorBoard, a progress bar with an ETA. SIGINT/SIGTERM stop it at once; ``--resume``
continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nars.config import dump
from nars.data.coco import dataset_from_config
from nars.data.loader import build_train_loader
from nars.engine import distributed as comm
from nars.engine.checkpoint import FINAL, Checkpointer, capture_rng, periodic_name, restore_rng, seed_all
from nars.engine.console import progress_bar
from nars.engine.events import EventWriter
from nars.engine.evaluator import check_classes
from nars.engine.loading import load_start_weights
from nars.engine.solver import build_gradient_clipper, build_lr_scheduler, build_optimizer
from nars.errors import UserError
from nars.interrupts import check
from nars.fileio import atomic_write_text, make_dirs
from nars.model.cost import config_cost
from nars.model.elastic import ElasticFBNetV3IS
from nars.model.fbnetv3is import FBNetV3IS, build_model
from nars.model.weights import read_checkpoint
from nars.search.budget import scale_schedule
from nars.search.driver import first_difference
from nars.supernet.setup import Supernet, read_meta, write_meta
from nars.supernet.subnets import arch_part, random_archs, smallest, subnet_id

logger = logging.getLogger(__name__)
CONFIG_FILE = "config.yaml"  # the largest architecture's config, with the supernet's schedule
LOG_PERIOD = 10


@contextlib.contextmanager
def captured(child: FBNetV3IS, samples: tuple[Any, ...] | None = None) -> Iterator[dict[str, Any]]:
    """Record what a training forward of ``child`` computes for distillation (RPN objectness,
    the RoI samples, class logits, foreground mask logits); with ``samples``, its RoI heads
    train on those RoIs instead of sampling their own."""
    out: dict[str, Any] = {}
    heads = child.roi_heads
    sample_own = heads.select_training_samples

    def select(proposals: Any, targets: Any) -> Any:
        out["samples"] = samples if samples is not None else sample_own(proposals, targets)
        return out["samples"]

    hooks = [
        child.rpn.head.register_forward_hook(lambda m, i, o: out.__setitem__("objectness", o[0])),
        heads.box_predictor.register_forward_hook(lambda m, i, o: out.__setitem__("class_logits", o[0])),
        heads.mask_head.register_forward_hook(lambda m, i, o: out.__setitem__("mask_logits", o)),
    ]
    heads.select_training_samples = select
    try:
        yield out
    finally:
        del heads.select_training_samples
        for hook in hooks:
            hook.remove()


def _detached(outputs: Mapping[str, Any]) -> dict[str, Any]:
    proposals, matched, labels, targets = outputs["samples"]
    return {
        "objectness": [o.detach() for o in outputs["objectness"]],
        "samples": ([p.detach() for p in proposals], matched, labels, [t.detach() for t in targets]),
        "class_logits": outputs["class_logits"].detach(),
        "mask_logits": outputs["mask_logits"].detach(),
    }


def distill_losses(student: Mapping[str, Any], teacher: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The student's distillation losses against the teacher's outputs on the same RoIs."""
    rpn = sum(F.binary_cross_entropy_with_logits(s, torch.sigmoid(t))
              for s, t in zip(student["objectness"], teacher["objectness"]))
    cls = F.kl_div(F.log_softmax(student["class_logits"], 1), F.softmax(teacher["class_logits"], 1),
                   reduction="batchmean")
    labels = torch.cat(teacher["samples"][2])
    fg = labels[labels > 0] - 1  # mask channels have no background slot
    s_mask, t_mask = student["mask_logits"], teacher["mask_logits"]
    if fg.numel() == 0:
        mask = s_mask.sum() * 0
    else:
        rows = torch.arange(len(fg), device=fg.device)
        s_mask, t_mask = s_mask[rows, fg], t_mask[rows, fg]
        if t_mask.shape[-1] != s_mask.shape[-1]:  # another mask pooler resolution
            t_mask = F.interpolate(t_mask[:, None], size=s_mask.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        mask = F.binary_cross_entropy_with_logits(s_mask, torch.sigmoid(t_mask))
    return {"kd_rpn": rpn, "kd_cls": cls, "kd_mask": mask}


class SupernetTrainer:
    """The sandwich loop over one prepared supernet run (in every process of the run)."""

    def __init__(self, net: Supernet, out_dir: Path, *, resume: bool, progress: bool = True):
        self.net, self.out_dir, self.progress = net, Path(out_dir), progress
        s = net.exp["supernet"]
        self.k, self.distill, self.sort_period = s["k"], s["distill"], s["sort_period"]
        anchor = arch_part(net.space, net.base)  # trained once per step, not twice when it is an extreme
        self.anchor = anchor if s["anchor"] and anchor not in (net.largest, smallest(net.space)) else None
        self.max_iter, self.checkpoint_period = s["max_iter"], s["checkpoint_period"]
        cfg = net.config(net.largest)
        scale_schedule(cfg, self.max_iter)
        cfg["OUTPUT_DIR"] = str(out_dir)
        self.cfg = cfg
        self.device = comm.device_for(cfg["MODEL"]["DEVICE"])
        self.checkpointer = Checkpointer(out_dir, 2)
        last = self.checkpointer.last() if resume and out_dir.is_dir() else None
        checkpoint = read_checkpoint(last) if last else None
        if checkpoint is not None:
            _check_same(net, checkpoint, last)
        self.seed = int(cfg["SEED"])
        torch.manual_seed(self.seed)
        model = build_model(cfg)
        self.start_weights = None
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        elif cfg["MODEL"]["WEIGHTS"]:  # the parent, grown to the largest architecture
            self.start_weights = load_start_weights(model, cfg["MODEL"])
        comm.to_device(model, self.device)
        self.supernet = ElasticFBNetV3IS(model)
        self.optimizer = build_optimizer(model, cfg["SOLVER"])
        self.scheduler = build_lr_scheduler(self.optimizer, cfg["SOLVER"])
        self.clipper = build_gradient_clipper(cfg["SOLVER"])
        self.train_set = dataset_from_config(cfg, "TRAIN", train=True)
        check_classes(cfg, self.train_set)
        self.start_iter, rng = 0, None
        if checkpoint is not None:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.start_iter, rng = int(checkpoint["iteration"]) + 1, checkpoint.get("rng")
            logger.info("resuming the supernet from %s at iteration %d", last, self.start_iter)
        self.rng = rng

    # -- sub-networks --------------------------------------------------------------------
    def child(self, arch: Mapping[str, Any]) -> FBNetV3IS:
        return self.supernet.child(subnet_id(arch), lambda: comm.to_device(build_model(self.net.config(arch)),
                                                                            self.device))

    def sandwich(self, it: int) -> list[dict[str, Any]]:
        """Largest, smallest, the anchor (the base's architecture: the parent's, with
        ``supernet.anchor``) and k random architectures: drawn from (seed, iteration), so every
        process and a resumed run draw the same ones."""
        rng = np.random.default_rng([self.seed, it])
        anchor = [] if self.anchor is None else [self.anchor]
        return [self.net.largest, smallest(self.net.space)] + anchor + random_archs(self.net.space, self.k, rng)

    # -- the loop ------------------------------------------------------------------------
    def step(self, it: int, data: Iterator[Any]) -> dict[str, float]:
        start = time.perf_counter()
        images, targets = next(data)
        images = [i.to(self.device) for i in images]
        targets = [{k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
                   for t in targets]
        if it == 0 or (self.sort_period and it % self.sort_period == 0):
            self.supernet.sort_channels(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        scalars: dict[str, float] = {}
        teacher: dict[str, Any] | None = None
        archs = self.sandwich(it)
        for n, arch in enumerate(archs):
            child = self.child(arch).train()
            with captured(child, None if teacher is None else teacher["samples"]) as outputs:
                losses = self.supernet.forward_child(child, images, targets)
            loss = sum(losses.values())
            if teacher is None:
                teacher = _detached(outputs)
                scalars["loss_largest"] = loss.item()
            elif self.distill > 0:
                kd = distill_losses(outputs, teacher)
                loss = loss + self.distill * sum(kd.values())
                for name, value in kd.items():
                    scalars[name] = scalars.get(name, 0.0) + value.item() / (len(archs) - 1)  # the students' mean
            if n == 1:
                scalars["loss_smallest"] = sum(v.item() for v in losses.values())
            scalars["loss"] = scalars.get("loss", 0.0) + loss.item()
            loss.backward()
        scalars = comm.average_scalars(scalars, self.device)
        bad = [k for k, v in scalars.items() if not math.isfinite(v)]
        if bad:
            raise UserError(f"supernet iteration {it}: {bad[0]} is {scalars[bad[0]]}; the recipe diverged (lower "
                            "SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS in the base config)")
        _average_gradients(self.supernet.model)
        if self.clipper is not None:
            self.clipper(self.supernet.model.parameters())
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return {**scalars, "lr": lr, "time": time.perf_counter() - start}

    def save(self, name: str, it: int) -> None:
        checkpoint = {
            "model": self.supernet.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": it,
            "rng": comm.all_gather_object(capture_rng(self.device)),
            "seed": self.seed,
            "arch": self.supernet.model.arch.to_data(),
            "categories": [{"id": self.train_set.label_to_category_id[label], "name": name}
                           for label, name in enumerate(self.train_set.category_names, start=1)],
            "supernet": self.net.meta(),  # channels in importance order: sub-networks take the first ones
        }
        if comm.is_main_process():
            self.checkpointer.save(name, checkpoint)

    def train(self, writer: EventWriter | None) -> None:
        world, solver = comm.get_world_size(), self.cfg["SOLVER"]
        rank = comm.get_rank()
        if self.rng is not None and len(self.rng) == world:
            restore_rng(self.rng[rank], self.device)
        else:
            seed_all(int(np.random.SeedSequence([self.seed, rank, self.start_iter]).generate_state(1)[0]))
        loader = build_train_loader(self.train_set, solver["IMS_PER_BATCH"] // world,
                                    self.cfg["DATALOADER"]["NUM_WORKERS"], seed=self.seed, distributed=world > 1,
                                    start_iter=self.start_iter)
        logger.info("training the supernet of %s (largest %.0f MFLOPs) on %d images for %d iterations from %d: "
                    "sandwich of %d sub-networks, distillation weight %g", self.net.space.name,
                    config_cost(self.cfg).mflops["total"], len(self.train_set),
                    self.max_iter, self.start_iter, 2 + self.k + (self.anchor is not None), self.distill)
        bar = progress_bar(self.max_iter, self.start_iter, self.progress and comm.is_main_process(), desc="supernet")
        window: list[dict[str, float]] = []
        data = iter(loader)
        self.supernet.train()
        try:
            for it in range(self.start_iter, self.max_iter):
                check()  # a signal that landed in a DataLoader worker's fork hooks
                window.append(self.step(it, data))
                bar.update()
                bar.set_postfix_str(f"loss {window[-1]['loss']:.3f} largest {window[-1]['loss_largest']:.3f} "
                                    f"smallest {window[-1]['loss_smallest']:.3f}", refresh=False)
                if writer is not None and ((it + 1) % LOG_PERIOD == 0 or it + 1 == self.max_iter):
                    mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    mean["eta_seconds"] = mean["time"] * (self.max_iter - it - 1)
                    writer.write(it, mean)
                    window = []
                if (it + 1) % self.checkpoint_period == 0 and it + 1 < self.max_iter:
                    self.save(periodic_name(it), it)
        finally:
            bar.close()
            del data
        if self.start_iter < self.max_iter:
            self.save(FINAL, self.max_iter - 1)
        comm.barrier()


def _average_gradients(model: nn.Module) -> None:
    """What DDP does after backward: every process's gradients averaged."""
    world = comm.get_world_size()
    if world == 1:
        return
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _check_same(net: Supernet, checkpoint: Mapping[str, Any], path: Path | None) -> None:
    """A resumed supernet continues with the experiment it started with."""
    stored = checkpoint.get("supernet")
    if not isinstance(stored, dict):
        raise UserError(f"{path}: not a supernet checkpoint")
    key = first_difference(stored["fingerprint"], net.meta()["fingerprint"])
    if key is not None:
        raise UserError(f"{path}: the supernet was trained with another {key} (space, data, parent or setup) than "
                        "this experiment's; resume it with its own (nars supernet train --out DIR --resume)")


def check_new(out_dir: Path, resume: bool) -> None:
    """A new supernet needs a new or empty folder."""
    if not resume and out_dir.is_dir() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: not empty; choose a new --out folder, or add --resume to continue its supernet")


def train_supernet(net: Supernet, out_dir: Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train (or continue) the supernet in ``out_dir``; returns its final checkpoint."""
    out_dir = Path(out_dir)
    check_new(out_dir, resume)
    trainer = SupernetTrainer(net, out_dir, resume=resume, progress=progress)
    comm.barrier()
    writer = None
    if comm.is_main_process():
        make_dirs(out_dir, "the supernet folder")
        write_meta(out_dir, net)
        atomic_write_text(out_dir / CONFIG_FILE, dump(trainer.cfg), "the supernet's config")
        writer = EventWriter(out_dir, trainer.start_iter)
    try:
        trainer.train(writer)
    finally:
        if writer is not None:
            writer.close()
    return out_dir / FINAL


def stored_experiment(out_dir: Path) -> dict[str, Any]:
    """The experiment a supernet folder was started with (for ``--resume``)."""
    return read_meta(out_dir)["experiment"]
