"""Class-level hard batches (Suh et al., CVPR 2019): classes whose centres lie close together share a batch."""
from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from ..utils.checks import check_embeddings, check_int, check_labels
from ..utils.classes import group_by_class
from ._nearest_centres import check_centre_search, nearest_centres
from .epoch_sampler import EpochSampler

__all__ = ["ClassHardBatchSampler"]

_RECORDS = ("random_share", "neighbours", "num_updates", "near_share_in_epoch")


class ClassHardBatchSampler(EpochSampler):
    """Batches of ``classes_per_batch`` classes x ``samples_per_class`` samples, near classes together.

    A batch is made of groups of ``classes_per_seed`` distinct classes: a seed class drawn
    uniformly, then ``classes_per_seed - 1`` classes each of which is, with probability
    ``1 - random_share``, drawn uniformly among the seed's ``neighbours`` nearest class
    centres, and otherwise uniformly among all classes (never a class already in the
    batch; a seed whose near classes are all taken gets a random one). Each class then
    gives ``samples_per_class`` distinct members drawn uniformly (with ``replacement=True``,
    independent draws). The batch is class-major: the ``m`` rows of a class are consecutive.
    The loss and miner are free: any PML loss that wants ``m`` samples per class works.

    Class centres: ``update(embeddings, labels)`` takes the training set's embeddings (a
    ``Tensor[N, d]`` in dataset order, or an ``EmbeddingBank``, whose unwritten rows are
    left out) and, on its first call and every ``refresh_every``-th call after it, sets each
    class's centre to the mean of its members' L2-normalised embeddings; classes are near
    when their centres are close in Euclidean distance. Before the first update there are no
    centres and every class is random (plain random class batches, like PML's
    ``MPerClassSampler``). A class without written rows has no centre and is nobody's near class.

    Hardness, settable between epochs (e.g. by ``AdaptiveController``, which keeps
    ``neighbours`` an int): ``random_share`` (the share of non-seed classes drawn at random,
    in [0, 1]; 1 - ``random_share`` is the share of near classes) and ``neighbours`` (the
    neighbourhood size, >= 1; the nearer the drawn classes, the harder the batch; values
    above ``C - 1`` act as ``C - 1``). Both are validated on assignment.

    Epochs, seeding, rank slices and state follow ``EpochSampler``: epoch ``e`` depends only
    on (seed, e, the centres of the last update, the two settings), so every rank and a
    resumed run rebuild it.

    Args:
        labels: ``LongTensor[N]`` dataset labels.
        batch_size: ``B = classes_per_batch * samples_per_class``.
        classes_per_batch: ``c``, distinct classes per batch (<= the number of classes).
        samples_per_class: ``m``; without replacement at most the smallest class's size.
        classes_per_seed: classes per group (seed included), dividing ``c``; default ``c``
            (one seed per batch).
        neighbours, random_share: the hardness settings above (defaults 8 and 0.0).
        refresh_every: recompute the centres on update calls 1, 1 + k, 1 + 2k, ... (k >= 1;
            the runner calls ``update`` once per epoch, so k = 2 refreshes every other epoch).
        replacement: draw a class's members with replacement.
        length_before_new_iter: indices per epoch (default N), rounded down to whole batches.
        seed, rank, world_size, drop_uneven, return_batches: as in ``EpochSampler``.
        centre_search: how ``near_classes`` finds the nearest centres: ``"exact"`` (default,
            FAISS's flat index), ``"hnsw"`` or ``"ivf"`` (an approximate ``EmbeddingIndex``
            built on one thread with seed 0: the same centres give the same near classes in
            every process), or ``"auto"`` (exact below ``AUTO_EXACT_MAX_CLASSES`` classes
            with a centre, HNSW above). docs/index.md has the measured cost and recall.
        centre_search_params: the approximate method's ``EmbeddingIndex`` parameters (HNSW:
            ``M``, ``efConstruction``, ``efSearch``; IVF: ``nlist``, ``nprobe``, ``niter``,
            ``max_points_per_centroid``); default the centre search's own defaults.

    Recordable (``_record_these``): ``random_share``, ``neighbours``, ``num_updates`` and
    ``near_share_in_epoch``, the share of the last epoch's non-seed classes that were drawn
    as near classes.
    """

    #: Read by ``AdaptiveController`` when it steers a setting without ``bounds``.
    effective_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "random_share": (0.0, 1.0), "neighbours": (1.0, None)}

    def __init__(self, labels, batch_size: int, classes_per_batch: int, samples_per_class: int,
                 classes_per_seed: int | None = None, neighbours: int = 8, random_share: float = 0.0,
                 replacement: bool = False, length_before_new_iter: int | None = None, seed: int = 0,
                 return_batches: bool = False, rank: int | None = None, world_size: int | None = None,
                 drop_uneven: bool = False, refresh_every: int = 1, centre_search: str = "exact",
                 centre_search_params: dict | None = None):
        super().__init__(batch_size, seed, rank, world_size, drop_uneven, return_batches)
        labels = torch.as_tensor(labels)
        check_labels(labels, labels.shape[0] if labels.dim() == 1 else -1)
        self.labels = labels.cpu().long()
        self.classes = group_by_class(self.labels)
        num_classes = self.classes.count.numel()
        self.classes_per_batch = check_int(classes_per_batch, "classes_per_batch", 1, num_classes)
        self.samples_per_class = check_int(samples_per_class, "samples_per_class", 1)
        if self.classes_per_batch * self.samples_per_class != self.batch_size:
            raise ValueError(f"classes_per_batch * samples_per_class must equal batch_size, got "
                             f"{classes_per_batch} * {samples_per_class} != {batch_size}")
        self.replacement = bool(replacement)
        smallest = int(self.classes.count.min())
        if not self.replacement and self.samples_per_class > smallest:
            raise ValueError(f"samples_per_class={samples_per_class} exceeds the smallest class's {smallest} "
                             "samples: pass replacement=True or a smaller samples_per_class")
        per_seed = self.classes_per_batch if classes_per_seed is None else classes_per_seed
        self.classes_per_seed = check_int(per_seed, "classes_per_seed", 1, self.classes_per_batch)
        if self.classes_per_batch % self.classes_per_seed:
            raise ValueError(f"classes_per_seed={classes_per_seed} must divide classes_per_batch={classes_per_batch}")
        length = self.labels.shape[0] if length_before_new_iter is None else length_before_new_iter
        self._num_batches = check_int(length, "length_before_new_iter", 1) // self.batch_size
        if self._num_batches < 1:
            raise ValueError(f"length_before_new_iter={length} is shorter than one batch of {batch_size}")
        self.neighbours = neighbours
        self.random_share = random_share
        self.centres: torch.Tensor | None = None      # [C, d], None before the first update
        self.has_centre: torch.Tensor | None = None   # [C] classes with at least one embedded member
        self.refresh_every = check_int(refresh_every, "refresh_every", 1)
        self.centre_search, self.centre_search_params = check_centre_search(centre_search, centre_search_params)
        self.update_calls = 0  # counts every call; num_updates only those that recomputed
        self.num_updates = 0
        self._near_cache: tuple[tuple, torch.Tensor] | None = None  # (centres, versions, k), near
        self.near_share_in_epoch = 0.0
        c_f.add_to_recordable_attributes(self, list_of_names=list(_RECORDS))

    # ------------------------------------------------------------------ settings
    @property
    def random_share(self) -> float:
        return self._random_share

    @random_share.setter
    def random_share(self, value: float) -> None:
        self._random_share = _check_share(value, "random_share")

    @property
    def neighbours(self) -> int:
        return self._neighbours

    @neighbours.setter
    def neighbours(self, value: int) -> None:
        self._neighbours = check_int(value, "neighbours", 1)

    # ------------------------------------------------------------------ epoch protocol
    def update(self, embeddings, labels: torch.Tensor | None = None) -> "ClassHardBatchSampler":
        """Recompute the class centres from ``embeddings`` (``Tensor[N, d]`` in dataset order, or an
        ``EmbeddingBank`` of N rows) on the calls ``refresh_every`` selects; on the others,
        nothing but the count. ``labels`` (optional) must be the sampler's own."""
        from ..index.embedding_bank import EmbeddingBank

        num_points = self.labels.shape[0]
        if labels is not None and not torch.equal(torch.as_tensor(labels).cpu().long(), self.labels):
            raise ValueError("labels must be the labels the sampler was built with, in the same order")
        if isinstance(embeddings, EmbeddingBank):
            rows, written = embeddings.embeddings, embeddings.filled
        elif torch.is_tensor(embeddings):
            check_embeddings(embeddings, "embeddings")
            rows, written = embeddings.detach().cpu().float(), torch.ones(embeddings.shape[0], dtype=torch.bool)
        else:
            raise TypeError(f"embeddings must be a Tensor[N, d] or an EmbeddingBank, got {type(embeddings).__name__}")
        if rows.shape[0] != num_points:
            raise ValueError(f"embeddings has {rows.shape[0]} rows but the sampler's labels {num_points}")
        self.update_calls += 1  # a refused call is not counted
        if (self.update_calls - 1) % self.refresh_every:
            return self
        of = self.classes.of[written]
        unit = torch.nn.functional.normalize(rows[written], dim=1)
        num_classes = self.classes.count.numel()
        sums = torch.zeros(num_classes, rows.shape[1]).index_add_(0, of, unit)
        counts = torch.bincount(of, minlength=num_classes)
        self.has_centre = counts > 0
        self.centres = sums / counts.clamp(min=1).unsqueeze(1)
        self.num_updates += 1
        return self

    def state_dict(self) -> dict:
        """The epoch counters, the two settings and the centres of the last ``update``."""
        return {**super().state_dict(), "random_share": self.random_share, "neighbours": self.neighbours,
                "centres": self.centres, "has_centre": self.has_centre, "num_updates": self.num_updates,
                "update_calls": self.update_calls}

    def load_state_dict(self, state: dict) -> None:
        centres, has_centre = state.get("centres"), state.get("has_centre")
        num_classes = self.classes.count.numel()
        if (centres is None) != (has_centre is None):
            raise ValueError("state['centres'] and state['has_centre'] must both be None or both be set")
        if centres is not None:
            if not torch.is_tensor(centres) or centres.dim() != 2 or centres.shape[0] != num_classes:
                raise ValueError(f"state['centres'] must be a Tensor[{num_classes}, d] (one row per class) or None")
            check_embeddings(centres, "state['centres']")
            if not torch.is_tensor(has_centre) or has_centre.dtype != torch.bool \
                    or tuple(has_centre.shape) != (num_classes,):
                raise ValueError(f"state['has_centre'] must be a BoolTensor[{num_classes}] or None")
        share = _check_share(state.get("random_share", self.random_share), "state['random_share']")
        neighbours = check_int(state.get("neighbours", self.neighbours), "state['neighbours']", 1)
        num_updates = check_int(state.get("num_updates", 0), "state['num_updates']", 0)
        # States saved before refresh_every have no count: 0, the next call refreshes.
        update_calls = check_int(state.get("update_calls", 0), "state['update_calls']", 0)
        super().load_state_dict(state)
        self.random_share, self.neighbours, self.num_updates = share, neighbours, num_updates
        self.update_calls = update_calls
        self.centres = None if centres is None else centres.float().cpu().clone()
        self.has_centre = None if has_centre is None else has_centre.cpu().clone()

    # ------------------------------------------------------------------ epoch
    def num_batches(self) -> int:
        return self._num_batches

    def near_classes(self) -> torch.Tensor | None:
        """Each class's ``neighbours`` nearest other classes by centre, nearest first (equal
        distances: lower class id first): ``LongTensor[C, K]``, -1 where a class has fewer (no
        centre); ``None`` before any update."""
        if self.centres is None:
            return None
        num_classes = self.centres.shape[0]
        k = min(self.neighbours, num_classes - 1)
        if k == 0:
            return torch.full((num_classes, 0), -1, dtype=torch.long)
        # The search is the epoch's costliest step (~40 s at 143k classes): epochs built on the
        # same centres (updates every n epochs) reuse it. The cache holds the very tensors it
        # was computed from (so their ids cannot be reused) and their in-place edit counters.
        key = (self.centres, self.centres._version, self.has_centre, self.has_centre._version, k)
        cached = self._near_cache
        if cached is None or not all(a is b if torch.is_tensor(a) else a == b for a, b in zip(cached[0], key)):
            near = nearest_centres(self.centres, self.has_centre, k, self.centre_search, self.centre_search_params)
            self._near_cache = cached = (key, near)
        return cached[1].clone()

    def epoch_batches(self, epoch: int | None = None) -> torch.Tensor:
        """The single-process epoch (default: the next one): ``LongTensor[num_batches, batch_size]``.

        A pure function of (seed, epoch, centres, settings); does not advance the epoch counter.
        """
        epoch = self.next_epoch if epoch is None else check_int(epoch, "epoch", 1)
        gen = self.epoch_generator(epoch)
        classes = self._batch_classes(gen)                                     # [nb, c]
        nb, c, m = self._num_batches, self.classes_per_batch, self.samples_per_class
        count = self.classes.count[classes].reshape(-1)                          # [nb * c]
        if self.replacement:
            ranks = (torch.rand(nb * c, m, generator=gen) * count.unsqueeze(1)).long()
            ranks = torch.minimum(ranks, (count - 1).unsqueeze(1))
        else:
            ranks = torch.empty(nb * c, m, dtype=torch.long)
            for j in range(m):
                ranks[:, j] = _draw_excluding(count, ranks[:, :j], gen)
        start = self.classes.start[classes].reshape(-1, 1)
        return self.classes.order[start + ranks].reshape(nb, c * m)

    def _batch_classes(self, gen: torch.Generator) -> torch.Tensor:
        """``LongTensor[num_batches, c]``: distinct classes per batch, group by group (class doc)."""
        nb, c, per_seed = self._num_batches, self.classes_per_batch, self.classes_per_seed
        num_classes = self.classes.count.numel()
        near = self.near_classes()
        total = torch.full((nb,), num_classes, dtype=torch.long)
        chosen = torch.empty(nb, c, dtype=torch.long)
        num_near = 0
        for slot in range(c):
            taken = chosen[:, :slot]
            pick = _draw_excluding(total, taken, gen)        # a seed, or a random class
            if slot % per_seed and near is not None and near.shape[1]:
                seed_class = chosen[:, slot - slot % per_seed]
                candidates = near[seed_class]                                  # [nb, K]
                free = (candidates >= 0) & ~(candidates.unsqueeze(2) == taken.unsqueeze(1)).any(dim=2)
                # Uniform among the free near classes: the largest of uniform keys.
                keys = torch.rand(candidates.shape, generator=gen).masked_fill_(~free, -1.0)
                near_pick = candidates.gather(1, keys.argmax(dim=1, keepdim=True)).squeeze(1)
                use_near = (torch.rand(nb, generator=gen) >= self.random_share) & free.any(dim=1)
                pick = torch.where(use_near, near_pick, pick)
                num_near += int(use_near.sum())
            chosen[:, slot] = pick
        non_seed = nb * (c - c // per_seed)
        self.near_share_in_epoch = num_near / non_seed if non_seed else 0.0
        return chosen


def _check_share(value, name: str) -> float:
    """``value`` as a float in [0, 1]; TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def _draw_excluding(upper: torch.Tensor, taken: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per row, a uniform draw from ``[0, upper)`` minus the row's ``taken`` values: ``LongTensor[R]``.

    ``upper: LongTensor[R]``; ``taken: LongTensor[R, t]``, distinct values in range per row,
    ``t < upper``. The r-th free value is r shifted past every taken value at or below it.
    """
    num_taken = taken.shape[1]
    draw = (torch.rand(upper.shape[0], generator=gen) * (upper - num_taken)).long()
    draw = torch.minimum(draw, upper - num_taken - 1)
    for value in torch.sort(taken, dim=1).values.T:  # ascending, so each shift is final
        draw += (value <= draw).long()
    return draw
