"""Refresh an all-points k-NN graph from last epoch's graph (neighbour-of-neighbour descent).

Between two epochs an embedding moves a little, so last epoch's neighbour lists are an
excellent candidate set for this epoch's. ``refine_graph`` re-scores, for every point,

* its previous (extended, ``width`` > k) list,
* the first ``fan`` neighbours of its first ``fan`` neighbours (the "second ring"),
* ``num_random`` random points,

keeps the ``width`` nearest, and repeats the descent only for the lists whose top ``k``
gained a point from outside their previous list (a list that only re-ordered has nothing
new to explore). Measured (benchmarks/results/index_refresh.md): most of this epoch's new
top-k neighbours are in last epoch's positions k+1..2k, which is why the kept list is
wider than k; the second ring adds little on clustered data and is kept small. Everything is done
in chunks of rows with gathers and batched dot products; chunk shapes depend only on the
row grid, so any set of ranks that splits the chunks between them computes bit-identical
lists (``EmbeddingIndex.refresh`` under torch.distributed).

Values are FAISS-style raw scores: squared L2 distances, or inner products for similarity
distances; ``EmbeddingIndex`` converts them into PML units.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["refine_graph", "CandidateScorer"]

# Gathered elements per chunk (~16 MB in float32). Measured at N=100k, 2 threads
# (benchmarks/results/index_refresh.md): 37-73 MB blocks made the whole descent 1.6-1.7x
# slower than 9-18 MB ones, which stay in the 32 MB L3 cache while the products read them.
_GATHER_ELEMENTS = 4_000_000


class CandidateScorer:
    """Ranks candidate neighbours of rows of ``x: Tensor[N, d]`` with one gather per candidate.

    For L2 the gathered table is ``[x_j, |x_j|^2]`` and the query ``[-2 x_i, 1]``, so one
    batched product gives ``|x_j|^2 - 2 <x_i, x_j>``, the squared distance less the row's
    constant ``|x_i|^2`` (added back by ``raw`` for the kept values only); this saves the
    separate gather of ``|x_j|^2``. For similarities the score is the inner product.
    """

    def __init__(self, x: torch.Tensor, inner_product: bool):
        self.x, self.inner_product = x, inner_product
        if inner_product:
            self.table, self.sq = x, None
        else:
            self.sq = (x ** 2).sum(1)
            self.table = torch.cat([x, self.sq.unsqueeze(1)], dim=1)
        self.worst = -float("inf") if inner_product else float("inf")

    def _queries(self, rows: torch.Tensor) -> torch.Tensor:
        q = self.x[rows]
        return q if self.inner_product else torch.cat([-2 * q, q.new_ones(q.shape[0], 1)], dim=1)

    def scores(self, rows: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Ranking scores ``Tensor[R, C]`` of ``rows: LongTensor[R]`` against ``candidates: LongTensor[R, C]``.

        The row itself and a repeated candidate (every copy after the first) get the worst
        score, so a top-k of the row never returns them.
        """
        gathered = torch.index_select(self.table, 0, candidates.flatten()).view(*candidates.shape, -1)
        # einsum, not bmm: bmm was the slower of the two for these [R, C, d+1] x [R, d+1] shapes.
        scores = torch.einsum("rd,rcd->rc", self._queries(rows), gathered)
        sorted_ids, order = torch.sort(candidates, dim=1, stable=True)
        repeat = torch.zeros_like(candidates, dtype=torch.bool)
        repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
        bad = torch.zeros_like(repeat).scatter_(1, order, repeat) | (candidates == rows.unsqueeze(1))
        return scores.masked_fill_(bad, self.worst)

    def top(self, rows: torch.Tensor, candidates: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``width`` best candidates per row: ``(raw: Tensor[R, width], arg: LongTensor[R, width])``.

        ``raw`` is FAISS's value (squared L2, or inner product) sorted nearest first; ``arg``
        indexes ``candidates``' columns.
        """
        values, arg = torch.topk(self.scores(rows, candidates), width, dim=1, largest=self.inner_product,
                                 sorted=True)
        if self.sq is not None:
            values = values.add_(self.sq[rows].unsqueeze(1)).clamp_(min=0)
        return values, arg


def refine_graph(x: torch.Tensor, graph: torch.Tensor, width: int, k: int, *, inner_product: bool,
                 fan: int = 8, num_random: int = 4, rounds: int = 3, seed: int = 0,
                 chunk_rows: int | None = None, my_chunks: Callable[[int], range] | None = None,
                 gather_rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The ``width`` nearest neighbours of every row of ``x``, by descent from ``graph``.

    Args:
        x: ``Tensor[N, d]``, the new embeddings (already normalised as the index does).
        graph: ``LongTensor[N, w0]``, last epoch's (extended) neighbour lists.
        width: neighbours kept per row (the extended list, ``k <= width < N``).
        k: the returned top ``k``; a row whose top-``k`` set did not change in a round is
            not re-scored in the next.
        inner_product: rank by largest inner product instead of smallest L2.
        fan: the second ring is ``graph[graph[i, :fan], :fan]`` (0: none).
        num_random: random candidates per row and round (they let a list escape a
            wrong neighbourhood).
        rounds: descent rounds. The first re-scores every row; later ones only the rows
            whose top ``k`` gained a point from outside their previous list.
        seed: seeds the random candidates (drawn for all N rows each round, so the draws
            do not depend on how rows are split between ranks).
        chunk_rows: rows per chunk (default: the gathered ``[rows, candidates, d + 1]``
            block near 16 MB); peak memory beyond the data and graphs is a few such blocks.
        my_chunks: ``num_chunks -> range`` (step 1) of the row chunks this process
            computes (default all); with ``gather_rows`` this splits the work between ranks.
        gather_rows: concatenates every rank's ``Tensor[n_r, ...]`` rows in chunk order
            (default identity).

    Returns:
        ``(raw: Tensor[N, width], indices: LongTensor[N, width], gained: list[float])``: raw
        scores sorted nearest first, and per round the share of rows whose top ``k``
        gained a point from outside their previous list.
    """
    num_points = x.shape[0]
    scorer = CandidateScorer(x, inner_product)
    fan = max(0, min(int(fan), graph.shape[1]))
    my_chunks = my_chunks or (lambda n: range(n))
    gather_rows = gather_rows or (lambda t: t)
    gen = torch.Generator().manual_seed(int(seed))
    raw, indices = None, graph
    active = torch.arange(num_points)
    changed_shares = []
    for _ in range(max(1, int(rounds))):
        # Enough random candidates that every row has ``width`` of them, whatever ``w0``.
        num_draws = num_random + max(0, width - indices.shape[1])
        randoms = torch.randint(0, num_points, (num_points, num_draws), generator=gen)
        if active.numel() == 0:
            break
        heads = indices[:, :fan].contiguous()  # the ring reads only these columns
        num_cands = indices.shape[1] + fan * fan + num_draws
        rows_per_chunk = chunk_rows or max(1, _GATHER_ELEMENTS // (num_cands * scorer.table.shape[1]))
        mine = my_chunks(-(-active.numel() // rows_per_chunk))
        lo, hi = mine.start * rows_per_chunk, min(mine.stop * rows_per_chunk, active.numel())
        # This process's rows, written in place chunk by chunk (no concatenated copies).
        out_raw = x.new_empty(max(0, hi - lo), width)
        out_idx = torch.empty(max(0, hi - lo), width, dtype=torch.long)
        out_gained = torch.empty(max(0, hi - lo), dtype=torch.uint8)  # gloo gathers no bool
        for c in mine:
            rows = active[c * rows_per_chunk:(c + 1) * rows_per_chunk]
            near = indices[rows]
            cand = [near, randoms[rows]]
            if fan:
                cand.append(heads[near[:, :fan]].reshape(rows.numel(), -1))
            cand = torch.cat(cand, dim=1)
            values, arg = scorer.top(rows, cand, width)
            part = slice(c * rows_per_chunk - lo, c * rows_per_chunk - lo + rows.numel())
            out_raw[part] = values
            out_idx[part] = cand.gather(1, arg)
            # NN-descent's "new" flag: the top k holds a candidate from beyond the previous
            # list (a repeat of a listed point is masked, so its first copy, in the list, wins).
            out_gained[part] = (arg[:, :k] >= near.shape[1]).any(dim=1)
        new_raw, new_idx = gather_rows(out_raw), gather_rows(out_idx)
        moved = gather_rows(out_gained).bool()
        if raw is None:
            raw, indices = new_raw, new_idx
        else:
            raw[active], indices[active] = new_raw, new_idx
        changed_shares.append(float(moved.float().sum()) / num_points)
        active = active[moved]
    return raw, indices, changed_shares
