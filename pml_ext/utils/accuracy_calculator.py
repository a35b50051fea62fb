"""PML's AccuracyCalculator plus opt-in collapse and isometry diagnostics for evaluation embeddings.

A drop-in for ``pytorch_metric_learning.utils.accuracy_calculator.AccuracyCalculator``: the
diagnostics are computed only when named in ``include=``, so by default the metrics, the
result keys and the values are PML's. See docs/isometric_mining.md. Everything is computed
in row chunks, so no N x N matrix is ever allocated, whatever the size of the evaluation set.
"""
from __future__ import annotations

import math

import torch
from pytorch_metric_learning.distances import BaseDistance, LpDistance
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import accuracy_calculator as pml_ac

from ._isometry import (class_grouped_violations, dissimilarity, embedding_scale, hardest_pairs, oriented,
                        unnormalized, violations)
from .checks import check_positive

__all__ = ["AccuracyCalculator", "DIAGNOSTIC_METRICS", "RECALL_METRICS"]

_ISOMETRY_METRICS = ("isometry_defect", "isometry_defect_max")
_SPREAD_METRICS = ("embedding_spread", "relative_embedding_spread", "intrinsic_dimensionality")
_RAW_SPREAD_METRICS = tuple("raw_" + name for name in _SPREAD_METRICS)
#: Recall@k as deep metric learning papers report it: a query scores 1 when any of its k
#: nearest references shares its label (R@1 is PML's precision_at_1).
RECALL_METRICS = ("recall_at_2", "recall_at_4", "recall_at_8")
#: The metrics this class adds to PML's; each is computed only when named in ``include=``.
DIAGNOSTIC_METRICS = _ISOMETRY_METRICS + _SPREAD_METRICS + _RAW_SPREAD_METRICS + RECALL_METRICS
# The get_accuracy kwargs each group needs (absent when _get_accuracy is called directly).
_NEEDS = {_ISOMETRY_METRICS: ("query", "query_labels", "reference", "reference_labels", "ref_includes_query"),
          _SPREAD_METRICS: ("query",), _RAW_SPREAD_METRICS: ("query",)}


class AccuracyCalculator(pml_ac.AccuracyCalculator):
    """PML's ``AccuracyCalculator`` with opt-in Recall@k and diagnostic metrics; a drop-in for PML's.

    The rule: a diagnostic is computed only when its name is passed in ``include=``, either
    the constructor's (then every ``get_accuracy`` call computes it by default) or
    ``get_accuracy``'s (that call only). With ``include=()``, the default, the metrics, the
    result keys and the values are exactly PML's, and so are ``exclude=``, ``avg_of_avgs``,
    ``return_per_class``, ``k`` (including ``"max_bin_count"``), ``knn_func``,
    ``kmeans_func``, ``label_comparison_fn`` and direct ``_get_accuracy`` calls with PML's
    arguments (knn labels, label counts, lone-query mask, no embeddings). Only a direct
    ``_get_accuracy`` call that asks for a diagnostic needs the embeddings in its kwargs
    (``query``, and for the isometry defect ``query_labels``, ``reference``,
    ``reference_labels``, ``ref_includes_query``); without them it raises ``ValueError``.

    - ``recall_at_2``, ``recall_at_4``, ``recall_at_8``: Recall@k of the deep metric
      learning papers, the share of queries with a same-label reference among their k
      nearest (lone queries skipped, as for PML's ``precision_at_1``, which is R@1).
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
    - ``raw_embedding_spread``, ``raw_relative_embedding_spread``,
      ``raw_intrinsic_dimensionality``: the same three on the embeddings as passed, i.e.
      with ``distance`` but ``normalize_embeddings=False``. A collapse toward the origin
      (all embeddings shrinking to 0) is invisible after L2 normalisation (the directions
      stay spread, ``relative_embedding_spread`` ~0.7) but ``raw_embedding_spread`` goes to
      0 (compare it with ``margin``). The relative version is scale-free, so it does not
      see a uniform shrink either; it sees a collapse onto a point away from the origin.

    The six distance-distribution metrics use the distinct pairs of a uniform sample of at
    most ``distance_sample_size`` query embeddings (all of them when the query set is not
    larger), drawn with ``seed``. The isometry defect is exact: every query against the
    whole reference set.

    Similarities (``CosineSimilarity``...) are handled as in ``IsometricHardMiner``: the
    violation uses ``S(a,n) - S(a,p)`` and the spread uses ``(S_ii + S_jj)/2 - S_ij``.

    Args:
        include, exclude: PML's metric selection (tuples or lists of names); the only way
            to turn a diagnostic on is to name it in an ``include``.
        *args, **kwargs: PML's other ``AccuracyCalculator`` arguments.
        margin: the margin of ``v_a`` (>= 0), normally the training loss's.
        distance: a PML distance; default ``LpDistance()`` (L2 on normalised embeddings, the
            default of PML's triplet losses).
        distance_sample_size: the sample size for the distance statistics (>= 2).
        chunk_elements: the largest distance block computed at once (rows x columns).
        seed: seeds the sample.
    """

    def __init__(self, include: tuple | list = (), exclude: tuple | list = (), *args, margin: float = 0.2,
                 distance: BaseDistance | None = None, distance_sample_size: int = 4096,
                 chunk_elements: int = 2 ** 22, seed: int = 0, **kwargs):
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
        # Diagnostics named in the constructor's include are part of every call's default.
        # (PML's check_primary_metrics raises TypeError for an include that is not a tuple/list.)
        self._named_diagnostics = frozenset(
            n for n in include if n in DIAGNOSTIC_METRICS) if isinstance(include, (tuple, list)) else frozenset()
        super().__init__(include, exclude, *args, **kwargs)
        if len(include) == 0:
            # Keep them available to get_accuracy(include=...), off by default (get_function_dict).
            for name in DIAGNOSTIC_METRICS:
                if name not in exclude:
                    self.original_function_dict[name] = getattr(self, self.function_keyword + name)

    def get_function_dict(self, include: tuple | list = (), exclude: tuple | list = ()) -> dict:
        """PML's selection, except that an empty ``include`` leaves out the diagnostics that
        the constructor's ``include`` did not name."""
        if len(include) == 0:
            include = [n for n in self.original_function_dict
                       if n not in DIAGNOSTIC_METRICS or n in self._named_diagnostics]
        return super().get_function_dict(include, exclude)

    # ---- metrics (PML finds them by the ``calculate_`` prefix) -------------------------

    def requires_knn(self) -> list[str]:
        return super().requires_knn() + list(RECALL_METRICS)

    def _recall_at(self, k: int, knn_labels, query_labels, not_lone_query_mask):
        if knn_labels.shape[1] < k:
            raise ValueError(f"recall_at_{k} needs at least {k} neighbours per query; the calculator's k "
                             f"gave {knn_labels.shape[1]} (pass k >= {k} or k='max_bin_count')")
        knn_labels, query_labels = pml_ac.try_getting_not_lone_labels(knn_labels, query_labels, not_lone_query_mask)
        if knn_labels is None:
            return pml_ac.zero_accuracy(query_labels, self.return_per_class)
        same = self.label_comparison_fn(query_labels[:, None], knn_labels[:, :k])
        hit = torch.any(same, dim=1).type(torch.float64)
        return pml_ac.maybe_get_avg_of_avgs(hit, query_labels, self.avg_of_avgs, self.return_per_class)

    def calculate_recall_at_2(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        return self._recall_at(2, knn_labels, query_labels, not_lone_query_mask)

    def calculate_recall_at_4(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        return self._recall_at(4, knn_labels, query_labels, not_lone_query_mask)

    def calculate_recall_at_8(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        return self._recall_at(8, knn_labels, query_labels, not_lone_query_mask)

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

    def calculate_raw_embedding_spread(self, raw_distance_statistics, **kwargs):
        return raw_distance_statistics["mean"]

    def calculate_raw_relative_embedding_spread(self, raw_distance_statistics, **kwargs):
        return raw_distance_statistics["relative"]

    def calculate_raw_intrinsic_dimensionality(self, raw_distance_statistics, **kwargs):
        return raw_distance_statistics["rho"]

    # ---- shared computations, once per get_accuracy call ---------------------------------

    def _get_accuracy(self, function_dict: dict, **kwargs) -> dict:
        """PML's ``_get_accuracy``; the diagnostics' shared inputs are computed first, and
        only when ``function_dict`` asks for a diagnostic."""
        wanted = {group: [n for n in group if n in function_dict] for group in _NEEDS}
        for group, names in wanted.items():
            missing = [k for k in _NEEDS[group] if k not in kwargs]
            if names and missing:
                raise ValueError(f"{names[0]} needs the embeddings: _get_accuracy got no {missing[0]!r} "
                                 f"argument (call get_accuracy, or pass {', '.join(_NEEDS[group])})")
        if wanted[_ISOMETRY_METRICS] and "isometry_defects" not in kwargs:
            kwargs["isometry_defects"] = self.isometry_defects(
                kwargs["query"], kwargs["query_labels"], kwargs["reference"], kwargs["reference_labels"],
                kwargs["ref_includes_query"])
        if wanted[_SPREAD_METRICS] and "distance_statistics" not in kwargs:
            kwargs["distance_statistics"] = self.distance_statistics(kwargs["query"])
        if wanted[_RAW_SPREAD_METRICS] and "raw_distance_statistics" not in kwargs:
            raw = unnormalized(self.distance)
            if raw is self.distance and "distance_statistics" in kwargs:
                kwargs["raw_distance_statistics"] = kwargs["distance_statistics"]  # nothing to undo
            else:
                kwargs["raw_distance_statistics"] = self.distance_statistics(kwargs["query"], raw)
        return super()._get_accuracy(function_dict, **kwargs)

    @torch.no_grad()
    def isometry_defects(self, query: torch.Tensor, query_labels: torch.Tensor, reference: torch.Tensor,
                         reference_labels: torch.Tensor, ref_includes_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``v_a`` of every query, computed in row chunks of the ``[Nq, Nr]`` distance matrix.

        With PML's default label comparison (equality) the references are sorted by class and
        no label mask is built; a custom ``label_comparison_fn`` uses ``[m, Nr]`` masks.

        Args:
            query: ``[Nq, d]``; query_labels: ``[Nq]`` (or ``[Nq, L]``).
            reference: ``[Nr, d]``; reference_labels: ``[Nr]`` (or ``[Nr, L]``).
            ref_includes_query: the first ``Nq`` references are the queries (each query's
                own entry is then not a positive).

        Returns:
            ``(v [Nq] float64, valid [Nq] bool)``; ``valid`` is False (and ``v`` 0) for a query
            without a positive or a negative.
        """
        raw = unnormalized(self.distance)
        # Normalise once, not once per block (the same numbers as self.distance(q_block, reference)).
        query, reference = self.distance.maybe_normalize(query), self.distance.maybe_normalize(reference)
        if self.label_comparison_fn is pml_ac.EQUALITY:  # the default: class ids, no label masks
            flat = [labels.reshape(len(labels), -1) for labels in (query_labels, reference_labels)]
            ids = torch.unique(torch.cat(flat), dim=0, return_inverse=True)[1]
            return class_grouped_violations(query, ids[: len(query)], reference, ids[len(query):],
                                            ref_includes_query, raw, self.margin, self.chunk_elements)
        num_queries, num_refs = query.shape[0], reference.shape[0]
        rows = max(1, self.chunk_elements // max(num_refs, 1))
        v = torch.zeros(num_queries, dtype=torch.float64, device=query.device)
        valid = torch.zeros(num_queries, dtype=torch.bool, device=query.device)
        for start in range(0, num_queries, rows):
            stop = min(start + rows, num_queries)
            dm = oriented(raw(query[start:stop], reference), raw)
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
    def distance_statistics(self, embeddings: torch.Tensor, distance: BaseDistance | None = None) -> dict:
        """Statistics of the pairwise dissimilarities of a seeded sample of the embeddings.

        Args:
            embeddings: ``[N, d]``; at most ``distance_sample_size`` rows are used.
            distance: default ``self.distance``; ``unnormalized(self.distance)`` for the raw_
                metrics.

        Returns:
            ``{"mean": mu, "relative": mu / scale, "rho": mu^2 / (2 sigma^2), "num_pairs"}``
            over the distinct pairs ``i < j`` of the sample (NaN and 0 pairs when N < 2).
        """
        distance = self.distance if distance is None else distance
        n = embeddings.shape[0]
        if n < 2:
            return {"mean": math.nan, "relative": math.nan, "rho": math.nan, "num_pairs": 0}
        if n > self.distance_sample_size:
            gen = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(n, generator=gen)[: self.distance_sample_size].to(embeddings.device)
            embeddings = embeddings[keep]
            n = embeddings.shape[0]
        # Normalise once, then measure the pairs i < j of each row block: its strict upper
        # triangle and the rectangle of the rows after it (n^2/2 entries in all, no mask).
        points, raw = distance.maybe_normalize(embeddings), unnormalized(distance)
        rows = max(1, self.chunk_elements // n)
        count, mean, m2 = 0, 0.0, 0.0
        for start in range(0, n - 1, rows):
            stop = min(start + rows, n)
            block, after = points[start:stop], points[stop:]
            upper = torch.triu_indices(stop - start, stop - start, offset=1, device=points.device)
            pieces = [dissimilarity(raw(block, block), block, block, raw)[upper[0], upper[1]]]
            if stop < n:
                pieces.append(dissimilarity(raw(block, after), block, after, raw).flatten())
            for d in pieces:
                if d.numel() == 0:
                    continue
                # Chan et al.'s pairwise update of (count, mean, M2): stable when sigma << mu (collapse).
                d = d.double()
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
        scale = float(embedding_scale(embeddings, distance))
        relative = mean / scale if scale > 0 else math.nan
        return {"mean": mean, "relative": relative, "rho": rho, "num_pairs": count}

    def _label_matches(self, labels: torch.Tensor, ref_labels: torch.Tensor) -> torch.Tensor:
        """``[c, R]`` bool: query label == reference label under ``label_comparison_fn``."""
        matches = self.label_comparison_fn(labels[:, None], ref_labels[None, :])
        if matches.dim() > 2:  # multi-dimensional labels: all components must agree
            matches = c_f.torch_all_from_dim_to_end(matches, 2)
        return matches.bool()
