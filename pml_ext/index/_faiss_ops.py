"""The indexed points and the operations every k-NN answer of ``pml_ext.index`` shares.

``EmbeddingIndex`` (FAISS search), ``index_quality`` (exact answers on a sample) and
``index_refresh`` (refreshed neighbour lists) all turn raw scores into PML distances the
same way, over the same checked data; that one rule lives here, so none of them reaches
into another's internals.
"""
from __future__ import annotations

import numpy as np
import torch
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.utils.inference import mask_reshape_knn_idx

from ..utils.checks import check_embeddings, check_int, check_labels

__all__ = ["IndexedPoints", "as_faiss_input", "check_k", "drop_self", "sort_rows"]

# Rows of gathered (query, neighbour) pairs per chunk when re-computing distances, so
# that the [rows, k, d] difference tensor stays near 64 MB in float32.
_PAIR_CHUNK_ELEMENTS = 16_000_000


class IndexedPoints:
    """Checked embeddings as every search reads them: normalised by ``distance``, on the CPU.

    Args:
        embeddings: ``Tensor[N, d]``; half precision becomes float32 (FAISS's type).
        labels: ``LongTensor[N]`` or ``None``.
        distance: the PML distance whose units answers are given in.

    Attributes:
        data: ``Tensor[N, d]``; ``data_sq``: ``Tensor[N]``, its squared row norms;
        labels: ``LongTensor[N]`` or ``None``; ``num_points``, ``dim``: ``N`` and ``d``.
    """

    def __init__(self, embeddings: torch.Tensor, labels: torch.Tensor | None, distance: BaseDistance):
        check_embeddings(embeddings, "embeddings")
        num_points, dim = embeddings.shape
        if labels is not None:
            check_labels(labels, num_points)
        data = embeddings.detach().cpu()
        if data.dtype not in (torch.float32, torch.float64):
            data = data.float()  # half precision: FAISS and the distance checks need float32
        self.distance = distance
        self.data = distance.maybe_normalize(data)
        self.data_sq = (self.data ** 2).sum(1)
        self.num_points, self.dim = num_points, dim
        self.labels = None if labels is None else labels.detach().cpu().long()

    def finish(self, q: torch.Tensor, raw: torch.Tensor, indices: torch.Tensor,
               exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """FAISS-style ``(raw: Tensor[Q, k], indices: LongTensor[Q, k])`` of queries
        ``q: Tensor[Q, d]`` -> distances in PML units, sorted nearest first.

        ``exclude: LongTensor[Q]`` is each query's own row (``None``: queries are not
        indexed points), kept out of rows that must be answered again."""
        recompute = torch.zeros(indices.shape, dtype=torch.bool)
        # Approximate indices pad with -1 when a query reaches fewer than k points;
        # those (rare) rows are answered exactly so every row holds k real neighbours.
        short = (indices < 0).any(dim=1).nonzero().flatten()
        if short.numel() > 0:
            indices[short] = self.brute_force(q[short], indices.shape[1],
                                              None if exclude is None else exclude[short])
            recompute[short] = True
        inverted = self.distance.is_inverted
        if self.data.dtype != torch.float32:
            recompute[:] = True  # FAISS works in float32: give float64 input float64 values
        elif not inverted:
            # FAISS's L2 is |q|^2 + |x|^2 - 2<q, x> in float32: near 0 (duplicates) the
            # cancellation leaves ~1e-7 * scale, i.e. distances of ~1e-3 instead of 0. Only
            # there is the difference form re-computed; elsewhere FAISS's value is exact enough.
            scale = (q ** 2).sum(1, keepdim=True) + self.data_sq[indices.clamp(min=0)]
            recompute |= raw < 1e-3 * scale
        values = raw.to(self.data.dtype)
        if not inverted:
            values = values.clamp(min=0).sqrt()
        rows, cols = recompute.nonzero(as_tuple=True)
        if rows.numel() > 0:
            values[rows, cols] = self.pair_values(q, rows, indices[rows, cols])
        if not inverted and self.distance.power != 1:
            values = values ** self.distance.power
        return sort_rows(values, indices, descending=inverted)

    def pair_values(self, q: torch.Tensor, q_rows: torch.Tensor, data_rows: torch.Tensor) -> torch.Tensor:
        """L2 distance (or inner product) of ``q[q_rows[i]]`` and ``data[data_rows[i]]``: ``Tensor[P]``.

        Gathered in chunks, so P pairs never materialise a ``[P, d]`` copy at once.
        """
        pairs_per_chunk = max(1, _PAIR_CHUNK_ELEMENTS // max(1, self.dim))
        out = []
        for start in range(0, q_rows.shape[0], pairs_per_chunk):
            a = q[q_rows[start:start + pairs_per_chunk]]
            b = self.data[data_rows[start:start + pairs_per_chunk]]
            out.append((a * b).sum(-1) if self.distance.is_inverted else (a - b).norm(dim=-1))
        return torch.cat(out)

    def brute_force(self, q: torch.Tensor, k: int, exclude: torch.Tensor | None) -> torch.Tensor:
        """Exact top-``k`` indices ``LongTensor[Q, k]`` by a full distance row per query."""
        if self.distance.is_inverted:
            scores = q @ self.data.T
        else:
            scores = -torch.cdist(q, self.data)
        if exclude is not None:
            scores[torch.arange(q.shape[0]), exclude] = -float("inf")
        return scores.topk(k, dim=1).indices


def sort_rows(values: torch.Tensor, indices: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``values: Tensor[Q, k]`` (and ``indices``) sorted, in place, by a stable sort.

    Only rows out of order are sorted (FAISS's and the refresh's rows already are, but for
    re-computed entries): sorting all of them cost ~0.6 GB of temporaries at N=1M.
    """
    step = values[:, 1:] - values[:, :-1]
    rows = ((step > 0) if descending else (step < 0)).any(dim=1).nonzero().flatten()
    if rows.numel() > 0:
        order = torch.sort(values[rows], dim=1, descending=descending, stable=True).indices
        values[rows] = values[rows].gather(1, order)
        indices[rows] = indices[rows].gather(1, order)
    return values, indices


def drop_self(raw: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FAISS's ``[Q, k+1]`` answer -> ``[Q, k]`` without each query's own index ``rows[i]``.

    PML's ``return_results`` rule, for queries that are any indexed rows (not only
    ``0..Q-1``): drop the own index where it was found; else the (k+1)-th hit, since
    then all k+1 hits are other points at least as near as the query itself.
    """
    match = indices == rows.unsqueeze(1)
    match[~match.any(dim=1), -1] = True
    return mask_reshape_knn_idx(raw, match), mask_reshape_knn_idx(indices, match)


def check_k(k, upper: int, where: str, num_points: int) -> int:
    """``k`` as an int in ``[1, upper]``; the error names ``where`` and the rule broken."""
    k = check_int(k, "k", 1)
    if k > upper:
        rule = "k < N (the point itself is excluded)" if where != "search" else "k <= N"
        raise ValueError(f"k={k} is too large for {where} over N={num_points} indexed points: need {rule}")
    return int(k)


def as_faiss_input(x: torch.Tensor) -> np.ndarray:
    """``x: Tensor[Q, d]`` as the contiguous float32 array FAISS reads."""
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
