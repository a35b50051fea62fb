"""Quality of an ``EmbeddingIndex``'s answers against exact search on a sample of its points.

Used by ``EmbeddingIndex.quality`` (the FAISS index's own search) and by
``EmbeddingIndex.refresh`` (the refreshed neighbour lists); both compare with the same
exact answer (``exact_rows``).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..utils.ann_quality import ann_quality
from ._faiss_ops import IndexedPoints, drop_self

__all__ = ["index_quality", "true_ranks", "exact_rows", "brute_force_raw", "sample_rows"]

# Rows of a full [rows, N] distance block per chunk in true_ranks (~64 MB in float32).
_BLOCK_ELEMENTS = 16_000_000
# Data rows per block of the brute-force search: [Q, 32k] score blocks (32 MB at Q=256).
_EXACT_BLOCK_COLUMNS = 32_768


def sample_rows(num_points: int, num_queries: int, seed: int) -> torch.Tensor:
    """``num_queries`` distinct rows of ``0..N-1`` drawn with ``seed``: ``LongTensor[Q]``."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_points, generator=gen)[:num_queries]


def exact_rows(points: IndexedPoints, rows: torch.Tensor, k: int) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
    """Exact ``k`` nearest other points of the indexed rows ``rows: LongTensor[Q]``.

    Returns ``((raw: Tensor[Q, k], indices: LongTensor[Q, k]), seconds)``: FAISS-style raw
    values (squared L2 or inner product) by brute force over ``points.data``, the row
    itself dropped, and the search time.
    """
    start = time.perf_counter()
    raw, found = brute_force_raw(points.data, points.data_sq, points.data[rows], k + 1, points.distance.is_inverted)
    seconds = time.perf_counter() - start
    return drop_self(raw, found, rows), seconds


def brute_force_raw(data: torch.Tensor, data_sq: torch.Tensor, q: torch.Tensor, k: int,
                    inner_product: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top ``k`` of ``q: Tensor[Q, d]`` in ``data: Tensor[N, d]`` (``data_sq = |data|^2``):
    ``(raw: Tensor[Q, k], indices: LongTensor[Q, k])``, squared L2 ascending or inner
    product descending, as FAISS's flat index gives them.

    Column blocks of one matrix product and a top-k each. Measured (2 threads, d=64, 500
    queries, same lists): FAISS's ``IndexFlat.search`` took 1.07 s at N=100k and 8.57 s at
    N=1M, this 0.33 s and 3.19 s (benchmarks/results/index_refresh.md, "exact").
    """
    k = min(k, data.shape[0])
    values, found = [], []
    for start in range(0, data.shape[0], _EXACT_BLOCK_COLUMNS):
        block = data[start:start + _EXACT_BLOCK_COLUMNS]
        if inner_product:
            scores = q @ block.T
        else:  # |x|^2 - 2<q, x>; the query's |q|^2 is added to the k kept values only
            scores = torch.addmm(data_sq[start:start + _EXACT_BLOCK_COLUMNS].unsqueeze(0), q, block.T, alpha=-2)
        top = scores.topk(min(k, block.shape[0]), dim=1, largest=inner_product)
        values.append(top.values)
        found.append(top.indices + start)
    top = torch.cat(values, dim=1).topk(k, dim=1, largest=inner_product)
    indices = torch.cat(found, dim=1).gather(1, top.indices)
    if inner_product:
        return top.values, indices
    return (top.values + (q ** 2).sum(1, keepdim=True)).clamp_(min=0), indices


def index_quality(points: IndexedPoints, search: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
                  k: int, num_queries: int, seed: int) -> dict:
    """``ann_quality``'s dict for ``search`` (FAISS-style raw ``[Q, k]`` answers of queries
    ``Tensor[Q, d]``) on ``num_queries`` rows of ``points`` drawn with ``seed``
    (arguments already checked)."""
    rows = sample_rows(points.num_points, num_queries, seed)
    q = points.data[rows]
    start = time.perf_counter()
    approx = search(q, k + 1)
    approx_time = time.perf_counter() - start
    (exact_raw, exact_idx), exact_time = exact_rows(points, rows, k)
    exact_d, exact_idx = points.finish(q, exact_raw, exact_idx, rows)
    approx_d, approx_idx = points.finish(q, *drop_self(*approx, rows), rows)
    ranks = true_ranks(points, q, rows, approx_d)
    return ann_quality(exact_d, exact_idx, approx_d, approx_idx,
                       exact_time=exact_time, approx_time=approx_time,
                       approx_ranks=ranks, num_points=points.num_points - 1,
                       is_similarity=points.distance.is_inverted)


def true_ranks(points: IndexedPoints, q: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """1-based rank ``LongTensor[Q, k]`` of each returned value among all other points.

    rank = 1 + #{o != query : o nearer than the returned object by more than a float
    tolerance}; the tolerance keeps an object from out-ranking itself when its value
    is re-computed by the matrix (``|q|^2 + |x|^2 - 2<q, x>``) form used here.
    """
    inverted = points.distance.is_inverted
    sign = -1.0 if inverted else 1.0  # rank by "smaller is nearer"
    target = sign * values
    tol = 1e-5 * target.abs().clamp(min=1.0)
    data, data_sq, num_points = points.data, points.data_sq, points.num_points
    rows_per_chunk = max(1, _BLOCK_ELEMENTS // (4 * num_points))
    top = min(num_points, max(128, 4 * values.shape[1]))
    ranks = []
    for start in range(0, q.shape[0], rows_per_chunk):
        qc, rc = q[start:start + rows_per_chunk], rows[start:start + rows_per_chunk]
        if inverted:
            full = -(qc @ data.T)
        else:
            sq = (qc ** 2).sum(1, keepdim=True) + data_sq - 2 * (qc @ data.T)
            full = sq.clamp(min=0).sqrt() ** points.distance.power
        full[torch.arange(qc.shape[0]), rc] = float("inf")
        bound = (target[start:start + rows_per_chunk] - tol[start:start + rows_per_chunk]).contiguous()
        # Returned objects are near the top of their row: the smallest `top` values
        # settle nearly every rank; rows where one does not are sorted in full.
        smallest = full.topk(top, dim=1, largest=False).values
        count = torch.searchsorted(smallest, bound)
        deep = (count >= top).any(dim=1)
        if bool(deep.any()):
            count[deep] = torch.searchsorted(full[deep].sort(dim=1).values, bound[deep])
        ranks.append(count + 1)
    return torch.cat(ranks)

