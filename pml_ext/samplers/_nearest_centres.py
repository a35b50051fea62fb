"""The k nearest other class centres of every class: exact FAISS search or an approximate
``EmbeddingIndex``, ties by class id."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["CENTRE_SEARCHES", "check_centre_search", "nearest_centres"]

# Candidates searched beyond the k needed, so that
# centres at equal distance around the k-th are all seen and ordered by class id, whichever
# order FAISS's float32 search met them in.
_TIE_MARGIN = 8

CENTRE_SEARCHES = ("exact", "hnsw", "ivf", "auto")

# "auto" searches exactly below this many classes with a centre, with HNSW (defaults) above.
# Measured on one core for k=8 (benchmarks/bench_global_scale.py and by hand with its data):
# exact grows as C^2 and HNSW (its one-thread build dominates) as ~C. At 30k and 50k
# classes HNSW cost 1.2-1.9x the exact search (5.5 s exact at 50k); at 143k 0.55-0.75x.
# The costs cross near 75k; at equal cost exact wins (recall 1), so the switch is above.
AUTO_EXACT_MAX_CLASSES = 100_000

# Every approximate centre search builds its index on one thread: HNSW's multi-threaded
# insertion order varies from run to run, and every DDP rank must find the same near classes.
_BUILD_THREADS = 1


def check_centre_search(method: Any, params: dict[str, Any] | None) -> tuple[str, dict[str, int | None]]:
    """``(method, params)`` checked for ``nearest_centres``; errors name ``centre_search`` or
    ``centre_search_params``. ``"auto"`` takes the HNSW parameters (its approximate method)."""
    from ..index.faiss_params import check_faiss_params

    if not isinstance(method, str) or method not in CENTRE_SEARCHES:
        raise ValueError(f"centre_search must be one of {CENTRE_SEARCHES}, got {method!r}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"centre_search_params must be a dict or None, got {type(params).__name__}")
    try:
        checked = check_faiss_params("hnsw" if method == "auto" else method, params)
    except (TypeError, ValueError) as error:
        raise type(error)(f"centre_search_params (centre_search={method!r}): {error}") from None
    return method, checked


def nearest_centres(centres: torch.Tensor, has_centre: torch.Tensor, k: int, method: str = "exact",
                    params: dict[str, Any] | None = None) -> torch.Tensor:
    """Each class's ``k`` nearest other classes by Euclidean centre distance: ``LongTensor[C, k]``.

    Args:
        centres: ``Tensor[C, d]`` class centres (rows of classes without a centre are ignored).
        has_centre: ``BoolTensor[C]``, the classes with a centre.
        k: neighbours per class, ``1 <= k``.
        method: ``"exact"``, ``"hnsw"``, ``"ivf"`` or ``"auto"`` (exact below
            ``AUTO_EXACT_MAX_CLASSES`` classes with a centre, HNSW above).
        params: the approximate method's ``EmbeddingIndex`` parameters (checked by
            ``check_centre_search``).

    Rows are nearest first, equal distances in increasing class id; a class without a centre
    is nobody's neighbour and gets a row of -1, as do the slots beyond the other classes
    with a centre. The search is an ``EmbeddingIndex`` with seed 0 (an approximate one built
    on one thread), so the same centres give the same answer in every process: exact (FAISS's flat index;
    measured by ``benchmarks/bench_global_scale.py`` at 143k classes on one core: ~40 s,
    where sorting the ``[C, C]`` distance matrix row by row took ~40 min) or approximate. Either way the candidates' distances are then recomputed in
    the difference form, which is exact for equal distances, and the candidates sorted by
    (distance, class id).
    """
    num_classes = centres.shape[0]
    out = torch.full((num_classes, k), -1, dtype=torch.long)
    ids = has_centre.nonzero().flatten()  # increasing: positions order like class ids
    if ids.numel() < 2:
        return out
    if method == "auto":
        method = "exact" if ids.numel() < AUTO_EXACT_MAX_CLASSES else "hnsw"
    count = min(ids.numel() - 1, k + _TIE_MARGIN)
    points, found = _candidates(centres[ids].float(), count, method, params or {})
    found = torch.sort(found, dim=1).values  # by position = by class id, for the stable sort below
    rows = torch.arange(ids.numel()).unsqueeze(1).expand_as(found)
    dist = points.pair_values(points.data, rows.reshape(-1), found.reshape(-1)).view(found.shape)
    dist, order = torch.sort(dist, dim=1, stable=True)
    nearest = ids[found.gather(1, order[:, :k])]
    out[ids, :nearest.shape[1]] = torch.where(dist[:, :k].isinf(), -1, nearest)
    return out


def _candidates(data: torch.Tensor, count: int, method: str, params: dict):
    """``(IndexedPoints, LongTensor[n, count])``: each centre's ``count`` nearest others, exact or
    approximate (``EmbeddingIndex.knn_all``: itself excluded by index, no repeats)."""
    from pytorch_metric_learning.distances import LpDistance

    from ..index.embedding_index import EmbeddingIndex

    # An exact search returns the same whatever the thread count; an approximate build does not.
    threads = None if method == "exact" else _BUILD_THREADS
    index = EmbeddingIndex(method, distance=LpDistance(normalize_embeddings=False),
                           num_threads=threads, seed=0, **params).build(data)
    return index.points, index.knn_all(count)[1]
