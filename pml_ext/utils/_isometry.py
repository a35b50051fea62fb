"""Private tensor kernels shared by IsometricHardMiner and AccuracyCalculator.

Everything works in a *dissimilarity* orientation: larger = farther apart. PML's
inverted distances (similarities) are negated, so one code path serves both, and the
triplet violation has the same form as in ``TripletMarginLoss``:
``[max_p dm(a,p) - min_n dm(a,n) + margin]_+`` (for a similarity ``S`` this is
``[max_n S(a,n) - min_p S(a,p) + margin]_+``).
"""
from __future__ import annotations

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
