"""Batches of whole triplets from smart mining's epoch-level selection (Harwood et al. 2017, section 6)."""
from __future__ import annotations

from typing import Iterator

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from torch.utils.data import Sampler

from ..miners.smart_miner import SmartMiner
from ..miners.smart_triplets import random_triplets
from ..utils.checks import check_labels
from ..utils.distributed import gather_training_set
from .distributed_shard_sampler import DistributedShardSampler

__all__ = ["SmartBatchSampler"]

# Per-epoch generators are seeded with seed * _EPOCH_STRIDE + epoch, so an epoch's batches
# depend only on (seed, epoch, triplets) and every rank can rebuild the same epoch.
_EPOCH_STRIDE = 1_000_003


class SmartBatchSampler(Sampler[int]):
    """A flat index stream whose consecutive ``batch_size`` chunks are batches of triplets.

    Each batch is ``[a0, p0, n0, a1, p1, n1, ...]`` (dataset indices): ``batch_size // 3``
    triplets, of which ``round(mined_fraction * batch_size / 3)`` come from the miner's
    latest ``update`` (Algorithm 1's output, including the random triplets it emits for
    anchors without a valid negative) and the rest are uniformly random triplets. During
    the first ``warmup_epochs`` epochs every triplet is random (the paper's first two
    epochs). Pair it with ``SmartMiner(batch_layout=True)`` as the loss's miner so the
    selected triplets are exactly the ones that reach the loss.

    Use it as ``sampler=`` of a ``DataLoader`` (or a PML trainer) whose ``batch_size`` is
    the same and that does not shuffle, like PML's ``MPerClassSampler``.

    Epoch protocol: call ``update(embeddings, labels)`` with the whole training set's
    embeddings before iterating each epoch; it runs the miner's ``update`` (skipped while
    the next epoch is a warm-up epoch, when only the labels are kept). Each ``iter()`` is
    one epoch (numbered from 1); ``set_epoch(e)`` fixes the number of the next one.

    Args:
        miner: the ``SmartMiner`` whose ``update`` gives the triplets.
        batch_size: rows per batch, a multiple of 3.
        mined_fraction: share of each batch's triplets taken from the mined ones, in
            [0, 1]; may be changed between epochs (validated on assignment).
        warmup_epochs: number of leading all-random epochs.
        seed: seeds every epoch's order and random triplets.
        labels: ``LongTensor[N]`` dataset labels, needed for the warm-up epochs when no
            ``update`` has happened yet; later taken from each update.
        triplets_per_epoch: default ``ceil(N / batch_size) * (batch_size // 3)``: an epoch
            embeds about as many rows as one pass over the dataset.
        rank, world_size: this process's slice: batches ``rank, rank + W, ...`` of the
            single-process epoch (default from ``torch.distributed``); ``drop_uneven``
            as in ``DistributedShardSampler``.

    Recordable (``_record_these``): ``mined_fraction``, ``epoch``, ``num_mined_in_epoch``.
    """

    def __init__(self, miner: SmartMiner, batch_size: int, mined_fraction: float = 1.0, warmup_epochs: int = 2,
                 seed: int = 0, labels: torch.Tensor | None = None, triplets_per_epoch: int | None = None,
                 rank: int | None = None, world_size: int | None = None, drop_uneven: bool = False):
        if not isinstance(miner, SmartMiner):
            raise TypeError(f"miner must be a pml_ext.SmartMiner, got {type(miner).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 3 or batch_size % 3:
            raise ValueError(f"batch_size must be a positive multiple of 3 (whole triplets), got {batch_size!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        if triplets_per_epoch is not None and (isinstance(triplets_per_epoch, bool) or int(triplets_per_epoch) < 1):
            raise ValueError(f"triplets_per_epoch must be a positive int or None, got {triplets_per_epoch!r}")
        self.miner = miner
        self.batch_size = batch_size
        self.mined_fraction = mined_fraction
        self.warmup_epochs = warmup_epochs
        self.seed = int(seed)
        self.triplets_per_epoch = None if triplets_per_epoch is None else int(triplets_per_epoch)
        self.labels = None
        if labels is not None:
            check_labels(labels, labels.shape[0] if torch.is_tensor(labels) else 0)
            self.labels = labels.detach().cpu().long()
        # The shard sampler resolves (default from torch.distributed) and validates the rank.
        shard = DistributedShardSampler([], batch_size, rank, world_size, drop_uneven)
        self.rank, self.world_size, self.drop_uneven = shard.rank, shard.world_size, drop_uneven
        self.epoch = 0
        self._next_epoch = 1
        self.num_mined_in_epoch = 0.0
        c_f.add_to_recordable_attributes(self, list_of_names=["mined_fraction", "epoch", "num_mined_in_epoch"])

    @property
    def mined_fraction(self) -> float:
        return self._mined_fraction

    @mined_fraction.setter
    def mined_fraction(self, value: float) -> None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"mined_fraction must be a number, got {type(value).__name__}") from None
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"mined_fraction must be in [0, 1], got {value}")
        self._mined_fraction = v

    # ------------------------------------------------------------------ epoch protocol
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, dataset_indices: torch.Tensor | None = None,
               index=None):
        """Prepare the next epoch (see the class doc); returns the miner's triplets or ``None``."""
        if self._next_epoch <= self.warmup_epochs:
            if dataset_indices is not None:
                embeddings, labels = gather_training_set(embeddings, labels, dataset_indices)
            check_labels(labels, embeddings.shape[0])
            self.labels = labels.detach().cpu().long()
            return None
        return self.miner.update(embeddings, labels, dataset_indices=dataset_indices, index=index)

    def set_epoch(self, epoch: int) -> None:
        """Number the next epoch ``epoch`` (1-based), like ``DistributedSampler.set_epoch``."""
        if isinstance(epoch, bool) or int(epoch) < 1:
            raise ValueError(f"epoch must be an int >= 1, got {epoch!r}")
        self._next_epoch = int(epoch)

    # ------------------------------------------------------------------ iteration
    def _dataset_labels(self) -> torch.Tensor:
        # The miner's labels, once it has mined, are those its triplets index.
        labels = self.miner.labels if self.miner.labels is not None else self.labels
        if labels is None:
            raise RuntimeError("SmartBatchSampler needs the dataset labels (dataset size, random triplets): "
                               "pass labels= or call update() before iterating")
        return labels.cpu()

    def _num_batches(self) -> int:
        per_batch = self.batch_size // 3
        if self.triplets_per_epoch is not None:
            return -(-self.triplets_per_epoch // per_batch)
        return max(1, -(-self._dataset_labels().shape[0] // self.batch_size))

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """The single-process epoch ``epoch`` as ``LongTensor[num_batches, batch_size]``."""
        warmup = epoch <= self.warmup_epochs
        if not warmup and self.miner.triplets is None:
            raise RuntimeError(f"SmartBatchSampler: epoch {epoch} is past the {self.warmup_epochs} warm-up epoch(s) "
                               "but the miner has no triplets: call sampler.update(embeddings, labels) first")
        gen = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + epoch)
        num_batches, per_batch = self._num_batches(), self.batch_size // 3
        mined_per_batch = 0 if warmup else int(round(self.mined_fraction * per_batch))
        mined = self._mined_triplets(num_batches * mined_per_batch, gen)
        mined_per_batch = mined.shape[0] // num_batches
        num_random = num_batches * (per_batch - mined_per_batch)
        rand = self._random_triplets(num_random, gen)
        self.num_mined_in_epoch = float(mined.shape[0])
        batches = torch.cat([mined.view(num_batches, mined_per_batch, 3),
                             rand.view(num_batches, per_batch - mined_per_batch, 3)], dim=1)
        return batches.reshape(num_batches, self.batch_size)

    def _mined_triplets(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` of the miner's triplets ``LongTensor[count, 3]``: shuffled passes, no repeat within a pass."""
        if count == 0 or self.miner.triplets is None or self.miner.triplets[0].numel() == 0:
            return torch.zeros(0, 3, dtype=torch.long)
        pool = torch.stack([t.cpu() for t in self.miner.triplets], dim=1)
        passes = -(-count // pool.shape[0])
        order = torch.cat([torch.randperm(pool.shape[0], generator=gen) for _ in range(passes)])[:count]
        return pool[order]

    def _random_triplets(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` uniformly random triplets ``LongTensor[count, 3]`` over the dataset labels."""
        if count == 0:
            return torch.zeros(0, 3, dtype=torch.long)
        labels = self._dataset_labels()
        _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        # Only anchors with another member in their class and another class can form a triplet.
        eligible = ((counts[inverse] >= 2) & (counts[inverse] < labels.shape[0])).nonzero().flatten()
        if eligible.numel() == 0:
            raise ValueError("labels: no sample has both a positive and a negative, so no triplet exists")
        anchors = eligible[torch.randint(eligible.numel(), (count,), generator=gen)]
        return torch.stack(random_triplets(anchors, labels, gen), dim=1)

    def __iter__(self) -> Iterator[int]:
        epoch = self._next_epoch
        flat = self.epoch_batches(epoch).flatten().tolist()
        self.epoch, self._next_epoch = epoch, epoch + 1
        if self.world_size == 1:
            return iter(flat)
        return iter(DistributedShardSampler(flat, self.batch_size, self.rank, self.world_size, self.drop_uneven))

    def __len__(self) -> int:
        total = self._num_batches() * self.batch_size
        if self.world_size == 1:
            return total
        return len(DistributedShardSampler(range(total), self.batch_size, self.rank, self.world_size,
                                           self.drop_uneven))
