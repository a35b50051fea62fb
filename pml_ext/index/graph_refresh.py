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

__all__ = ["refine_graph", "candidate_scores"]

# Rows per chunk: the gathered [rows, candidates, d] block stays near 64 MB in float32.
_GATHER_ELEMENTS = 16_000_000


def candidate_scores(x: torch.Tensor, sq: torch.Tensor | None, rows: torch.Tensor,
                     candidates: torch.Tensor) -> torch.Tensor:
    """Raw scores ``Tensor[R, C]`` of ``x[rows]`` against ``x[candidates]`` (``LongTensor[R, C]``).

    Squared L2 (``sq = |x|^2`` given) or inner product (``sq=None``). The point itself and
    repeated candidates of a row get the worst score (``+inf`` / ``-inf``), so a top-k of
    the row never returns them.
    """
    q = x[rows]
    # index_select on the flat index list is ~2x faster than x[candidates] here.
    gathered = torch.index_select(x, 0, candidates.flatten()).view(*candidates.shape, x.shape[1])
    product = torch.einsum("rd,rcd->rc", q, gathered)
    if sq is None:
        scores, worst = product, -float("inf")
    else:
        scores = (sq[rows].unsqueeze(1) + sq[candidates] - 2 * product).clamp_(min=0)
        worst = float("inf")
    sorted_ids, order = torch.sort(candidates, dim=1)
    repeat = torch.zeros_like(candidates, dtype=torch.bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    bad = torch.zeros_like(repeat).scatter_(1, order, repeat) | (candidates == rows.unsqueeze(1))
    return scores.masked_fill_(bad, worst)


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
        chunk_rows: rows per chunk (default: the gathered ``[rows, candidates, d]`` block
            near 64 MB); peak memory beyond the data and graphs is a few such blocks.
        my_chunks: ``num_chunks -> range`` (step 1) of the row chunks this process
            computes (default all); with ``gather_rows`` this splits the work between ranks.
        gather_rows: concatenates every rank's ``Tensor[n_r, ...]`` rows in chunk order
            (default identity).

    Returns:
        ``(raw: Tensor[N, width], indices: LongTensor[N, width], gained: list[float])``: raw
        scores sorted nearest first, and per round the share of rows whose top ``k``
        gained a point from outside their previous list.
    """
    num_points, dim = x.shape
    sq = None if inner_product else (x ** 2).sum(1)
    fan = max(0, min(int(fan), graph.shape[1]))
    my_chunks = my_chunks or (lambda n: range(n))
    gather_rows = gather_rows or (lambda t: t)
    gen = torch.Generator().manual_seed(int(seed))
    raw, indices = None, graph
    active = torch.arange(num_points)
    changed_shares = []
    for round_ in range(max(1, int(rounds))):
        # Enough random candidates that every row has ``width`` of them, whatever ``w0``.
        num_draws = num_random + max(0, width - indices.shape[1])
        randoms = torch.randint(0, num_points, (num_points, num_draws), generator=gen)
        if active.numel() == 0:
            break
        ring = fan
        rows_per_chunk = chunk_rows or max(1, _GATHER_ELEMENTS // ((indices.shape[1] + ring * ring + num_draws) * dim))
        mine = my_chunks(-(-active.numel() // rows_per_chunk))
        lo, hi = mine.start * rows_per_chunk, min(mine.stop * rows_per_chunk, active.numel())
        # This process's rows, written in place chunk by chunk (no concatenated copies).
        out_raw = x.new_empty(max(0, hi - lo), width)
        out_idx = torch.empty(max(0, hi - lo), width, dtype=torch.long)
        out_gained = torch.empty(max(0, hi - lo), dtype=torch.uint8)
        for c in mine:
            rows = active[c * rows_per_chunk:(c + 1) * rows_per_chunk]
            near = indices[rows]
            cand = [near, randoms[rows]]
            if ring:
                cand.append(indices[near[:, :ring]][:, :, :ring].reshape(rows.numel(), -1))
            cand = torch.cat(cand, dim=1)
            scores = candidate_scores(x, sq, rows, cand)
            values, arg = torch.topk(scores, width, dim=1, largest=inner_product, sorted=True)
            part = slice(c * rows_per_chunk - lo, c * rows_per_chunk - lo + rows.numel())
            out_raw[part] = values
            out_idx[part] = cand.gather(1, arg)
            out_gained[part] = _gained(near, out_idx[part, :k])
        new_raw, new_idx = gather_rows(out_raw), gather_rows(out_idx)
        moved = gather_rows(out_gained).bool()
        if raw is None:
            raw, indices = new_raw, new_idx
        else:
            raw[active], indices[active] = new_raw, new_idx
        changed_shares.append(float(moved.float().sum()) / num_points)
        active = active[moved]
    return raw, indices, changed_shares


def _gained(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[R]``: the row's top ``new: LongTensor[R, k]`` holds a point its previous
    list ``old: LongTensor[R, w]`` did not (NN-descent's "new" flag: only such rows have
    unexplored neighbourhoods for the next round)."""
    ordered = torch.sort(old, dim=1).values
    slot = torch.searchsorted(ordered, new.contiguous()).clamp(max=ordered.shape[1] - 1)
    return (ordered.gather(1, slot) != new).any(dim=1)


