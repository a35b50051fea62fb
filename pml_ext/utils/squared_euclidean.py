"""Map the values of a PML distance object onto squared Euclidean distances.

Smart mining's exclusion rule (Harwood et al. 2017, eq. 6) multiplies *squared*
Euclidean distances by kappa, and Kumar et al.'s global loss uses ``||a - b||^2 / 4``.
PML lets the user pick the distance object, so both need one conversion rule:

================================================  ===================================
distance                                          squared Euclidean value
================================================  ===================================
``LpDistance(p=2, power=q)`` (value ``D**q``)     ``value ** (2 / q)``
``LpDistance(p != 2, power=q)``                   ``value ** (2 / q)``: the squared
                                                  Lp distance (the rule is applied in
                                                  that norm)
``CosineSimilarity`` / normalised                 ``2 - 2 * value`` (exact on unit
``DotProductSimilarity`` (``power=1``)            vectors; same order as the values)
other non-inverted ``BaseDistance``               ``value ** (2 / power)``
un-normalised ``DotProductSimilarity``, any       ``ValueError``: not a metric, so no
similarity with ``power != 1``                    squared distance to compare
================================================  ===================================
"""
from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

__all__ = ["squared_euclidean", "pair_values", "check_rule_distance"]

# Pairs per chunk in pair_values: keeps the gathered [pairs, d] tensors near 64 MB.
_PAIR_CHUNK_ELEMENTS = 16_000_000


def check_rule_distance(distance, name: str = "distance") -> None:
    """Raise unless ``distance`` has a squared-Euclidean reading (see the module table)."""
    if not isinstance(distance, BaseDistance):
        raise TypeError(f"{name} must be a PML distance (BaseDistance), got {type(distance).__name__}")
    if distance.is_inverted:
        if not distance.normalize_embeddings:
            raise ValueError(f"{name}: an un-normalised {type(distance).__name__} is not a metric; "
                             "use LpDistance or CosineSimilarity")
        if distance.power != 1:
            raise ValueError(f"{name}: similarity power must be 1, got {distance.power}")
    elif not distance.power > 0:
        raise ValueError(f"{name}: power must be > 0, got {distance.power}")


def squared_euclidean(values: torch.Tensor, distance: BaseDistance) -> torch.Tensor:
    """Squared Euclidean distances from ``values`` (any shape) in ``distance``'s units.

    Differentiable; negative round-off (a similarity slightly above 1) is clamped to 0.
    """
    check_rule_distance(distance)
    if distance.is_inverted:
        return (2 - 2 * values).clamp_min(0)
    exponent = 2.0 / distance.power
    values = values.clamp_min(0)
    return values * values if exponent == 2.0 else values ** exponent


def pair_values(embeddings: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                distance: BaseDistance, ref_emb: torch.Tensor | None = None) -> torch.Tensor:
    """``distance`` between ``embeddings[rows[t]]`` and ``ref_emb[cols[t]]``: ``Tensor[T]``.

    The same values as ``distance(embeddings, ref_emb)[rows, cols]`` without the ``N x M``
    matrix (the difference form, like ``torch.cdist``; PML's ``pairwise_distance`` adds an
    eps). Chunked so that millions of pairs stay within a few tens of MB.
    """
    ref_emb = embeddings if ref_emb is None else ref_emb
    query = distance.maybe_normalize(embeddings)
    ref = query if ref_emb is embeddings else distance.maybe_normalize(ref_emb)
    chunk = max(1, _PAIR_CHUNK_ELEMENTS // max(1, query.shape[1]))
    out = []
    for start in range(0, rows.shape[0], chunk):
        q, r = query[rows[start:start + chunk]], ref[cols[start:start + chunk]]
        if distance.is_inverted:
            out.append((q * r).sum(dim=1))
        else:
            out.append(torch.linalg.vector_norm(q - r, ord=distance.p, dim=1))
    values = torch.cat(out) if out else query.new_zeros(0)
    if distance.power != 1:
        values = values ** distance.power
    return values
