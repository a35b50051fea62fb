"""The one place that owns epoch numbering, per-epoch seeding and rank slicing for pml_ext's samplers."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from ..utils.checks import check_int, check_state_version
from ..utils.distributed import rank_and_world_size

__all__ = ["EpochSampler", "EPOCH_STRIDE"]

#: Epoch ``e`` of a sampler seeded ``s`` draws from ``torch.Generator().manual_seed(s * EPOCH_STRIDE + e)``:
#: a prime stride larger than any epoch count, so no two (seed, epoch) pairs share a stream.
EPOCH_STRIDE = 1_000_003


class EpochSampler(Sampler[int]):
    """Base class of samplers whose epochs are whole, designed batches.

    A subclass implements :meth:`epoch_batches` (the single-process epoch ``e`` as a
    ``LongTensor[num_batches, batch_size]`` or a list of ``LongTensor[<= batch_size]``),
    drawing its randomness only from :meth:`epoch_generator`. This class owns the rules
    every such sampler shares:

    - **Epochs are numbered from 1.** Each ``iter()`` draws the next epoch;
      ``set_epoch(e)`` fixes the number of the next one (as ``DistributedSampler.set_epoch``);
      ``epoch`` is the number of the epoch drawn last (0 before the first).
    - **Seeding.** Epoch ``e`` depends only on ``(seed, e)`` and the sampler's refreshed
      state, so every rank and a resumed run rebuild the same epoch.
    - **Ranks.** Rank ``r`` of ``W`` keeps batches ``r, r + W, r + 2W, ...`` whole: the
      ranks' slices are disjoint and their union is the single-process epoch. With
      ``drop_uneven=True`` the trailing ``num_batches % W`` batches are dropped, so that
      every rank runs the same number of steps (what DDP needs).
    - **State.** ``state_dict`` / ``load_state_dict`` hold the epoch counters (subclasses
      add what their ``update`` refreshed), so a resumed run continues with the next epoch.

    Args:
        batch_size: rows per batch (``>= 1``).
        seed: the base seed of every epoch's generator.
        rank, world_size: this process's share (default from ``torch.distributed``).
        drop_uneven: see above.
        return_batches: ``iter()`` yields one list per batch (``batch_sampler=`` of a
            ``DataLoader``) instead of a flat index stream (``sampler=``).
    """

    def __init__(self, batch_size: int, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 drop_uneven: bool = False, return_batches: bool = False):
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.seed = check_int(seed, "seed")
        default_rank, default_world = rank_and_world_size()
        self.rank = default_rank if rank is None else check_int(rank, "rank", 0)
        self.world_size = default_world if world_size is None else check_int(world_size, "world_size", 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.drop_uneven = bool(drop_uneven)
        self.return_batches = bool(return_batches)
        self.epoch = 0
        self._next_epoch = 1

    # ------------------------------------------------------------------ to implement
    def epoch_batches(self, epoch: int) -> torch.Tensor | Sequence[torch.Tensor]:
        """The single-process epoch ``epoch``: ``LongTensor[num_batches, batch_size]`` (or a list of batches)."""
        raise NotImplementedError

    def batch_lengths(self) -> list[int]:
        """The length of every batch of the single-process epoch (default: full batches of ``num_batches()``)."""
        return [self.batch_size] * self.num_batches()

    def num_batches(self) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared rules
    @property
    def next_epoch(self) -> int:
        return self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Number the next epoch ``epoch`` (1-based)."""
        self._next_epoch = check_int(epoch, "epoch", 1)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """The generator of epoch ``epoch``: seeded ``seed * EPOCH_STRIDE + epoch``."""
        return torch.Generator().manual_seed(self.seed * EPOCH_STRIDE + int(epoch))

    def rank_slice(self, batches):
        """This rank's batches of a single-process epoch (a tensor's rows or a list), whole."""
        count = len(batches)
        if self.drop_uneven:
            count -= count % self.world_size
        return batches[:count][self.rank::self.world_size]

    def __iter__(self) -> Iterator:
        epoch = self._next_epoch
        batches = self.epoch_batches(epoch)
        self.epoch, self._next_epoch = epoch, epoch + 1
        mine = self.rank_slice(batches)
        if not torch.is_tensor(mine):  # a list of ragged batches
            mine = [torch.as_tensor(b).tolist() for b in mine]
            return iter(mine if self.return_batches else [i for batch in mine for i in batch])
        # LongTensor[num_batches, batch_size]: converted in one call
        return iter(mine.tolist() if self.return_batches else mine.flatten().tolist())

    def __len__(self) -> int:
        mine = self.rank_slice(self.batch_lengths())
        return len(mine) if self.return_batches else sum(mine)

    def state_dict(self) -> dict:
        """The epoch counters; subclasses add their refreshed state."""
        return {"version": 1, "epoch": int(self.epoch), "next_epoch": int(self._next_epoch)}

    def load_state_dict(self, state: dict) -> None:
        check_state_version(state, type(self).__name__)
        for key in ("epoch", "next_epoch"):
            if key not in state:
                raise ValueError(f"state is missing '{key}' (a {type(self).__name__}.state_dict())")
        self.epoch = check_int(state["epoch"], "state['epoch']", 0)
        self._next_epoch = check_int(state["next_epoch"], "state['next_epoch']", 1)
