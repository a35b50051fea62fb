from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..utils.distributed import rank_and_world_size

__all__ = ["DistributedShardSampler"]


class DistributedShardSampler(Sampler[int]):
    """Split an epoch-level sampler's batches across ranks.

    ``sampler`` is a pml_ext (or PML) sampler yielding a flat index stream whose
    consecutive ``batch_size`` chunks are designed batches (``MPerClassSampler``,
    ``HardNeighborSampler``, ``SmartBatchSampler``). Every rank builds the same wrapped
    sampler with the same seed and feeds it the same gathered embeddings, so every rank
    computes the same single-process epoch; rank r then keeps batches ``r, r + W, r + 2W, ...``.
    The slices are disjoint and their union is the single-process epoch, and no batch is
    cut in two, so batch designs (anchor pairs with their hard negatives, mined triplets)
    survive sharding.

    When the number of batches is not a multiple of the world size, the last ranks get one
    batch fewer; pass ``drop_uneven=True`` to drop the remainder so that every rank runs
    the same number of steps (DDP needs that unless the training loop handles it).

    ``update(...)`` is forwarded to the wrapped sampler, so the config runner's per-epoch
    protocol works unchanged.
    """

    def __init__(self, sampler, batch_size: int, rank: int | None = None,
                 world_size: int | None = None, drop_uneven: bool = False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        default_rank, default_world = rank_and_world_size()
        self.rank = default_rank if rank is None else int(rank)
        self.world_size = default_world if world_size is None else int(world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_uneven = drop_uneven

    def _my_batches(self) -> list[torch.Tensor]:
        flat = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        batches = list(torch.split(flat, self.batch_size))
        if self.drop_uneven:
            batches = batches[: len(batches) - len(batches) % self.world_size]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        for batch in self._my_batches():
            yield from batch.tolist()

    def __len__(self) -> int:
        total = len(self.sampler)
        num_batches = -(-total // self.batch_size)
        last_size = total - (num_batches - 1) * self.batch_size
        if self.drop_uneven:
            # A partial last batch can survive the cut (when the batch count is a multiple of
            # world_size): count it at its real size, as __iter__ yields it.
            kept = num_batches - num_batches % self.world_size
            last_size = last_size if kept == num_batches else self.batch_size
            num_batches = kept
        mine = range(self.rank, num_batches, self.world_size)
        return sum(last_size if b == num_batches - 1 else self.batch_size for b in mine)

    def update(self, *args, **kwargs):
        return self.sampler.update(*args, **kwargs)
