"""PML's AccuracyCalculator plus collapse and isometry diagnostics for evaluation embeddings.

See docs/isometric_mining.md. Everything is computed in row chunks, so no N x N matrix is
ever allocated, whatever the size of the evaluation set.
"""
from __future__ import annotations

import math

import torch
from pytorch_metric_learning.distances import BaseDistance, LpDistance
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import accuracy_calculator as pml_ac

from ._isometry import dissimilarity, embedding_scale, hardest_pairs, oriented, violations
from .checks import check_positive

__all__ = ["AccuracyCalculator"]

_ISOMETRY_METRICS = ("isometry_defect", "isometry_defect_max")
_SPREAD_METRICS = ("embedding_spread", "relative_embedding_spread", "intrinsic_dimensionality")


class AccuracyCalculator(pml_ac.AccuracyCalculator):
    """PML's ``AccuracyCalculator`` with five more metrics; ``include=``/``exclude=`` and all of
    PML's metrics work as before.

    - ``isometry_defect``: the mean over queries of
      ``v_a = [max_p D(a,p) - min_n D(a,n) + margin]_+``, positives and negatives taken in
      the reference set (the query itself excluded when ``ref_includes_query``). Queries
      without a positive or a negative are skipped. Honours ``avg_of_avgs`` and
      ``return_per_class``.
    - ``isometry_defect_max``: ``max_a v_a``, the sup-norm (Hausdorff-like) distance of Xu et
      al. to the triplet-separated embeddings (per class with ``return_per_class``).
    - ``embedding_spread``: the mean pairwise distance ``mu`` of the query embeddings.
    - ``relative_embedding_spread``: ``mu`` divided by the embedding scale
      ``(2 * mean ||x||)^power`` (the distance's normalisation applied first), in [0, 1] for
      an Lp distance with ``power=1`` and unchanged when all embeddings are rescaled.
    - ``intrinsic_dimensionality``: ``rho = mu^2 / (2 sigma^2)`` of the pairwise distance
      distribution (Zezula et al. 2006, section 10.1); ``inf`` when all distances are equal
      and non-zero, ``NaN`` when all points coincide.

    The three distance-distribution metrics use the distinct pairs of a uniform sample of at
    most ``distance_sample_size`` query embeddings (all of them when the query set is not
    larger), drawn with ``seed``. The isometry defect is exact: every query against the
    whole reference set.

    Similarities (``CosineSimilarity``...) are handled as in ``IsometricHardMiner``: the
    violation uses ``S(a,n) - S(a,p)`` and the spread uses ``(S_ii + S_jj)/2 - S_ij``.

    Args:
        *args, **kwargs: PML's ``AccuracyCalculator`` arguments.
        margin: the margin of ``v_a`` (>= 0), normally the training loss's.
        distance: a PML distance; default ``LpDistance()`` (L2 on normalised embeddings, the
            default of PML's triplet losses).
        distance_sample_size: the sample size for the distance statistics (>= 2).
        chunk_elements: the largest distance block computed at once (rows x columns).
        seed: seeds the sample.
    """

    def __init__(self, *args, margin: float = 0.2, distance: BaseDistance | None = None,
                 distance_sample_size: int = 4096, chunk_elements: int = 2 ** 22, seed: int = 0, **kwargs):
        check_positive(margin, "margin", allow_zero=True)
        if distance is not None and not isinstance(distance, BaseDistance):
            raise TypeError(f"distance must be a PML BaseDistance, got {type(distance).__name__}")
        for name, value, low in (("distance_sample_size", distance_sample_size, 2),
                                 ("chunk_elements", chunk_elements, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.margin = float(margin)
        self.distance = LpDistance() if distance is None else distance
        self.distance_sample_size = distance_sample_size
        self.chunk_elements = chunk_elements
        self.seed = seed
        super().__init__(*args, **kwargs)

    # ---- metrics (PML finds them by the ``calculate_`` prefix) -------------------------

    def calculate_isometry_defect(self, query_labels, isometry_defects, **kwargs):
        v, valid = isometry_defects
        if not bool(valid.any()):
            return pml_ac.nan_accuracy(torch.unique(query_labels, dim=0), self.return_per_class)
        return pml_ac.maybe_get_avg_of_avgs(v[valid], query_labels[valid], self.avg_of_avgs, self.return_per_class)

    def calculate_isometry_defect_max(self, query_labels, isometry_defects, **kwargs):
        v, valid = isometry_defects
        if not bool(valid.any()):
            return pml_ac.nan_accuracy(torch.unique(query_labels, dim=0), self.return_per_class)
        if not self.return_per_class:
            return float(v[valid].max())
        unique = torch.unique(query_labels[valid], dim=0)
        members = c_f.torch_all_from_dim_to_end(query_labels[valid] == unique.unsqueeze(1), 2)  # [C, Nv]
        return v[valid].unsqueeze(0).masked_fill(~members, -math.inf).max(dim=1).values.tolist()

    def calculate_embedding_spread(self, distance_statistics, **kwargs):
        return distance_statistics["mean"]

    def calculate_relative_embedding_spread(self, distance_statistics, **kwargs):
        return distance_statistics["relative"]

    def calculate_intrinsic_dimensionality(self, distance_statistics, **kwargs):
        return distance_statistics["rho"]

    # ---- shared computations, once per get_accuracy call ---------------------------------

    def _get_accuracy(self, function_dict, **kwargs):
        if any(name in function_dict for name in _ISOMETRY_METRICS):
            kwargs["isometry_defects"] = self.isometry_defects(
                kwargs["query"], kwargs["query_labels"], kwargs["reference"], kwargs["reference_labels"],
                kwargs["ref_includes_query"])
        if any(name in function_dict for name in _SPREAD_METRICS):
            kwargs["distance_statistics"] = self.distance_statistics(kwargs["query"])
        return super()._get_accuracy(function_dict, **kwargs)

    @torch.no_grad()
    def isometry_defects(self, query: torch.Tensor, query_labels: torch.Tensor, reference: torch.Tensor,
                         reference_labels: torch.Tensor, ref_includes_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v [Nq], valid [Nq] bool)``: ``v_a`` of every query, computed in row chunks."""
        num_queries, num_refs = query.shape[0], reference.shape[0]
        rows = max(1, self.chunk_elements // max(num_refs, 1))
        v = torch.zeros(num_queries, dtype=torch.float64, device=query.device)
        valid = torch.zeros(num_queries, dtype=torch.bool, device=query.device)
        for start in range(0, num_queries, rows):
            stop = min(start + rows, num_queries)
            dm = oriented(self.distance(query[start:stop], reference), self.distance)
            pos = self._label_matches(query_labels[start:stop], reference_labels)
            neg = ~pos
            if ref_includes_query:
                local = torch.arange(stop - start, device=query.device)
                pos[local, local + start] = False
            pos_val, _, neg_val, _ = hardest_pairs(dm, pos, neg)
            ok = pos.any(dim=1) & neg.any(dim=1)
            v[start:stop] = violations(pos_val, neg_val, self.margin).double().masked_fill(~ok, 0.0)
            valid[start:stop] = ok
        return v, valid

    @torch.no_grad()
    def distance_statistics(self, embeddings: torch.Tensor) -> dict:
        """``{"mean", "relative", "rho", "num_pairs"}`` of the distinct pairs of a sample."""
        n = embeddings.shape[0]
        if n < 2:
            return {"mean": math.nan, "relative": math.nan, "rho": math.nan, "num_pairs": 0}
        if n > self.distance_sample_size:
            gen = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(n, generator=gen)[: self.distance_sample_size].to(embeddings.device)
            embeddings = embeddings[keep]
            n = embeddings.shape[0]
        rows = max(1, self.chunk_elements // n)
        count, mean, m2 = 0, 0.0, 0.0
        cols = torch.arange(n, device=embeddings.device)
        for start in range(0, n - 1, rows):
            stop = min(start + rows, n)
            block = embeddings[start:stop]
            d = dissimilarity(self.distance(block, embeddings), block, embeddings, self.distance)
            upper = cols[None, :] > torch.arange(start, stop, device=embeddings.device)[:, None]  # pairs i < j
            d = d[upper].double()
            if d.numel() == 0:
                continue
            # Chan et al.'s pairwise update of (count, mean, M2): stable when sigma << mu (collapse).
            c_mean = float(d.mean())
            c_m2 = float(((d - c_mean) ** 2).sum())
            c_count = d.numel()
            delta = c_mean - mean
            total = count + c_count
            mean += delta * c_count / total
            m2 += c_m2 + delta * delta * count * c_count / total
            count = total
        variance = m2 / count
        if variance > 0:
            rho = mean * mean / (2 * variance)
        else:
            rho = math.inf if mean > 0 else math.nan
        scale = float(embedding_scale(embeddings, self.distance))
        relative = mean / scale if scale > 0 else math.nan
        return {"mean": mean, "relative": relative, "rho": rho, "num_pairs": count}

    def _label_matches(self, labels: torch.Tensor, ref_labels: torch.Tensor) -> torch.Tensor:
        """``[c, R]`` bool: query label == reference label under ``label_comparison_fn``."""
        matches = self.label_comparison_fn(labels[:, None], ref_labels[None, :])
        if matches.dim() > 2:  # multi-dimensional labels: all components must agree
            matches = c_f.torch_all_from_dim_to_end(matches, 2)
        return matches.bool()
