"""Every epoch's all-points k-NN lists for the miners and samplers, refreshed from the last epoch's."""
from __future__ import annotations

from typing import Any

import torch

from .embedding_index import EmbeddingIndex
from .index_refresh import RefreshParams

__all__ = ["EpochKnn"]


class EpochKnn:
    """One ``EmbeddingIndex`` kept across epochs; ``knn_all`` answers each epoch's lists.

    The first call builds cold; later calls use ``EmbeddingIndex.refresh`` (its drift rule
    falls back to a full build by itself). With ``incremental=False`` every call is a cold
    ``build`` + ``knn_all``, as before the refresh existed.

    Args:
        method, distance, num_threads, seed, index_params: the ``EmbeddingIndex``'s.
        incremental: refresh from the previous epoch's graph.
        refresh_params: ``RefreshParams`` fields (checked now).

    After each ``knn_all``: ``ann_recall`` and ``ann_relative_distance_error`` (sampled
    ``ann_quality`` of the returned lists against exact search; NaN before the first
    refresh and with ``incremental=False``) and ``ann_incremental`` (1.0 when the lists were refreshed, 0.0 when built).

    The previous graph is not part of any ``state_dict``: after a resume, the first call
    builds cold again (its lists then match an uninterrupted run's up to the refresh's
    recall, recorded in ``ann_recall``).
    """

    RECORDS = ("ann_recall", "ann_relative_distance_error", "ann_incremental")

    def __init__(self, method: str = "auto", distance=None, num_threads: int | None = None, seed: int = 0,
                 index_params: dict | None = None, incremental: bool = True,
                 refresh_params: dict[str, Any] | None = None):
        if refresh_params is not None and not isinstance(refresh_params, dict):
            raise TypeError(f"refresh_params must be a dict or None, got {type(refresh_params).__name__}")
        RefreshParams.from_dict(refresh_params)
        self.incremental = bool(incremental)
        self.refresh_params = dict(refresh_params or {})
        # Checks every index argument now (no FAISS call yet).
        self.index = EmbeddingIndex(method, distance, num_threads, seed, **(index_params or {}))
        self.ann_recall = self.ann_relative_distance_error = float("nan")
        self.ann_incremental = 0.0

    def knn_all(self, embeddings: torch.Tensor, k: int,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distances, indices)``, ``[N, k]`` each, as ``EmbeddingIndex.knn_all`` gives them."""
        if not self.incremental:
            return self.index.build(embeddings, labels).knn_all(k)
        result = self.index.refresh(embeddings, k, labels=labels, **self.refresh_params)
        report = self.index.last_refresh
        self.ann_recall = float(report["recall"])
        error = report["relative_distance_error"]
        self.ann_relative_distance_error = float("nan") if error is None else float(error)
        self.ann_incremental = float(report["mode"] == "incremental")
        return result

    def records(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.RECORDS}
