"""Recovery under ``torchrun``: rank and world size, sums over ranks, and a loader that shards global batches."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pfgdf_plugin._util import validate


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_sum(values: list[float]) -> list[float]:
    """Sum ``values`` over all ranks (a no-op in a single process)."""
    if rank_and_world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_loader(dataset: Dataset, batch_size: int, *, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A shuffled training loader whose *global* batches are the same however many processes share them.

    Under ``torchrun`` each of the ``W`` processes gets ``batch_size / W`` samples of every global batch
    (a ``DistributedSampler``); alone, it gets all of them. `finetune` sets the sampler's epoch, so the
    order of epoch ``e`` depends on ``(seed, e)`` only. With a dataset size not divisible by ``W`` the
    sampler repeats a few samples to even out the shards.

    Examples:
        >>> ds = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.arange(10))
        >>> [len(b[1]) for b in train_loader(ds, 4)] == [4, 4, 2]
        True
    """
    rank, world = rank_and_world()
    validate.integer("batch_size", batch_size, 1)
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {world} processes")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size // world, sampler=sampler, num_workers=num_workers)
