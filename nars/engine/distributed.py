"""One training or evaluation function, run by one process, by N spawned ones, or by torchrun.

- ``launch(fn, args, num_workers, device)``: under ``torchrun`` (``RANK``/``WORLD_SIZE`` in
  the environment) this process joins the group torchrun describes; otherwise
  ``num_workers > 1`` spawns that many processes on this machine (``torch.multiprocessing``,
  a free port on 127.0.0.1); otherwise ``fn`` runs here without a process group.
- Backend: ``nccl`` when ``MODEL.DEVICE`` is CUDA (process i uses GPU ``LOCAL_RANK``),
  ``gloo`` on CPU. Spawned CPU workers share the machine's cores (``cores // N`` threads
  each) unless ``OMP_NUM_THREADS`` says otherwise.
- A ``UserError`` in any worker ends the launch with that message (one line) instead of a
  worker traceback.
- Helpers for code that runs in every process: its device and a model placed on it, rank and
  world size, a barrier, gathering Python objects, averaging scalars.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nars.errors import UserError


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over processes of each value (every process passes the same keys)."""
    if get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return {k: v / get_world_size() for k, v in zip(keys, packed.tolist())}


def device_for(name: str) -> torch.device:
    """``MODEL.DEVICE`` for this process: ``cuda`` means this process's GPU (``LOCAL_RANK``)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"MODEL.DEVICE: unknown device {name!r}; expected cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"MODEL.DEVICE {name}: no CUDA device is available here")
        return torch.device("cuda", device.index if device.index is not None else get_local_rank())
    if device.type != "cpu":
        raise UserError(f"MODEL.DEVICE: {name!r} is not supported; expected cpu or cuda")
    return device


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def to_device(model: ModuleT, device: torch.device) -> ModuleT:
    """``model`` moved to ``device``; on a CPU its convolution weights go channels-last.

    oneDNN runs FBNet's depthwise and pointwise convolutions in that layout about 1.4x faster,
    training and inference alike (BENCHMARKS.md); activations follow the weights' layout, and
    results change only by float32 rounding. CUDA keeps the default layout.
    """
    if device.type == "cpu":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _join_group(backend: str) -> None:
    """Join the group the environment variables describe; CUDA processes pick their GPU first."""
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)


def _spawned(local_rank: int, fn: Callable[..., Any], args: Sequence[Any], world_size: int, port: int,
             backend: str, errors: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, _cores() // world_size))
    _join_group(backend)
    try:
        fn(*args)
    except UserError as e:
        errors.put(str(e))
        sys.exit(2)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], args: Sequence[Any], num_workers: int, device: torch.device) -> Any:
    """Run ``fn(*args)`` in every process (see the module docstring); returns what the
    process running here returned, or None after spawning."""
    if num_workers < 1:
        raise UserError(f"--num-workers must be >= 1, got {num_workers}")
    if device.type == "cuda" and num_workers > torch.cuda.device_count():
        raise UserError(f"--num-workers {num_workers} needs as many GPUs; {torch.cuda.device_count()} visible")
    backend = backend_for(device)
    if launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if num_workers not in (1, world):
            raise UserError(f"--num-workers {num_workers} differs from torchrun's WORLD_SIZE {world}; leave it out")
        _join_group(backend)
        try:
            return fn(*args)
        finally:
            dist.destroy_process_group()
    if num_workers == 1:
        return fn(*args)
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_spawned, args=(fn, args, num_workers, _free_port(), backend, errors), nprocs=num_workers)
    except mp.ProcessExitedException:
        if errors.empty():
            raise
        raise UserError(errors.get()) from None
    return None
