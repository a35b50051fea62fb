"""Quality of an approximate k-NN answer against the exact one (Zezula et al. 2006, §9.3)."""
from __future__ import annotations

import torch

from .checks import check_finite, check_int, check_positive

__all__ = ["ann_quality"]


def ann_quality(exact_distances: torch.Tensor, exact_indices: torch.Tensor,
                approx_distances: torch.Tensor, approx_indices: torch.Tensor, *,
                exact_time: float | None = None, approx_time: float | None = None,
                approx_ranks: torch.Tensor | None = None, num_points: int | None = None,
                is_similarity: bool = False) -> dict:
    """Recall, precision, relative distance error, position error and improvement in efficiency.

    Args:
        exact_distances, exact_indices: ``Tensor[Q, K]``, ``LongTensor[Q, K]``: the exact
            answer of each query, nearest first.
        approx_distances, approx_indices: ``Tensor[Q, k]``, ``LongTensor[Q, k]``: the
            approximate answer, nearest first. Index ``-1`` (FAISS's "no result") marks a
            missing entry.
        exact_time, approx_time: seconds (or any cost) of the two searches; both given ->
            ``improvement_in_efficiency = exact_time / approx_time``.
        approx_ranks: ``LongTensor[Q, k]``, the true 1-based rank of each approximate object
            among all candidates (``OX(o)`` in Zezula et al.). Without it, ranks come from
            the exact lists: an object missing from them gets rank ``K + 1``, a lower
            bound, and ``position_error_is_lower_bound`` is True.
        num_points: ``|X|``, the number of candidates of a query; normalises the position
            error as in the book. ``None`` -> ``position_error`` is ``None``.
        is_similarity: the values are similarities (larger is nearer).

    Returns:
        dict of plain floats (``None`` where not computable):

        - ``recall``: ``|A ∩ E| / |E|`` averaged over queries (recall@K);
        - ``precision``: ``|A ∩ E| / |A|`` (equals recall when both lists are full);
        - ``relative_distance_error`` (ED): ``d(q, o_A^j) / d(q, o_N^j) - 1`` averaged over
          positions j and queries. For similarities ``(s_N^j - s_A^j) / |s_N^j|``, so it is
          also >= 0 and 0 when the answer is exact. A position with ``d_N = 0`` counts 0 if
          ``d_A = 0`` and is left out otherwise (the ratio is undefined);
        - ``mean_position_displacement``: mean of ``|OX(o_A^j) - j|`` over returned objects;
        - ``position_error``: that mean divided by ``num_points``, i.e.
          ``PE = sum_j |OX(o_j) - j| / (|A| * |X|)`` averaged over queries;
        - ``position_error_is_lower_bound``: bool;
        - ``improvement_in_efficiency``: ``exact_time / approx_time``.
    """
    for name, value, want_float in (("exact_distances", exact_distances, True),
                                    ("exact_indices", exact_indices, False),
                                    ("approx_distances", approx_distances, True),
                                    ("approx_indices", approx_indices, False)):
        _check_matrix(value, name, want_float)
    if exact_distances.shape != exact_indices.shape:
        raise ValueError(f"exact_distances {tuple(exact_distances.shape)} and exact_indices "
                         f"{tuple(exact_indices.shape)} must have the same shape")
    if approx_distances.shape != approx_indices.shape:
        raise ValueError(f"approx_distances {tuple(approx_distances.shape)} and approx_indices "
                         f"{tuple(approx_indices.shape)} must have the same shape")
    if exact_indices.shape[0] != approx_indices.shape[0]:
        raise ValueError(f"exact_indices has {exact_indices.shape[0]} queries but approx_indices "
                         f"has {approx_indices.shape[0]}")
    if approx_ranks is not None:
        _check_matrix(approx_ranks, "approx_ranks", False)
        if approx_ranks.shape != approx_indices.shape:
            raise ValueError(f"approx_ranks must have approx_indices' shape {tuple(approx_indices.shape)}, "
                             f"got {tuple(approx_ranks.shape)}")
    if num_points is not None:
        num_points = check_int(num_points, "num_points", 1)
    # Padding (index -1) may carry inf distances, as FAISS gives them; real entries may not.
    check_finite(exact_distances[exact_indices >= 0], "exact_distances")
    check_finite(approx_distances[approx_indices >= 0], "approx_distances")
    for name, value in (("exact_time", exact_time), ("approx_time", approx_time)):
        if value is not None:
            check_positive(value, name, allow_zero=True)

    exact_idx, approx_idx = exact_indices.long().cpu(), approx_indices.long().cpu()
    exact_d, approx_d = exact_distances.double().cpu(), approx_distances.double().cpu()
    num_exact = exact_idx.shape[1]
    valid = approx_idx >= 0

    # Position of each approximate object in its exact list (or -1), by a row-wise
    # binary search in the sorted exact list: O(Q k log K), no [Q, k, K] tensor.
    sorted_exact, sort_order = torch.sort(exact_idx, dim=1)
    slot = torch.searchsorted(sorted_exact, approx_idx).clamp(max=max(num_exact - 1, 0))
    found = (sorted_exact.gather(1, slot) == approx_idx) & valid if num_exact else valid & False
    exact_position = torch.where(found, sort_order.gather(1, slot), torch.full_like(slot, -1))

    hits = found.sum(1).double()
    recall = (hits / num_exact).mean() if num_exact else torch.tensor(float("nan"))
    returned = valid.sum(1).double()
    precision = torch.where(returned > 0, hits / returned.clamp(min=1), torch.zeros_like(hits)).mean()

    positions = min(num_exact, approx_idx.shape[1])
    d_n, d_a = exact_d[:, :positions], approx_d[:, :positions]
    pos_valid = valid[:, :positions]
    if is_similarity:
        errors = (d_n - d_a) / d_n.abs()
    else:
        errors = d_a / d_n - 1
    both_zero = (d_n == 0) & (d_a == 0)
    errors = torch.where(both_zero, torch.zeros_like(errors), errors)
    defined = pos_valid & torch.isfinite(errors)
    relative_error = errors[defined].mean() if bool(defined.any()) else None

    lower_bound = approx_ranks is None
    if approx_ranks is None:
        ranks = torch.where(found, exact_position + 1, torch.full_like(exact_position, num_exact + 1))
    else:
        ranks = approx_ranks.long().cpu()
    returned_position = torch.arange(1, approx_idx.shape[1] + 1).expand_as(approx_idx)
    displacement = (ranks - returned_position).abs().double()
    mean_displacement = displacement[valid].mean() if bool(valid.any()) else None

    ie = None
    if exact_time is not None and approx_time is not None and float(approx_time) > 0:
        ie = float(exact_time) / float(approx_time)
    return {
        "recall": float(recall),
        "precision": float(precision),
        "relative_distance_error": None if relative_error is None else float(relative_error),
        "mean_position_displacement": None if mean_displacement is None else float(mean_displacement),
        "position_error": (None if mean_displacement is None or num_points is None
                           else float(mean_displacement) / int(num_points)),
        "position_error_is_lower_bound": lower_bound,
        "improvement_in_efficiency": ie,
    }


def _check_matrix(value, name: str, want_float: bool) -> None:
    if not torch.is_tensor(value):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D [Q, k], got shape {tuple(value.shape)}")
    if want_float and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")

    if not want_float and (value.is_floating_point() or value.dtype == torch.bool):
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
