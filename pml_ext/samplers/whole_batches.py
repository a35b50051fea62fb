"""A sampler's index stream cut to whole batches, for sharding across ranks."""
from __future__ import annotations

import torch

__all__ = ["WholeBatches"]


class WholeBatches(torch.utils.data.Sampler):
    """The inner sampler's stream cut to whole batches, so that every rank's shard holds only
    full batches and every rank runs the same number of iterations (a trailing partial
    batch would be dropped by the DataLoader on one rank only).

    Args:
        sampler: any sampler yielding a flat index stream; ``update(...)`` is forwarded to it.
        batch_size: the batch size the stream is cut to.
    """

    wraps_sampler = True  # the runner's EpochUpdater looks through it

    def __init__(self, sampler, batch_size: int):
        self.sampler, self.batch_size = sampler, int(batch_size)

    def __iter__(self):
        flat = list(iter(self.sampler))
        return iter(flat[: len(flat) - len(flat) % self.batch_size])

    def __len__(self) -> int:
        return len(self.sampler) - len(self.sampler) % self.batch_size

    def update(self, *args, **kwargs):
        return self.sampler.update(*args, **kwargs)
