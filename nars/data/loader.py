"""Batches for FBNetV3IS: an endless shuffled stream for training, one ordered pass for testing.

Training: epoch e is the order ``DistributedSampler`` gives for (seed, e), each rank taking its
own shard, and epochs follow one another without end; batches run across epoch boundaries, so
every batch is full. Each sample is loaded under its own torch seed, drawn from (seed, rank,
position in the stream), so random augmentation (the flip) does not depend on the number of
workers, and a run resumed with ``start_iter`` sees exactly the batches an uninterrupted run
would. Workers also seed numpy and ``random`` from their torch seed, so that no two share a
stream. Datasets must therefore draw their randomness from torch's default generator.

Testing: every image exactly once, in order; under distributed each rank takes a contiguous
shard (sizes differ by at most one), so gathered results cover the set without duplicates.

Neither loader draws from the caller's torch generator, so evaluating during training does not
change the training run.

A dataset's UserError reaches the caller as the same one line with loader workers as without
(``Loader``), not wrapped in torch's "Caught UserError in DataLoader worker" and a traceback.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from nars.errors import UserError


@dataclass(frozen=True)
class _Failed:
    """A UserError raised while loading a sample, carried to the main process as data: torch
    re-raises a worker's exception with the worker's traceback in its message, and a dataset
    error must read the same one line with workers as without."""

    message: str


class _Guarded(Dataset):
    """``dataset[key]``, or ``_Failed`` with the message of the UserError it raised."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except UserError as e:
            return _Failed(str(e))


class Loader(DataLoader):
    """A DataLoader over a ``_Guarded`` dataset that raises a sample's UserError in the main
    process, as it was raised."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, _Failed):
                raise UserError(batch.message)
            yield batch


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]] | _Failed]) -> Any:
    """Images and targets as lists (detection models take images of different sizes); a
    sample's ``_Failed`` instead, for ``Loader`` to raise."""
    failed = next((item for item in batch if isinstance(item, _Failed)), None)
    if failed is not None:
        return failed
    images, targets = zip(*batch)
    return list(images), list(targets)


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    """torch seeds each worker (base seed + worker id); numpy and ``random`` follow it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _world(distributed: bool) -> tuple[int, int]:
    return (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)


class TrainSampler(Sampler[tuple[int, int]]):
    """Endless ``(index, sample seed)`` pairs over shuffled epochs; starts at stream position ``start``."""

    def __init__(self, size: int, *, seed: int, num_replicas: int = 1, rank: int = 0, start: int = 0):
        self.epochs = DistributedSampler(range(size), num_replicas, rank, shuffle=True, seed=seed)
        self.seed, self.rank, self.start = seed, rank, start

    def _indices(self) -> Iterator[int]:
        for epoch in itertools.count():
            self.epochs.set_epoch(epoch)
            yield from self.epochs

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in itertools.islice(enumerate(self._indices()), self.start, None):
            yield index, _seed(self.seed, self.rank, position)


class ShardSampler(Sampler[int]):
    """Indices 0..size-1 in order, cut into ``num_replicas`` contiguous shards; this rank's shard."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        per_rank, extra = divmod(size, num_replicas)
        self.begin = rank * per_rank + min(rank, extra)
        self.end = self.begin + per_rank + (rank < extra)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


class SeededItems(Dataset):
    """``dataset[index]`` loaded with torch's default generator seeded by the key's seed; the
    caller's generator state is restored afterwards (it matters with ``num_workers=0``)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def build_train_loader(dataset: Dataset, batch_size: int, num_workers: int, *, seed: int, distributed: bool,
                       start_iter: int = 0) -> DataLoader:
    """Endless training batches of ``batch_size`` images per process, from iteration ``start_iter``."""
    replicas, rank = _world(distributed)
    sampler = TrainSampler(len(dataset), seed=seed, num_replicas=replicas, rank=rank,  # type: ignore[arg-type]
                           start=start_iter * batch_size)
    return Loader(_Guarded(SeededItems(dataset)), batch_size=batch_size, sampler=sampler, drop_last=True,
                  num_workers=num_workers, collate_fn=collate, worker_init_fn=_seed_worker,
                  generator=torch.Generator().manual_seed(_seed(seed, rank)))


def build_test_loader(dataset: Dataset, batch_size: int, num_workers: int, distributed: bool) -> DataLoader:
    """One ordered pass over this process's shard of ``dataset``."""
    sampler = ShardSampler(len(dataset), *_world(distributed))  # type: ignore[arg-type]
    return Loader(_Guarded(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                  collate_fn=collate, worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(0))
