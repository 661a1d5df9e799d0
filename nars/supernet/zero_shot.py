"""Zero-shot evaluation: a sub-network's COCO AP straight from the supernet's weights.

A sub-network's batch-norm statistics are not the supernet's (those are the largest
network's, if anything), so each one is recalibrated first, as once-for-all and BigNAS do:
its running statistics are reset and re-estimated as a plain average over
``supernet.calibration_images`` training images (the first ones, without augmentation), in a
training-mode forward under a fixed seed (so the RoI heads see the RoIs they train on). Then
COCO AP on the experiment's validation set. Same sub-network, same AP: every step is seeded.

Results are cached in ``DIR/zero_shot.json`` per (supernet checkpoint, sub-network,
validation set, calibration): a repeated request costs nothing. Many sub-networks run as Ray
tasks, each loading the supernet once for a chunk of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from nars.config import dump
from nars.data.coco import CocoInstances, dataset_from_config
from nars.data.loader import build_test_loader
from nars.engine.checkpoint import FINAL
from nars.engine.evaluator import CocoEvaluator, inference_on_dataset
from nars.errors import UserError
from nars.fileio import atomic_torch_save, atomic_write_text, staged_folder
from nars.model.cost import config_cost
from nars.model.elastic import ElasticFBNetV3IS
from nars.model.fbnetv3is import FBNetV3IS, build_model
from nars.model.weights import FINAL_WEIGHTS, read_checkpoint
from nars.search.cluster import ray_session
from nars.search.trials import flat_metrics
from nars.supernet.setup import Supernet, load
from nars.supernet.subnets import sample_archs, subnet_id

logger = logging.getLogger(__name__)
CACHE_FILE = "zero_shot.json"
CALIBRATION_BATCH = 8
CALIBRATION_SEED = 0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@torch.no_grad()
def recalibrate(model: FBNetV3IS, dataset: CocoInstances, images: int, seed: int = CALIBRATION_SEED) -> None:
    """Re-estimate every batch norm's running statistics on the first ``images`` of
    ``dataset`` (an average over equal batches), then leave ``model`` in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    loader = build_test_loader(dataset, min(CALIBRATION_BATCH, images), 0, distributed=False)
    device = next(model.parameters()).device
    model.train()
    seen = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the RoI sampling and multi-scale sizes of the forward
        for batch, targets in loader:
            if seen >= images:
                break
            targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
                       for t in targets]
            model([image.to(device) for image in batch], targets)
            seen += len(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


class Evaluator:
    """One process's view of a trained supernet: its weights, data and sub-network configs."""

    def __init__(self, net_dir: Path, net: Supernet | None = None):
        self.dir = Path(net_dir)
        self.net = net if net is not None else load(self.dir, progress=False)
        path = self.dir / FINAL
        if not path.is_file():
            raise UserError(f"{self.dir}: the supernet has not finished training (no {FINAL}); continue it with "
                            f"nars supernet train --out {self.dir} --resume")
        self.checkpoint = path
        cfg = self.net.config(self.net.largest)
        model = build_model(cfg)
        model.load_state_dict(read_checkpoint(path)["model"])
        self.supernet = ElasticFBNetV3IS(model.eval())
        self.calibration = dataset_from_config(cfg, "TRAIN", train=False)
        self.val = dataset_from_config(cfg, "TEST", train=False)
        self.images = self.net.exp["supernet"]["calibration_images"]

    def key(self, arch: Mapping[str, Any]) -> str:
        """The cache key: supernet checkpoint, sub-network, validation set, calibration."""
        val = _sha(Path(self.val.json_path))
        return f"{_sha(self.checkpoint)}/{subnet_id(arch)}/{val}/{self.images}"

    def subnet(self, arch: Mapping[str, Any]) -> tuple[dict[str, Any], FBNetV3IS]:
        """The sub-network's config and model, with its slices and recalibrated statistics."""
        cfg = self.net.config(arch)
        model = self.supernet.extract(build_model(cfg))
        recalibrate(model, self.calibration, self.images)
        return cfg, model

    def evaluate(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        cfg, model = self.subnet(arch)
        loader = build_test_loader(self.val, 1, 0, distributed=False)
        result = inference_on_dataset(model, loader, CocoEvaluator(self.val.json_path, self.val.label_to_category_id),
                                      torch.device("cpu"))
        metrics = flat_metrics(result.metrics)
        cost = config_cost(cfg)
        return {"id": subnet_id(arch), "choices": dict(arch), "mflops": round(cost.mflops["total"], 3),
                "params": int(cost.params["total"]), "bbox_AP": metrics.get("bbox_AP", 0.0),
                "segm_AP": metrics.get("segm_AP", 0.0), "seconds": round(time.perf_counter() - start, 3)}


def _evaluate_chunk(net_dir: str, archs: Sequence[Mapping[str, Any]], threads: int) -> list[dict[str, Any]]:
    """A Ray task: load the supernet once, evaluate a chunk of sub-networks."""
    torch.set_num_threads(threads)
    evaluator = Evaluator(Path(net_dir))
    return [evaluator.evaluate(a) for a in archs]


class Cache:
    """``DIR/zero_shot.json``: results by key, rewritten atomically as results arrive."""

    def __init__(self, net_dir: Path):
        self.path = Path(net_dir) / CACHE_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise UserError(f"{self.path}: not a zero-shot cache ({e}); delete it to start over") from None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        self.entries[key] = dict(record)
        atomic_write_text(self.path, json.dumps(self.entries, indent=1) + "\n", "the zero-shot results")


def evaluate_archs(net_dir: Path, archs: Sequence[Mapping[str, Any]], *, num_cpus: int | None = None,
                   progress: bool = True, net: Supernet | None = None) -> list[dict[str, Any]]:
    """Zero-shot results of ``archs`` (in their order): cached ones read, the rest computed as
    Ray tasks (chunks spread over ``num_cpus``, default the experiment's ``ray.num_cpus``), in
    the Ray session already running (a search's) or a local one."""
    import ray

    evaluator = Evaluator(net_dir, net)
    cache = Cache(net_dir)
    keys = [evaluator.key(a) for a in archs]
    todo = [(k, a) for k, a in dict(zip(keys, archs)).items() if k not in cache.entries]
    if todo:
        ray_cfg = dict(evaluator.net.exp["ray"])
        if num_cpus is not None:
            ray_cfg["num_cpus"] = num_cpus
        cpus = max(1, int(ray_cfg["num_cpus"]))
        size = max(1, math.ceil(len(todo) / (2 * cpus)))
        chunks = [todo[i: i + size] for i in range(0, len(todo), size)]
        logger.info("zero-shot evaluation of %d sub-network(s) in %d Ray task(s)", len(todo), len(chunks))
        bar = tqdm(total=len(todo), desc="zero-shot", unit="net", disable=not progress)
        with contextlib.nullcontext() if ray.is_initialized() else ray_session(ray_cfg):  # a search's own session
            task = ray.remote(num_cpus=1)(_evaluate_chunk)
            pending = {task.remote(str(Path(net_dir).resolve()), [a for _, a in c], 1): c for c in chunks}
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    chunk = pending.pop(done[0])
                    for (key, _), record in zip(chunk, ray.get(done[0])):
                        cache.put(key, record)
                    bar.update(len(chunk))
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
                bar.close()
    return [cache.entries[k] for k in keys]


def evaluate_sampled(net_dir: Path, n: int, seed: int, num_cpus: int | None = None) -> list[dict[str, Any]]:
    """``nars supernet eval``: ``n`` architectures drawn from the space (seeded), evaluated."""
    net = load(net_dir, progress=False)
    archs = sample_archs(net.space, n, seed)
    return evaluate_archs(net_dir, archs, num_cpus=num_cpus, net=net)


def extract(net_dir: Path, arch_id: str, out: Path) -> dict[str, Any]:
    """``nars supernet extract``: the evaluated sub-network ``arch_id`` as ``OUT/config.yaml``
    + ``OUT/model_final.pth`` (its slices and recalibrated statistics: ``nars eval`` of it
    gives its zero-shot AP). Written in a staged folder renamed into place at the end."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: not empty; choose a new folder")
    evaluator = Evaluator(net_dir)
    prefix = evaluator.key({})[:16]
    found = [r for k, r in Cache(net_dir).entries.items() if k.startswith(prefix) and r["id"] == arch_id]
    if not found:
        raise UserError(f"{net_dir}: no evaluated sub-network {arch_id!r} for this supernet; list them with "
                        f"nars supernet eval {net_dir}")
    record = found[0]
    cfg, model = evaluator.subnet(record["choices"])
    cfg["MODEL"]["WEIGHTS"] = str(out.resolve() / FINAL_WEIGHTS)  # nars train fine-tunes from the extracted weights
    cfg["MODEL"]["WEIGHTS_ARCH"] = ""
    cfg["OUTPUT_DIR"] = str(out)
    checkpoint = {"model": model.state_dict(), "arch": model.arch.to_data(),
                  "categories": read_checkpoint(evaluator.checkpoint).get("categories"),
                  "supernet": {"dir": str(Path(net_dir).resolve()), "id": arch_id, "zero_shot": record}}
    with staged_folder(out, "the extracted sub-network") as tmp:
        atomic_write_text(tmp / "config.yaml", dump(cfg), "the sub-network's config")
        atomic_torch_save(tmp / FINAL_WEIGHTS, checkpoint, "the sub-network's weights")
    return record
