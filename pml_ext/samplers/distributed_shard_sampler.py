from __future__ import annotations

import torch

from .epoch_sampler import EpochSampler

__all__ = ["DistributedShardSampler"]


class DistributedShardSampler(EpochSampler):
    """Split an epoch-level sampler's batches across ranks.

    ``sampler`` is a pml_ext (or PML) sampler yielding a flat index stream whose
    consecutive ``batch_size`` chunks are designed batches (``MPerClassSampler``,
    ``HardNeighborSampler``, ``SmartBatchSampler``). Every rank builds the same wrapped
    sampler with the same seed and feeds it the same gathered embeddings, so every rank
    computes the same single-process epoch; rank r then keeps batches ``r, r + W, r + 2W, ...``.
    The slices are disjoint and their union is the single-process epoch, and no batch is
    cut in two, so batch designs (anchor pairs with their hard negatives, mined triplets)
    survive sharding (the rules are ``EpochSampler``'s).

    When the number of batches is not a multiple of the world size, the last ranks get one
    batch fewer; pass ``drop_uneven=True`` to drop the remainder so that every rank runs
    the same number of steps (DDP needs that unless the training loop handles it).

    Epochs are numbered as ``EpochSampler`` numbers them; the number is passed on to the
    wrapped sampler's ``set_epoch`` when it has one. ``state_dict`` holds the epoch counters
    only; the wrapped sampler's state is its own (``pml_ext.runner.state.run_state`` saves every
    layer). ``update(...)`` is forwarded to the wrapped sampler, so the config runner's
    per-epoch protocol works unchanged.
    """

    def __init__(self, sampler, batch_size: int, rank: int | None = None,
                 world_size: int | None = None, drop_uneven: bool = False):
        super().__init__(batch_size, 0, rank, world_size, drop_uneven)
        self.sampler = sampler

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """The wrapped sampler's epoch cut into ``batch_size`` chunks (the last may be shorter)."""
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)
        flat = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long)
        return list(torch.split(flat, self.batch_size))

    def batch_lengths(self) -> list[int]:
        total = len(self.sampler)
        full, rest = divmod(total, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def update(self, *args, **kwargs):
        return self.sampler.update(*args, **kwargs)
