"""Batches of whole triplets from smart mining's epoch-level selection (Harwood et al. 2017, section 6)."""
from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from ..miners.smart_miner import SmartMiner
from ..miners.smart_triplets import _group_by_class, random_triplets
from ..utils.checks import check_int, check_labels
from ..utils.distributed import gather_training_set
from .epoch_sampler import EpochSampler

__all__ = ["SmartBatchSampler"]

# Rounds of redrawing clashing random (anchor, negative) pairs; at most half of all pairs
# are taken when redrawing (else they are enumerated), so each round keeps under half.
_MAX_REDRAWS = 64
_RECORDS = ("mined_fraction", "epoch", "num_mined_in_epoch", "num_random_in_epoch", "num_shortfall_in_epoch",
            "mined_share_in_epoch", "random_share_in_epoch")
# Copied from the miner after each update: its neighbour lists' sampled quality (EpochKnn).
_ANN_RECORDS = ("ann_recall", "ann_relative_distance_error", "ann_incremental")


class SmartBatchSampler(EpochSampler):
    """A flat index stream whose consecutive ``batch_size`` chunks are batches of triplets.

    Each batch is ``[a0, p0, n0, a1, p1, n1, ...]`` (dataset indices) of ``batch_size // 3``
    triplets. An epoch asks for ``round(mined_fraction * batch_size / 3)`` mined triplets per
    batch and takes them only from the triplets Algorithm 1 **really mined** in the miner's
    latest ``update`` (a valid negative beyond the kappa bound, with its positive:
    ``miner.triplet_is_mined``), never from Algorithm 1's own random fallback triplets, each
    at most once per epoch. When the miner mined fewer than asked, the shortfall is filled
    with random triplets (the paper's mix), spread evenly over the batches; nothing is
    repeated. Every other triplet is uniformly random. No (anchor, negative) pair occurs
    twice in an epoch (so each negative is used at most once per anchor and epoch). During
    the first ``warmup_epochs`` epochs every triplet is random (the paper's first two
    epochs). Pair it with ``SmartMiner(batch_layout=True)`` as the loss's miner so the
    selected triplets are exactly the ones that reach the loss.

    Use it as ``sampler=`` of a ``DataLoader`` (or a PML trainer) whose ``batch_size`` is
    the same and that does not shuffle, like PML's ``MPerClassSampler``.

    Epoch protocol: call ``update(embeddings, labels)`` with the whole training set's
    embeddings before iterating each epoch; it runs the miner's ``update`` (skipped while
    the next epoch is a warm-up epoch, when only the labels are kept). Each ``iter()`` is
    one epoch (numbered from 1); ``set_epoch(e)`` fixes the number of the next one
    (``EpochSampler``: epochs, seeding, rank slices, state; an epoch depends only on
    ``(seed, epoch, triplets)``, so every rank rebuilds the same one).

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
            as in ``EpochSampler``.

    Recordable (``_record_these``, plain floats, set by each epoch's ``iter()`` for the
    single-process epoch, i.e. all ranks together): ``mined_fraction`` (asked), ``epoch``,
    ``num_mined_in_epoch`` (really mined triplets), ``num_random_in_epoch`` (random ones,
    warm-up and shortfall included), ``num_shortfall_in_epoch`` (asked for mined but filled
    with random), ``mined_share_in_epoch`` and ``random_share_in_epoch`` (those two counts
    over the epoch's triplets; they sum to 1); ``ann_recall``, ``ann_relative_distance_error``,
    ``ann_incremental``: the miner's, from the last ``update`` (its neighbour lists are
    refreshed from the previous update's, see ``SmartMiner``). ``epoch_mined_mask``
    (``BoolTensor[num_batches, batch_size // 3]``) marks the epoch's mined triplets.
    """

    #: Read by ``AdaptiveController`` when it steers ``mined_fraction`` without ``bounds``.
    effective_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {"mined_fraction": (0.0, 1.0)}

    def __init__(self, miner: SmartMiner, batch_size: int, mined_fraction: float = 1.0, warmup_epochs: int = 2,
                 seed: int = 0, labels: torch.Tensor | None = None, triplets_per_epoch: int | None = None,
                 rank: int | None = None, world_size: int | None = None, drop_uneven: bool = False):
        if not isinstance(miner, SmartMiner):
            raise TypeError(f"miner must be a pml_ext.SmartMiner, got {type(miner).__name__}")
        super().__init__(check_int(batch_size, "batch_size", 3), seed, rank, world_size, drop_uneven)
        if batch_size % 3:
            raise ValueError(f"batch_size must be a positive multiple of 3 (whole triplets), got {batch_size!r}")
        warmup_epochs = check_int(warmup_epochs, "warmup_epochs", 0)
        if triplets_per_epoch is not None:
            triplets_per_epoch = check_int(triplets_per_epoch, "triplets_per_epoch", 1)
        self.miner = miner
        self.mined_fraction = mined_fraction
        self.warmup_epochs = warmup_epochs
        self.triplets_per_epoch = triplets_per_epoch
        self.labels = None
        if labels is not None:
            check_labels(labels, labels.shape[0] if torch.is_tensor(labels) else 0)
            self.labels = labels.detach().cpu().long()
        self.num_mined_in_epoch = self.num_random_in_epoch = self.num_shortfall_in_epoch = 0.0
        self.mined_share_in_epoch = self.random_share_in_epoch = 0.0
        self.epoch_mined_mask: torch.Tensor | None = None
        c_f.add_to_recordable_attributes(self, list_of_names=list(_RECORDS + _ANN_RECORDS))
        self._copy_ann_records()

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
        triplets = self.miner.update(embeddings, labels, dataset_indices=dataset_indices, index=index)
        self._copy_ann_records()
        return triplets

    def _copy_ann_records(self) -> None:
        for name in _ANN_RECORDS:
            setattr(self, name, getattr(self.miner, name))

    def state_dict(self) -> dict:
        """The epoch counters, ``mined_fraction`` and the labels kept from the last ``update``."""
        return {**super().state_dict(), "mined_fraction": self.mined_fraction, "labels": self.labels,
                **{name: getattr(self, name) for name in _ANN_RECORDS}}

    def load_state_dict(self, state: dict) -> None:
        labels = state.get("labels")
        if labels is not None:
            check_labels(labels, labels.shape[0] if torch.is_tensor(labels) else 0)
        super().load_state_dict(state)
        self.mined_fraction = state.get("mined_fraction", self.mined_fraction)
        self.labels = None if labels is None else labels.long().cpu()
        for name in _ANN_RECORDS:  # the miner's, as copied at the last update
            setattr(self, name, float(state.get(name, getattr(self, name))))

    # ------------------------------------------------------------------ iteration
    def _dataset_labels(self) -> torch.Tensor:
        # The miner's labels, once it has mined, are those its triplets index.
        labels = self.miner.labels if self.miner.labels is not None else self.labels
        if labels is None:
            raise RuntimeError("SmartBatchSampler needs the dataset labels (dataset size, random triplets): "
                               "pass labels= or call update() before iterating")
        return labels.cpu()

    def num_batches(self) -> int:
        per_batch = self.batch_size // 3
        if self.triplets_per_epoch is not None:
            return -(-self.triplets_per_epoch // per_batch)
        return max(1, -(-self._dataset_labels().shape[0] // self.batch_size))

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """The single-process epoch ``epoch`` as ``LongTensor[num_batches, batch_size]``.

        Also sets the epoch's records (class doc) and ``epoch_mined_mask``.
        """
        warmup = epoch <= self.warmup_epochs
        if not warmup and self.miner.triplets is None:
            raise RuntimeError(f"SmartBatchSampler: epoch {epoch} is past the {self.warmup_epochs} warm-up epoch(s) "
                               "but the miner has no triplets: call sampler.update(embeddings, labels) first")
        gen = self.epoch_generator(epoch)
        num_batches, per_batch = self.num_batches(), self.batch_size // 3
        wanted = 0 if warmup else num_batches * int(round(self.mined_fraction * per_batch))
        mined = self._mined_triplets(wanted, gen)
        rand = self._random_triplets(num_batches * per_batch - mined.shape[0], gen, mined)
        # Spread the mined triplets evenly: batch b takes floor((b+1)M/B) - floor(bM/B), at its head.
        edges = torch.div(torch.arange(num_batches + 1) * mined.shape[0], num_batches, rounding_mode="floor")
        is_mined = torch.arange(per_batch).unsqueeze(0) < torch.diff(edges).unsqueeze(1)  # [B, T]
        batches = torch.empty(num_batches, per_batch, 3, dtype=torch.long)
        batches[is_mined], batches[~is_mined] = mined, rand
        self.epoch_mined_mask = is_mined
        total = float(num_batches * per_batch)
        self.num_mined_in_epoch, self.num_random_in_epoch = float(mined.shape[0]), float(rand.shape[0])
        self.num_shortfall_in_epoch = float(wanted - mined.shape[0])
        self.mined_share_in_epoch = self.num_mined_in_epoch / total
        self.random_share_in_epoch = self.num_random_in_epoch / total
        return batches.reshape(num_batches, self.batch_size)

    def _mined_triplets(self, count: int, gen: torch.Generator) -> torch.Tensor:
        """Up to ``count`` of the triplets Algorithm 1 really mined, ``LongTensor[M, 3]``, ``M <= count``.

        Drawn without replacement from the miner's ``triplet_is_mined`` triplets (its random
        fallback triplets are left out), so no triplet, and no (anchor, negative) pair, repeats.
        """
        triplets = self.miner.triplets
        if count == 0 or triplets is None or triplets[0].numel() == 0:
            return torch.zeros(0, 3, dtype=torch.long)
        pool = torch.stack([t.cpu() for t in triplets], dim=1)
        is_mined = self.miner.triplet_is_mined
        if is_mined is not None:
            pool = pool[is_mined.cpu()]
        return pool[torch.randperm(pool.shape[0], generator=gen)[:count]]

    def _random_triplets(self, count: int, gen: torch.Generator, taken: torch.Tensor) -> torch.Tensor:
        """``count`` uniformly random triplets ``LongTensor[count, 3]`` over the dataset labels.

        No two of them, and none of them and a triplet of ``taken`` (``LongTensor[M, 3]``, the
        epoch's mined triplets), share an (anchor, negative) pair: uniform draws, redrawing
        the clashes (a few vectorised rounds), or, when the epoch needs more than half of all
        distinct pairs, a draw without replacement from the enumerated free pairs.
        """
        if count == 0:
            return torch.zeros(0, 3, dtype=torch.long)
        labels = self._dataset_labels()
        num = labels.shape[0]
        classes = _group_by_class(labels)
        size = classes.count[classes.of]                                      # [N] class size per sample
        # Only anchors with another member in their class and another class can form a triplet.
        eligible = ((size >= 2) & (size < num)).nonzero().flatten()
        if eligible.numel() == 0:
            raise ValueError("labels: no sample has both a positive and a negative, so no triplet exists")
        num_neg = num - size[eligible]                                        # [E] negatives per anchor
        capacity, taken_keys = int(num_neg.sum()), taken[:, 0] * num + taken[:, 2]
        need = count + taken_keys.numel()
        if need > capacity:
            raise ValueError(f"triplets_per_epoch/batch_size: an epoch of {need} triplets needs more distinct "
                             f"(anchor, negative) pairs than the {num} labels hold ({capacity})")
        if 2 * need > capacity:
            a, n = self._free_pairs(eligible, num_neg, classes, taken_keys)
            pick = torch.randperm(a.numel(), generator=gen)[:count]
            a, p, _ = random_triplets(a[pick], labels, gen)
            return torch.stack([a, p, n[pick]], dim=1)
        out = torch.empty(count, 3, dtype=torch.long)
        todo = torch.arange(count)
        for _ in range(_MAX_REDRAWS):
            anchors = eligible[torch.randint(eligible.numel(), (todo.numel(),), generator=gen)]
            out[todo] = torch.stack(random_triplets(anchors, labels, gen), dim=1)
            keys = out[:, 0] * num + out[:, 2]
            fixed = torch.ones(count, dtype=torch.bool)
            fixed[todo] = False
            new = keys[todo]
            # A redrawn pair clashes with a mined or accepted pair, or with an earlier redrawn one.
            clash = torch.isin(new, torch.cat([taken_keys, keys[fixed]]))
            sorted_new, order = torch.sort(new, stable=True)
            repeat = torch.zeros_like(clash)
            repeat[order[1:]] = sorted_new[1:] == sorted_new[:-1]
            todo = todo[clash | repeat]
            if todo.numel() == 0:
                return out
        raise RuntimeError("SmartBatchSampler: could not draw distinct random (anchor, negative) pairs")

    @staticmethod
    def _free_pairs(eligible: torch.Tensor, num_neg: torch.Tensor, classes, taken_keys: torch.Tensor):
        """Every (anchor, negative) pair of the eligible anchors not in ``taken_keys``: ``LongTensor[F]`` x 2."""
        num = classes.order.shape[0]
        anchors = eligible.repeat_interleave(num_neg)
        slot = torch.arange(anchors.numel()) - (torch.cumsum(num_neg, 0) - num_neg).repeat_interleave(num_neg)
        cls = classes.of[anchors]
        # The non-members of a class are the two runs of `order` around the class's own run.
        negatives = classes.order[slot + classes.count[cls] * (slot >= classes.start[cls]).long()]
        free = ~torch.isin(anchors * num + negatives, taken_keys)
        return anchors[free], negatives[free]
