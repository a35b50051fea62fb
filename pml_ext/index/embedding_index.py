"""A FAISS k-nearest-neighbour index over a whole training set, in PML distance units.

PML's ``FaissKNN`` answers one k-NN query batch against one reference set and always
uses squared L2. Global mining (lifted-structure batch construction, smart mining) needs
more: an index that is built once per epoch, queried for every indexed point with the
point itself excluded, approximate methods for large N, and distances that can be
compared with the PML ``distance`` object the loss uses. ``EmbeddingIndex`` adds those
on top of ``FaissKNN`` and PML's own self-exclusion (``inference.return_results``).
"""
from __future__ import annotations

import math
import time
from typing import Any

import faiss
import torch
from pytorch_metric_learning.distances import (
    BaseDistance,
    CosineSimilarity,
    DotProductSimilarity,
    LpDistance,
)
from pytorch_metric_learning.utils.inference import FaissKNN

from ..utils.checks import check_embeddings, check_int
from ..utils.threads import thread_count
from .faiss_params import METHODS, check_faiss_params, check_for_data, check_num_threads, check_seed
from ._faiss_ops import IndexedPoints, as_faiss_input, check_k, drop_self
from .index_quality import index_quality, true_ranks
from .index_refresh import RefreshParams, previous_lists, refresh_index

__all__ = ["EmbeddingIndex"]


# "auto" switches from exact to HNSW at this many indexed points. Measured by
# benchmarks/bench_index.py --threshold (d=64, k=32; benchmarks/results/index.md): a flat
# index's all-points refresh grows as N^2 and HNSW's as ~N log N; their CPU costs cross
# between 60k (exact 14.0 s vs HNSW 14.8 s) and 80k (23.7 vs 21.1). At equal cost exact
# wins (recall 1), so the switch is at the upper end.
AUTO_EXACT_MAX_POINTS = 70_000

# Defaults from the same measurements (N=100k, k=32): the cheapest HNSW setting found
# with recall@32 >= 0.95 on the "trained" benchmark data (docs/index.md has the sweep).
# IVF cannot reach that recall there at a useful cost; its defaults favour speed.
HNSW_DEFAULTS = {"M": 16, "efConstruction": 48, "efSearch": 40}
IVF_DEFAULTS = {"nlist": None, "nprobe": 16, "niter": 10, "max_points_per_centroid": 64}


class EmbeddingIndex:
    """k-NN over a fixed set of embeddings with a PML distance.

    Args:
        method: ``"exact"`` (flat index), ``"hnsw"``, ``"ivf"`` (inverted lists with
            ``nlist`` cells, ``nprobe`` visited per query) or ``"auto"`` (exact below
            ``AUTO_EXACT_MAX_POINTS`` points, HNSW above).
        distance: a PML distance. ``LpDistance`` with ``p=2`` (normalised or not, any
            ``power > 0``) searches L2; ``CosineSimilarity`` / ``DotProductSimilarity``
            (``power=1``) search inner product. Default ``LpDistance()``, PML's default.
        num_threads: threads FAISS and torch may use during ``build``/``search``/``refresh``
            (restored afterwards). ``None`` keeps the current settings.
        seed: seeds IVF's k-means and HNSW's level assignment, so the same data and seed
            give the same index (HNSW only exactly so with ``num_threads=1``: its
            parallel insertion order varies).
        **faiss_params: method parameters: ``M``, ``efConstruction``, ``efSearch`` for
            HNSW; ``nlist``, ``nprobe``, ``niter``, ``max_points_per_centroid`` (k-means
            training) for IVF (``nlist=None``: ``4 * sqrt(N)``).

    Attributes:
        num_points: ``N``, the number of indexed points (0 before ``build``).
        labels: ``LongTensor[N]`` given to ``build``, or ``None``.
        points: the indexed data as every search reads it (``IndexedPoints``: normalised
            CPU ``data: Tensor[N, d]`` and its squared norms), ``None`` before ``build``.
        resolved_method: the method actually used (``"auto"`` resolved at ``build``).
    """

    def __init__(self, method: str = "auto", distance: BaseDistance | None = None,
                 num_threads: int | None = None, seed: int = 0, **faiss_params: Any):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.distance = LpDistance() if distance is None else distance
        self._metric = _faiss_metric(self.distance)
        # Every FAISS parameter is checked here, before FAISS sees it (faiss_params.py).
        faiss_params = check_faiss_params(method, faiss_params)
        num_threads = check_num_threads(num_threads)
        seed = check_seed(seed)
        self.method = method
        self.num_threads = num_threads
        self.seed = seed
        self.faiss_params = dict(faiss_params)
        self.resolved_method: str | None = None
        self.num_points = 0
        self.labels: torch.Tensor | None = None
        self.points: IndexedPoints | None = None
        self._knn: FaissKNN | None = None
        self.build_time = 0.0
        # Last refresh's extended neighbour lists (LongTensor[N, width]) and its report.
        self.graph: torch.Tensor | None = None
        self.last_refresh: dict = {}

    # ------------------------------------------------------------------ building
    def build(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> "EmbeddingIndex":
        """Index ``embeddings: Tensor[N, d]`` (and keep ``labels: LongTensor[N]``). Returns self."""
        data = self._set_data(embeddings, labels)
        num_points, dim = data.shape
        method = self.method
        if method == "auto":
            method = "exact" if num_points < AUTO_EXACT_MAX_POINTS else "hnsw"
        check_for_data(method, self.faiss_params if method != "exact" else {}, num_points, dim)
        start = time.perf_counter()
        with self._threads():
            # FaissKNN.train = "make an index for dimension d, add the data"; the factory
            # gets the data too because IVF must learn its cells before anything is added.
            knn = FaissKNN(reset_before=False, reset_after=False,
                           index_init_fn=lambda d: self._new_faiss_index(method, d, data))
            knn.train(as_faiss_input(data))
        self.build_time = time.perf_counter() - start
        self._knn = knn
        self.resolved_method = method
        return self

    def _set_data(self, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Check and keep the (normalised, CPU) data and labels; drops any FAISS index."""
        self.points = IndexedPoints(embeddings, labels, self.distance)
        self._knn = None
        self.num_points, self.dim = self.points.num_points, self.points.dim
        self.labels = self.points.labels
        return self.points.data

    @property
    def _data(self) -> torch.Tensor | None:
        """The indexed ``Tensor[N, d]`` as searched (``points.data``), ``None`` before ``build``."""
        return None if self.points is None else self.points.data

    def _new_faiss_index(self, method: str, dim: int, data: torch.Tensor):
        if method == "exact":
            return faiss.IndexFlat(dim, self._metric)
        if method == "hnsw":
            params = {**HNSW_DEFAULTS, **self.faiss_params}
            index = faiss.IndexHNSWFlat(dim, int(params["M"]), self._metric)
            index.hnsw.efConstruction = int(params["efConstruction"])
            index.hnsw.rng = faiss.RandomGenerator(self.seed)
            return index
        params = {**IVF_DEFAULTS, **self.faiss_params}
        num_points = data.shape[0]
        nlist = params["nlist"] or max(1, int(round(4 * math.sqrt(num_points))))
        nlist = min(int(nlist), num_points)  # only the default can exceed N: check_for_data
        quantizer = faiss.IndexFlat(dim, self._metric)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, self._metric)
        index.cp.seed = self.seed
        # k-means on a subsample (max_points_per_centroid per cell) with few iterations:
        # cell quality barely matters once nprobe cells are visited, training time does.
        index.cp.niter = int(params["niter"])
        index.cp.max_points_per_centroid = int(params["max_points_per_centroid"])
        # Fewer than 39 points per cell only makes k-means warn; it still works.
        index.cp.min_points_per_centroid = 1
        index.train(as_faiss_input(data))
        return index

    # ------------------------------------------------------------------ searching
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest indexed points of each query.

        Args:
            queries: ``Tensor[Q, d]``.
            k: ``1 <= k <= N``.

        Returns:
            ``(distances: Tensor[Q, k], indices: LongTensor[Q, k])``, nearest first;
            distances in the PML distance's units (similarities sorted descending),
            on the queries' device.
        """
        self._require_built()
        check_embeddings(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries must have {self.dim} columns like the indexed embeddings, "
                             f"got shape {tuple(queries.shape)}")
        k = check_k(k, self.num_points, "search", self.num_points)
        q = self.distance.maybe_normalize(queries.detach().cpu()).to(self.points.data.dtype)
        distances, indices = self.points.finish(q, *self._faiss_search(q, k), exclude=None)
        return distances.to(queries.device), indices.to(queries.device)

    def knn_all(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest neighbours of every indexed point, the point itself excluded.

        Exclusion is by index, so a duplicate of a point is still its neighbour (at
        distance 0). Returns ``(distances: Tensor[N, k], indices: LongTensor[N, k])``,
        nearest first, in the PML distance's units.
        """
        self._require_built()
        k = check_k(k, self.num_points - 1, "knn_all", self.num_points)
        own = torch.arange(self.num_points)
        data = self.points.data
        raw, indices = drop_self(*self._faiss_search(data, k + 1), own)
        return self.points.finish(data, raw, indices, exclude=own)

    def _faiss_search(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._knn.index
        if self.resolved_method == "hnsw":
            efsearch = int({**HNSW_DEFAULTS, **self.faiss_params}["efSearch"])
            index.hnsw.efSearch = max(efsearch, k)
        elif self.resolved_method == "ivf":
            index.nprobe = min(int({**IVF_DEFAULTS, **self.faiss_params}["nprobe"]), index.nlist)
        with self._threads():
            distances, indices = index.search(as_faiss_input(q), k)
        return torch.as_tensor(distances), torch.as_tensor(indices).long()

    # ------------------------------------------------------------------ quality
    def quality(self, k: int, num_queries: int = 1000) -> dict:
        """Zezula et al.'s approximate-search quality of this index, measured on a sample.

        ``num_queries`` indexed points (drawn with ``seed``) are searched, themselves
        excluded, by this index and by exact search (``index_quality.brute_force_raw``).
        Returns ``ann_quality(...)``'s dict (recall, precision, ED, position error with
        true ranks over all ``N`` points, improvement in efficiency from the two search
        times) plus ``"num_queries"`` and ``"method"``.
        """
        self._require_built()
        k = check_k(k, self.num_points - 1, "quality", self.num_points)
        num_queries = min(check_int(num_queries, "num_queries", 1), self.num_points)
        result = index_quality(self.points, self._faiss_search, k, num_queries, self.seed)
        result.update(num_queries=num_queries, method=self.resolved_method)
        return result

    def _true_ranks(self, q: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return true_ranks(self.points, q, rows, values)

    # ------------------------------------------------------------------ refreshing
    def refresh(self, embeddings: torch.Tensor, k: int, previous: torch.Tensor | tuple | None = None,
                labels: torch.Tensor | None = None, **params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``knn_all(k)`` of new embeddings, from last epoch's graph when it is still close.

        Args:
            embeddings: ``Tensor[N, d]``, this epoch's embeddings of the same N points.
            k: neighbours per point, ``1 <= k < N``.
            previous: last epoch's neighbours, ``LongTensor[N, k0]`` or a ``(distances,
                indices)`` pair as ``knn_all`` returns; default the graph this index kept
                from its last ``refresh`` (``self.graph``). ``None`` there too: full build.
            labels: ``LongTensor[N]``, kept as in ``build``.
            **params: ``RefreshParams`` fields (``extra``, ``fan``, ``rounds``,
                ``num_random``, ``check_queries``, ``min_start_recall``, ``min_recall``,
                ``cold``).

        Returns ``(distances: Tensor[N, k], indices: LongTensor[N, k])`` in ``knn_all``'s
        format (PML units, self excluded, nearest first, no repeats). The rule deciding
        between the refresh and a full build, and what is recorded in
        ``self.last_refresh``, are in ``pml_ext.index.index_refresh`` (docs/index.md).
        After an incremental refresh the index holds no FAISS index: ``search``,
        ``knn_all`` and ``quality`` need ``build`` first.
        """
        with self._threads():
            settings = RefreshParams.from_dict(params)
            start = time.perf_counter()
            kept = previous_lists(self.graph, previous)  # read before new data replaces the old
            self._set_data(embeddings, labels)
            return refresh_index(self, embeddings, labels, k, kept, settings, start)

    # ------------------------------------------------------------------ helpers
    def _require_built(self) -> None:
        if self._knn is None:
            raise RuntimeError("EmbeddingIndex: call build(embeddings) before search/knn_all/quality "
                               "(an incremental refresh keeps neighbour lists, not a FAISS index)")

    def _threads(self):
        return thread_count(self.num_threads)

    def __repr__(self) -> str:
        return (f"EmbeddingIndex(method={self.method!r}, resolved={self.resolved_method!r}, "
                f"distance={type(self.distance).__name__}, num_points={self.num_points})")


def _faiss_metric(distance) -> int:
    if not isinstance(distance, BaseDistance):
        raise TypeError(f"distance must be a PML distance (BaseDistance), got {type(distance).__name__}")
    if isinstance(distance, LpDistance):
        if distance.p != 2:
            raise ValueError(f"distance: only LpDistance with p=2 is supported, got p={distance.p}")
        if not distance.power > 0:
            raise ValueError(f"distance: LpDistance power must be > 0, got {distance.power}")
        return faiss.METRIC_L2
    if isinstance(distance, (CosineSimilarity, DotProductSimilarity)):
        if distance.power != 1:
            # A power of a signed similarity does not keep its order.
            raise ValueError(f"distance: similarity power must be 1, got {distance.power}")
        return faiss.METRIC_INNER_PRODUCT
    raise ValueError(f"distance: {type(distance).__name__} is not supported; use LpDistance(p=2), "
                     "CosineSimilarity or DotProductSimilarity")

