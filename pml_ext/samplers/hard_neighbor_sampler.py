"""Lifted-structure batch construction (Song et al. 2016, §4): random positive pairs plus
their hard negative neighbours from a global index over the training set."""
from __future__ import annotations

import torch

from pytorch_metric_learning.utils import common_functions as c_f

from ..utils.checks import check_embeddings, check_int, check_labels
from ..utils.classes import group_by_class
from .epoch_sampler import EpochSampler

__all__ = ["HardNeighborSampler"]


class HardNeighborSampler(EpochSampler):
    """Batches of ``pairs_per_batch`` random positive pairs and their hard negative neighbours.

    Each batch of ``batch_size`` distinct dataset indices is built as:

    1. ``pairs_per_batch`` positive pairs, each from a different class drawn uniformly
       among classes with >= 2 samples, two distinct members drawn uniformly;
    2. for every pair member, its ``negatives_per_sample`` nearest neighbours with another
       label, as the index reported at the last ``update`` (nearest rank first, all
       members' rank-1 negatives before any rank-2 one; a sample already in the batch is
       not repeated);
    3. the rest filled class-balanced at random (a uniform class, then a uniform member),
       without duplicates.

    Before the first ``update`` step 2 is empty, so it is a class-balanced random sampler.
    Like PML's ``MPerClassSampler`` it yields a flat index stream whose consecutive
    ``batch_size`` chunks are the designed batches (``sampler=`` of PML trainers, with
    their ``batch_size`` equal to this one); with ``return_batches=True`` it yields one
    list per batch (``batch_sampler=`` of a ``DataLoader``). Every ``iter`` is a new epoch,
    numbered from 1 (``EpochSampler``: epochs, seeding, rank slices, state).

    Args:
        labels: ``LongTensor[N]`` (or a sequence) of dataset labels.
        batch_size: ``B``, with ``N >= B >= 2 * pairs_per_batch``.
        pairs_per_batch: ``P``, positive pairs per batch.
        negatives_per_sample: ``m``, hard negatives per pair member; default
            ``(B - 2P) // (2P)``, which fills the batch when no two members share one.
            Must satisfy ``2P (1 + m) <= B``, so every member's m negatives fit.
        num_neighbors: neighbours retrieved per sample at ``update``, among which the
            negatives are looked for; default ``min(N - 1, max(32, 4 m))``. Members whose
            list holds fewer than m negatives get fewer (the rest is random).
        length_before_new_iter: indices per epoch (default N), rounded down to whole batches.
        method, distance, num_threads: passed to the ``EmbeddingIndex`` built by
            ``update(embeddings)``.
        seed: epoch ``e`` draws from ``EpochSampler.epoch_generator(e)``.
        return_batches: yield lists (batch sampler) instead of a flat stream.
        rank, world_size: this process's share of the epoch (default from torch.distributed):
            batches ``rank, rank + W, ...`` of the single-process epoch, whole (see
            ``EpochSampler``). Every rank must use the same seed and updates.
        drop_uneven: drop the last batches so that every rank gets as many.
        incremental, refresh_params: from the second ``update(embeddings)`` on, the
            neighbour lists are refreshed from the previous update's
            (``EmbeddingIndex.refresh``; see ``pml_ext.index.epoch_knn.EpochKnn``, which
            also says what happens on resume).

    Recordable (``_record_these``): ``ann_recall``, ``ann_relative_distance_error``,
    ``ann_incremental`` of the last ``update(embeddings)`` (``EpochKnn``).
    """

    def __init__(self, labels, batch_size: int, pairs_per_batch: int = 2,
                 negatives_per_sample: int | None = None, num_neighbors: int | None = None,
                 length_before_new_iter: int | None = None, method: str = "auto", distance=None,
                 num_threads: int | None = None, seed: int = 0, return_batches: bool = False,
                 rank: int | None = None, world_size: int | None = None, drop_uneven: bool = False,
                 incremental: bool = True, refresh_params: dict | None = None):
        super().__init__(batch_size, seed, rank, world_size, drop_uneven, return_batches)
        labels = torch.as_tensor(labels)
        check_labels(labels, labels.shape[0] if labels.dim() == 1 else -1)
        self.labels = labels.cpu().long()
        num_points = self.labels.shape[0]
        self.pairs_per_batch = check_int(pairs_per_batch, "pairs_per_batch", 1)
        if self.batch_size > num_points:
            raise ValueError(f"batch_size={batch_size} exceeds the dataset size {num_points}")
        members = 2 * self.pairs_per_batch
        if members > self.batch_size:
            raise ValueError(f"batch_size={batch_size} cannot hold pairs_per_batch={pairs_per_batch} pairs")
        if negatives_per_sample is None:
            negatives_per_sample = (self.batch_size - members) // members
        self.negatives_per_sample = check_int(negatives_per_sample, "negatives_per_sample", 0)
        if members * (1 + self.negatives_per_sample) > self.batch_size:
            raise ValueError(
                f"negatives_per_sample={negatives_per_sample} does not fit: 2 * pairs_per_batch * "
                f"(1 + negatives_per_sample) = {members * (1 + self.negatives_per_sample)} > batch_size={batch_size}")
        if num_neighbors is None:
            num_neighbors = max(32, 4 * self.negatives_per_sample)
        self.num_neighbors = min(check_int(num_neighbors, "num_neighbors", 1), num_points - 1)
        length = num_points if length_before_new_iter is None else length_before_new_iter
        self._num_batches = check_int(length, "length_before_new_iter", 1) // self.batch_size
        if self._num_batches < 1:
            raise ValueError(f"length_before_new_iter={length} is shorter than one batch of {batch_size}")

        # Members of class c are self._by_class[self._class_start[c] : ... + self._class_count[c]].
        classes = group_by_class(self.labels)
        self._class_of, self._class_count = classes.of, classes.count
        self._by_class, self._class_start = classes.order, classes.start
        self._pair_classes = (self._class_count >= 2).nonzero().flatten()
        if self._pair_classes.numel() < self.pairs_per_batch:
            raise ValueError(
                f"pairs_per_batch={pairs_per_batch} needs that many classes with >= 2 samples in labels, "
                f"found {self._pair_classes.numel()}")

        # The index's arguments are checked now (no FAISS call), not at the first update.
        from ..index.epoch_knn import EpochKnn  # FAISS loads with a sampler, not with pml_ext

        self._epoch_knn = EpochKnn(method, distance, num_threads, seed, incremental=incremental,
                                   refresh_params=refresh_params)
        c_f.add_to_recordable_attributes(self, list_of_names=list(EpochKnn.RECORDS))
        self._copy_records()
        self.method, self.distance, self.num_threads = method, distance, num_threads
        self.num_updates = 0
        # [N, m] each sample's m nearest other-label neighbours, -1 padded; None before update.
        self.hard_negatives: torch.Tensor | None = None

    # ------------------------------------------------------------------ refresh
    def update(self, embeddings_or_index, labels: torch.Tensor | None = None) -> "HardNeighborSampler":
        """Refresh the hard negatives from ``Tensor[N, d]`` embeddings (in dataset order)
        or from an already built ``EmbeddingIndex`` over the N samples. Call once per epoch.

        ``labels`` (``LongTensor[N]``, optional; the ``EpochUpdatable`` protocol passes them)
        must be the sampler's own labels."""
        from ..index.embedding_index import EmbeddingIndex

        num_points = self.labels.shape[0]
        if labels is not None and not torch.equal(torch.as_tensor(labels).cpu().long(), self.labels):
            raise ValueError("labels must be the labels the sampler was built with, in the same order")
        if isinstance(embeddings_or_index, EmbeddingIndex):
            index = embeddings_or_index
            if index.num_points != num_points:
                raise ValueError(f"embeddings_or_index: the index holds {index.num_points} points, "
                                 f"the sampler's labels {num_points}")
        elif torch.is_tensor(embeddings_or_index):
            check_embeddings(embeddings_or_index, "embeddings_or_index")
            if embeddings_or_index.shape[0] != num_points:
                raise ValueError(f"embeddings_or_index has {embeddings_or_index.shape[0]} rows but labels "
                                 f"has {num_points}")
            index = None
        else:
            raise TypeError("embeddings_or_index must be a Tensor[N, d] or an EmbeddingIndex, got "
                            f"{type(embeddings_or_index).__name__}")
        if index is None:
            _, neighbours = self._epoch_knn.knn_all(embeddings_or_index, self.num_neighbors, self.labels)
            self._copy_records()
        else:
            _, neighbours = index.knn_all(self.num_neighbors)
        neighbours = neighbours.cpu()
        is_negative = self.labels[neighbours] != self.labels.unsqueeze(1)
        # Stable sort on "is positive" moves negatives to the front, nearest first.
        order = torch.argsort((~is_negative).to(torch.int8), dim=1, stable=True)
        negatives = torch.where(is_negative.gather(1, order), neighbours.gather(1, order),
                                torch.full_like(neighbours, -1))
        m = self.negatives_per_sample
        if negatives.shape[1] < m:
            negatives = torch.cat([negatives, negatives.new_full((num_points, m - negatives.shape[1]), -1)], 1)
        self.hard_negatives = negatives[:, :m].contiguous()
        self.num_updates += 1
        return self

    def state_dict(self) -> dict:
        """The epoch counters, the hard negatives of the last ``update`` and the kept k-NN graph."""
        return {**super().state_dict(), "num_updates": self.num_updates, "hard_negatives": self.hard_negatives,
                "epoch_knn": self._epoch_knn.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        negatives = state.get("hard_negatives")
        if negatives is not None and (not torch.is_tensor(negatives) or negatives.dim() != 2
                                      or negatives.shape[0] != self.labels.shape[0]):
            raise ValueError(f"state['hard_negatives'] must be a LongTensor[{self.labels.shape[0]}, m] or None")
        super().load_state_dict(state)
        self.num_updates = check_int(state.get("num_updates", 0), "state['num_updates']", 0)
        self.hard_negatives = None if negatives is None else negatives.long().cpu()
        if state.get("epoch_knn") is not None:  # the previous graph: the next update refreshes as uninterrupted
            self._epoch_knn.load_state_dict(state["epoch_knn"])
            self._copy_records()

    def _copy_records(self) -> None:
        for name, value in self._epoch_knn.records().items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ epoch
    def num_batches(self) -> int:
        return self._num_batches

    def epoch_batches(self, epoch: int | None = None) -> torch.Tensor:
        """The whole single-process epoch (default: the next one): ``LongTensor[num_batches, batch_size]``.

        Pure function of (seed, epoch, last update); does not advance the epoch counter.
        """
        epoch = self.next_epoch if epoch is None else check_int(epoch, "epoch", 1)
        gen = self.epoch_generator(epoch)
        nb, bsz, pairs = self._num_batches, self.batch_size, self.pairs_per_batch

        # Distinct pair classes in a batch: each round is one permutation of the eligible
        # classes cut into windows of P, and a round serves len // P batches.
        eligible = self._pair_classes
        per_round = eligible.numel() // pairs
        rounds = -(-nb // per_round)
        perms = torch.rand(rounds, eligible.numel(), generator=gen).argsort(dim=1)[:, :per_round * pairs]
        pair_classes = eligible[perms.reshape(rounds * per_round, pairs)[:nb]]       # [nb, P]
        count = self._class_count[pair_classes]
        first = (torch.rand(nb, pairs, generator=gen) * count).long().clamp(max=count - 1)
        second = (torch.rand(nb, pairs, generator=gen) * (count - 1)).long().clamp(max=count - 2)
        second = second + (second >= first).long()
        start = self._class_start[pair_classes]
        members = self._by_class[torch.stack([start + first, start + second], dim=2)].reshape(nb, 2 * pairs)

        parts = [members]
        if self.hard_negatives is not None:
            # [nb, 2P, m] -> rank-major [nb, m * 2P]: every member's rank-1 negative first.
            parts.append(self.hard_negatives[members].transpose(1, 2).reshape(nb, -1))
        num_classes = self._class_count.numel()
        fill_classes = torch.randint(0, num_classes, (nb, bsz), generator=gen)
        fill_rank = (torch.rand(nb, bsz, generator=gen) * self._class_count[fill_classes]).long()
        fill_rank = torch.minimum(fill_rank, self._class_count[fill_classes] - 1)
        parts.append(self._by_class[self._class_start[fill_classes] + fill_rank])
        # A rotated run of min(N, 2B) consecutive indices always holds >= B new ones, so
        # every batch fills up even when the random draws collide.
        num_points = self.labels.shape[0]
        offset = torch.randint(0, num_points, (nb, 1), generator=gen)
        parts.append((offset + torch.arange(min(num_points, 2 * bsz))) % num_points)
        return _first_distinct(torch.cat(parts, dim=1), bsz)


def _first_distinct(candidates: torch.Tensor, size: int) -> torch.Tensor:
    """Per row, the first ``size`` distinct non-negative entries, in order: ``[R, size]``.

    ``candidates: LongTensor[R, L]``; every row must hold at least ``size`` distinct ones.
    """
    values, order = torch.sort(candidates, dim=1, stable=True)
    # After a stable sort, the first copy of a value is its earliest occurrence in the row.
    first = torch.ones_like(values, dtype=torch.bool)
    first[:, 1:] = values[:, 1:] != values[:, :-1]
    keep = torch.zeros_like(first).scatter_(1, order, first & (values >= 0))
    keep &= keep.cumsum(dim=1) <= size
    return candidates[keep].view(candidates.shape[0], size)
