"""Private tensor kernels shared by IsometricHardMiner and AccuracyCalculator.

Everything works in a *dissimilarity* orientation: larger = farther apart. PML's
inverted distances (similarities) are negated, so one code path serves both, and the
triplet violation has the same form as in ``TripletMarginLoss``:
``[max_p dm(a,p) - min_n dm(a,n) + margin]_+`` (for a similarity ``S`` this is
``[max_n S(a,n) - min_p S(a,p) + margin]_+``).
"""
from __future__ import annotations

import copy

import torch
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.utils import common_functions as c_f


def oriented(mat: torch.Tensor, distance: BaseDistance) -> torch.Tensor:
    """``mat: [M, R]`` from ``distance`` turned into "larger = farther" form."""
    return -mat if distance.is_inverted else mat


def hardest_pairs(dm: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor):
    """Per row, the farthest positive and the closest negative.

    Args:
        dm: ``[M, R]`` oriented dissimilarities.
        pos, neg: ``[M, R]`` bool masks.

    Returns:
        ``(pos_val [M], pos_idx [M], neg_val [M], neg_idx [M])``; rows without a
        positive (negative) hold ``-inf`` (``+inf``) values.
    """
    pos_val, pos_idx = dm.masked_fill(~pos, c_f.neg_inf(dm.dtype)).max(dim=1)
    neg_val, neg_idx = dm.masked_fill(~neg, c_f.pos_inf(dm.dtype)).min(dim=1)
    return pos_val, pos_idx, neg_val, neg_idx


def violations(pos_val: torch.Tensor, neg_val: torch.Tensor, margin: float) -> torch.Tensor:
    """``v_a = [max_p dm(a,p) - min_n dm(a,n) + margin]_+`` for each row: ``[M]``.

    Rows without a positive or a negative must be dropped by the caller (they hold inf/NaN).
    """
    return (pos_val - neg_val + margin).clamp(min=0)


def self_similarity(emb: torch.Tensor, distance: BaseDistance) -> torch.Tensor:
    """``S(x_i, x_i)`` for every row of ``emb: [N, d]`` under an inverted ``distance``: ``[N]``."""
    normed = distance.maybe_normalize(emb)
    s = distance.pairwise_distance(normed, normed)
    return s ** distance.power if distance.power != 1 else s


def dissimilarity(mat: torch.Tensor, query: torch.Tensor, ref: torch.Tensor,
                  distance: BaseDistance) -> torch.Tensor:
    """Pairwise dissimilarities ``[M, R]`` that are 0 for identical points, for spread statistics.

    A distance already is one. For a similarity ``S`` we use ``(S_ii + S_jj)/2 - S_ij``:
    ``1 - cos`` for ``CosineSimilarity``, ``||x_i - x_j||^2 / 2`` for ``DotProductSimilarity``,
    so the numbers stay in the units the margin is expressed in.
    """
    if not distance.is_inverted:
        return mat
    sq = self_similarity(query, distance)
    sr = self_similarity(ref, distance)
    return (sq[:, None] + sr[None, :]) / 2 - mat


def embedding_scale(emb: torch.Tensor, distance: BaseDistance) -> torch.Tensor:
    """The largest dissimilarity the typical pair could have: ``[]`` (0-d tensor).

    For an Lp distance it is ``(2 * mean ||x||)^power`` (the triangle inequality bounds
    ``||x_i - x_j||`` by ``||x_i|| + ||x_j||``), on the embeddings as the distance sees them
    (normalised or not). For a similarity it is ``2 * mean S_ii`` (the bound of
    ``(S_ii + S_jj)/2 - S_ij`` by Cauchy-Schwarz).
    """
    if distance.is_inverted:
        return 2 * self_similarity(emb, distance).mean()
    norms = distance.get_norm(distance.maybe_normalize(emb))
    return (2 * norms.mean()) ** distance.power


def unnormalized(distance: BaseDistance) -> BaseDistance:
    """``distance`` measured on the embeddings as passed (``normalize_embeddings=False``).

    Returns ``distance`` itself when it does not normalise, else a copy with the same
    ``p``, ``power`` and orientation; ``distance`` is left unchanged.
    """
    if not distance.normalize_embeddings:
        return distance
    raw = copy.deepcopy(distance)
    raw.normalize_embeddings = False
    return raw


def class_grouped_violations(query: torch.Tensor, query_ids: torch.Tensor, reference: torch.Tensor,
                             reference_ids: torch.Tensor, ref_includes_query: bool, distance: BaseDistance,
                             margin: float, chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``v_a`` of every query when "same label" is equality of class ids: no ``[M, R]`` masks.

    The references are sorted by class, so a query's positives are one column range
    ``[lo, hi)`` and its negatives the columns outside it; queries are taken class by
    class, in blocks of at most ``chunk_elements`` distances.

    Args:
        query: ``[Nq, d]``; reference: ``[Nr, d]`` (already normalised if ``distance`` should).
        query_ids, reference_ids: ``[Nq]``, ``[Nr]`` int64 class ids (equal id = same label).
        ref_includes_query: reference ``a`` is query ``a`` for ``a < Nq`` (not its own positive).

    Returns:
        ``(v [Nq] float64, valid [Nq] bool)``; ``valid`` is False (and ``v`` 0) for a query
        without a positive or a negative.
    """
    num_queries, num_refs = query.shape[0], reference.shape[0]
    device = query.device
    v = torch.zeros(num_queries, dtype=torch.float64, device=device)
    valid = torch.zeros(num_queries, dtype=torch.bool, device=device)
    num_classes = int(max(query_ids.max(), reference_ids.max())) + 1 if num_queries and num_refs else 0
    ref_order = torch.argsort(reference_ids, stable=True)
    reference = reference[ref_order]
    position = torch.empty_like(ref_order)
    position[ref_order] = torch.arange(num_refs, device=device)  # sorted column of reference j
    ends = torch.cumsum(torch.bincount(reference_ids, minlength=num_classes), 0).tolist()
    query_order = torch.argsort(query_ids, stable=True)
    query_counts = torch.bincount(query_ids, minlength=num_classes).tolist()
    rows = max(1, chunk_elements // max(num_refs, 1))
    first = 0
    for cls, count in enumerate(query_counts):
        lo, hi = (ends[cls - 1] if cls else 0), ends[cls]
        members, first = query_order[first:first + count], first + count
        num_pos = hi - lo - (1 if ref_includes_query else 0)
        if count == 0 or num_pos <= 0 or hi - lo == num_refs:
            continue  # no positive, or no negative: v stays 0, valid False
        for start in range(0, count, rows):
            idx = members[start:start + rows]
            dm = oriented(distance(query[idx], reference), distance)  # [m, Nr], columns by class
            pos = dm[:, lo:hi]
            if ref_includes_query:
                pos[torch.arange(len(idx), device=device), position[idx] - lo] = c_f.neg_inf(dm.dtype)
            parts = [dm[:, cols].amin(dim=1) for cols in (slice(0, lo), slice(hi, num_refs)) if dm[:, cols].shape[1]]
            neg = parts[0] if len(parts) == 1 else torch.minimum(*parts)
            v[idx] = violations(pos.amax(dim=1), neg, margin).double()
            valid[idx] = True
    return v, valid
