"""Smart mining (Harwood et al., ICCV 2017) as a PML miner: in-batch, over the whole training set,
or on batches that ``SmartBatchSampler`` laid out from the global triplets."""
from __future__ import annotations

from typing import ClassVar

import torch

from ..index.faiss_params import check_index_args
from ..utils.checked_modules import CheckedMiner
from ..utils.checks import check_embeddings, check_int, check_labels, check_positive, check_state_version
from ..utils.distributed import gather_training_set
from ..utils.squared_euclidean import check_rule_distance, pair_values, squared_euclidean
from .smart_triplets import smart_triplets

__all__ = ["SmartMiner"]


class SmartMiner(CheckedMiner):
    """Triplets by eq. 6 and Algorithm 1 of smart mining (see ``smart_triplets``).

    Three uses:

    * **In-batch** (default): ``miner(embeddings, labels)`` ranks the whole batch for
      each anchor (the batch is the neighbour list, so ``k`` is not used) and returns
      ``(anchors, positives, negatives)`` into the batch. Works as a PML ``tuple_miner``,
      under ``DistributedMinerWrapper``, and with a separate ``ref_emb``.
    * **Global**: ``miner.update(embeddings, labels)`` indexes the whole training set
      (``pml_ext.EmbeddingIndex``), takes every sample's ``k`` nearest neighbours and
      runs Algorithm 1 once: ``miner.triplets`` are the epoch's triplets, as dataset
      indices, for ``SmartBatchSampler``.
    * **Batch layout** (``batch_layout=True``): for batches built by
      ``SmartBatchSampler``, whose rows are ``[a0, p0, n0, a1, p1, n1, ...]``, the miner
      returns exactly those triplets, so the triplets Algorithm 1 selected are the ones
      that reach the loss. It raises if the labels do not fit that layout.

    Args:
        kappa: eq. 6's multiplier (> 0), set between epochs by an adaptive controller;
            read at every ``update``/forward.
        margin: the margin ``m`` of the ratio triplet loss, used only to measure
            ``fraction_active``.
        k: neighbours per sample in ``update`` (clipped to ``N - 1``).
        batch_layout: see above.
        index_method, index_params: ``EmbeddingIndex(method=..., **index_params)``.
        incremental, refresh_params: from the second ``update`` on, the neighbour lists
            are refreshed from the previous update's (``EmbeddingIndex.refresh``, with
            ``refresh_params``; it falls back to a full build on large drift). The
            previous graph is not saved with the miner: after a resume the first
            ``update`` builds cold.
        seed: seeds the miner's two generators (one for ``update``, one for batches);
            the same seed and inputs give the same triplets, on every rank.
        **kwargs: PML ``BaseMiner`` arguments (``distance=``, ``collect_stats=``). The
            distance's values are converted to squared Euclidean distances for eq. 6
            (``pml_ext.utils.squared_euclidean``): LpDistance is squared, cosine
            similarity ``s`` becomes ``2 - 2s``.

    Recorded (plain floats, set on every forward):
        ``kappa``, ``margin``, ``k``;
        ``fraction_active``: the paper's training error e, the fraction of the returned
        triplets whose **ratio triplet loss** ``max(0, 1 - d(a,n) / (d(a,p) + margin))``
        is non-zero, i.e. ``d(a,n) < d(a,p) + margin`` with Euclidean ``d`` (0.0 if
        there are none), on the current network's embeddings of the batch;
        ``epoch_fraction_active``: the same fraction over the last ``update``'s triplets, on
        the (stale) embeddings they were mined from;
        ``ann_recall``, ``ann_relative_distance_error``, ``ann_incremental``: the last
        ``update``'s sampled quality of its neighbour lists and whether they were refreshed
        (``pml_ext.index.epoch_knn.EpochKnn``);
        ``num_mined``, ``num_random``, ``num_outside_positive``, ``num_dropped``: counts
        from the most recent Algorithm 1 run (this batch in-batch; the epoch's
        ``update`` in batch-layout mode), registered as PML stats.

    ``effective_ranges`` (class attribute, read by ``AdaptiveController`` when it is given
    no ``bounds``): ``kappa`` in ``[1, inf)``. Algorithm 1 skips every neighbour before
    the first positive, so every ``kappa <= 1`` selects the same triplets as ``kappa = 1``
    (up to neighbours tied exactly at ``d(a, p_nn)``); a controller must not walk below it.
    """

    #: attribute -> ``(lo, hi)`` outside which the setting changes nothing (``None``: open).
    effective_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {"kappa": (1.0, None)}

    def __init__(self, kappa: float = 1.0, margin: float = 0.2, k: int = 32, batch_layout: bool = False,
                 index_method: str = "auto", index_params: dict | None = None, seed: int = 0,
                 incremental: bool = True, refresh_params: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        check_rule_distance(self.distance)
        check_positive(margin, "margin", allow_zero=True)
        k = check_int(k, "k", 1)
        seed = check_int(seed, "seed", 0, 2**31 - 2)
        # Checked now, so a bad config fails at start-up, not at the first update after the
        # warm-up epochs. The distance is not: in-batch mining also takes LpDistance(p != 2).
        if index_params is not None and not isinstance(index_params, dict):
            raise TypeError(f"index_params must be a dict or None, got {type(index_params).__name__}")
        check_index_args(index_method, index_params or {}, seed)
        from ..index.index_refresh import RefreshParams

        RefreshParams.from_dict(refresh_params)
        self.incremental, self.refresh_params = bool(incremental), dict(refresh_params or {})
        self._epoch_knn = None  # an EpochKnn, made at the first update (its index needs FAISS)
        self.ann_recall = self.ann_relative_distance_error = float("nan")
        self.ann_incremental = 0.0
        self.kappa = kappa
        self.margin = float(margin)
        self.k = int(k)
        self.batch_layout = bool(batch_layout)
        self.index_method = index_method
        self.index_params = dict(index_params or {})
        self.seed = int(seed)
        self._update_generator = torch.Generator().manual_seed(self.seed)
        self._batch_generator = torch.Generator().manual_seed(self.seed + 1)
        self.fraction_active = 0.0
        self.epoch_fraction_active = 0.0
        self.num_updates = 0
        self.triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.triplet_is_random: torch.Tensor | None = None
        self.triplet_is_mined: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self._counts = dict.fromkeys(("num_mined", "num_random", "num_outside_positive", "num_dropped"), 0.0)
        self._epoch_counts = dict(self._counts)
        self._set_counts(self._counts)
        self.add_to_recordable_attributes(list_of_names=["kappa", "margin", "k", "fraction_active",
                                                         "epoch_fraction_active", "ann_recall",
                                                         "ann_relative_distance_error", "ann_incremental"],
                                          is_stat=False)
        self.add_to_recordable_attributes(list_of_names=list(self._counts), is_stat=True)

    @property
    def kappa(self) -> float:
        return self._kappa

    @kappa.setter
    def kappa(self, value: float) -> None:
        check_positive(value, "kappa")
        self._kappa = float(value)

    # ------------------------------------------------------------------ per batch
    def mine(self, embeddings, labels, ref_emb, ref_labels):
        """``(a, p, n)``: ``LongTensor[T]`` each, rows of ``embeddings`` / ``ref_emb``."""
        same_set = ref_emb is embeddings
        if embeddings.shape[0] == 0 or ref_emb.shape[0] == 0:  # empty tuples, as PML's miners give
            self._set_counts(dict.fromkeys(self._counts, 0.0))
            self.fraction_active = 0.0
            empty = torch.empty(0, dtype=torch.long, device=embeddings.device)
            return empty, empty, empty
        if self.batch_layout:
            return self._layout_triplets(embeddings, labels, same_set)
        sq = squared_euclidean(self.distance(embeddings, ref_emb), self.distance)
        if same_set:
            # The anchor goes last in its own row, so dropping the last column removes it.
            sq.fill_diagonal_(float("inf"))
        sq_sorted, order = torch.sort(sq, dim=1, stable=True)
        if same_set:
            sq_sorted, order = sq_sorted[:, :-1], order[:, :-1]
        a, p, n, stats = smart_triplets(order, sq_sorted, labels, self.kappa, self._batch_generator,
                                        ref_labels=None if same_set else ref_labels, return_stats=True)
        self._set_counts(stats)
        self.fraction_active = self._fraction_active(sq[a, p], sq[a, n])
        return a, p, n

    def _layout_triplets(self, embeddings, labels, same_set):
        if not same_set:
            raise ValueError("batch_layout=True needs the batch itself as reference (ref_emb=None)")
        size = embeddings.shape[0]
        if size % 3:
            raise ValueError(f"batch_layout=True needs batches of whole triplets (a multiple of 3 rows), got {size}")
        a = torch.arange(0, size, 3, device=embeddings.device)
        p, n = a + 1, a + 2
        if not (bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())):
            raise ValueError("labels do not follow SmartBatchSampler's [anchor, positive, negative] layout: "
                             "use the sampler with a DataLoader of the same batch_size and no shuffling")
        values = [pair_values(embeddings, a, other, self.distance) for other in (p, n)]
        sq_ap, sq_an = (squared_euclidean(v, self.distance) for v in values)
        self._set_counts(self._epoch_counts)
        self.fraction_active = self._fraction_active(sq_ap, sq_an)
        return a, p, n

    # ------------------------------------------------------------------ per epoch
    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, dataset_indices: torch.Tensor | None = None,
               index=None):
        """Mine the epoch's triplets over the whole training set.

        Args:
            embeddings: ``Tensor[N, d]``, the training set, or this rank's shard of it
                when ``dataset_indices`` is given.
            labels: ``LongTensor[N]`` (or the shard's).
            dataset_indices: ``LongTensor[n_r]``, the dataset index of each row. When
                given, every rank's shard is gathered into the whole set in dataset
                order (``gather_training_set``), so every rank mines the same triplets.
            index: an already built ``EmbeddingIndex`` over these (gathered) embeddings,
                to skip building one.

        Returns:
            ``(anchors, positives, negatives)``, ``LongTensor[T]`` dataset indices, also
            kept in ``self.triplets``. ``self.triplet_is_mined`` (``BoolTensor[T]``) marks the
            triplets Algorithm 1 really mined, ``self.triplet_is_random`` its random
            fallback triplets (its complement); ``SmartBatchSampler`` uses only the former.
        """
        if dataset_indices is not None:
            check_embeddings(embeddings)
            check_labels(labels, embeddings.shape[0])
            embeddings, labels = gather_training_set(embeddings, labels, dataset_indices)
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        num_points = embeddings.shape[0]
        if num_points < 2:
            raise ValueError(f"embeddings must hold at least 2 samples to mine triplets, got {num_points}")
        k = min(self.k, num_points - 1)
        if index is None:
            values, nbr = self._knn_all(embeddings, k)
        elif getattr(index, "num_points", None) != num_points:
            raise ValueError(f"index must be built over the {num_points} embeddings given, "
                             f"it holds {getattr(index, 'num_points', None)}")
        else:
            values, nbr = index.knn_all(k)
        sq, order = torch.sort(squared_euclidean(values, self.distance), dim=1, stable=True)
        nbr = nbr.gather(1, order)
        labels = labels.detach().to(nbr.device).long()
        a, p, n, stats = smart_triplets(nbr, sq, labels, self.kappa, self._update_generator, return_stats=True)
        self.triplets, self.labels = (a, p, n), labels
        self.triplet_is_mined, self.triplet_is_random = stats["is_mined"], stats["is_random"]
        self._epoch_counts = {key: float(stats[key]) for key in self._counts}
        self._set_counts(self._epoch_counts)
        emb = embeddings.detach().to(nbr.device)
        sq_ap, sq_an = (squared_euclidean(pair_values(emb, a, other, self.distance), self.distance) for other in (p, n))
        self.epoch_fraction_active = self._fraction_active(sq_ap, sq_an)
        self.num_updates += 1
        return self.triplets

    def _knn(self):
        """The ``EpochKnn`` kept across epochs, made on first use."""
        if self._epoch_knn is None:
            # Imported here: the index pulls in FAISS, which in-batch mining never needs.
            from ..index.epoch_knn import EpochKnn

            self._epoch_knn = EpochKnn(self.index_method, self.distance, seed=self.seed, index_params=self.index_params,
                                       incremental=self.incremental, refresh_params=self.refresh_params)
        return self._epoch_knn

    def _knn_all(self, embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        result = self._knn().knn_all(embeddings, k)
        for name, value in self._epoch_knn.records().items():
            setattr(self, name, value)
        return result

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict:
        """What ``state_dict()`` holds beyond parameters (``_extra_state``): both generators, the
        epoch's triplets and counts, and ``kappa``, so a resumed run mines as the uninterrupted one."""
        return {"version": 1, "kappa": self.kappa, "update_generator": self._update_generator.get_state(),
                "batch_generator": self._batch_generator.get_state(), "triplets": self.triplets,
                "triplet_is_mined": self.triplet_is_mined, "triplet_is_random": self.triplet_is_random,
                "labels": self.labels, "epoch_counts": dict(self._epoch_counts),
                "epoch_fraction_active": self.epoch_fraction_active, "num_updates": self.num_updates,
                "epoch_knn": None if self._epoch_knn is None else self._epoch_knn.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        check_state_version(state, "SmartMiner")
        missing = sorted({"kappa", "update_generator", "batch_generator", "triplets"} - set(state))
        if missing:
            raise ValueError(f"state is missing {missing} (a SmartMiner.state_dict())")
        triplets = state["triplets"]
        if triplets is not None and (len(triplets) != 3 or not all(torch.is_tensor(t) for t in triplets)):
            raise ValueError("state['triplets'] must be None or three LongTensors (anchors, positives, negatives)")
        self.kappa = state["kappa"]
        self._update_generator.set_state(state["update_generator"])
        self._batch_generator.set_state(state["batch_generator"])
        self.triplets = None if triplets is None else tuple(triplets)
        self.triplet_is_mined, self.triplet_is_random = state.get("triplet_is_mined"), state.get("triplet_is_random")
        self.labels = state.get("labels")
        self._epoch_counts = dict(state.get("epoch_counts", self._epoch_counts))
        self.epoch_fraction_active = float(state.get("epoch_fraction_active", 0.0))
        self.num_updates = int(state.get("num_updates", 0))
        if state.get("epoch_knn") is not None:
            self._knn().load_state_dict(state["epoch_knn"])
            for name, value in self._epoch_knn.records().items():
                setattr(self, name, value)

    # ------------------------------------------------------------------ records
    def _fraction_active(self, sq_ap: torch.Tensor, sq_an: torch.Tensor) -> float:
        if sq_ap.numel() == 0:
            return 0.0
        return float((sq_an.sqrt() < sq_ap.sqrt() + self.margin).float().mean())

    def _set_counts(self, stats: dict) -> None:
        for key in self._counts:
            setattr(self, key, float(stats[key]))
