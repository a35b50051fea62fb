"""Every epoch's all-points k-NN lists for the miners and samplers, refreshed from the last epoch's."""
from __future__ import annotations

from typing import Any

import torch

from ..utils.checks import check_state_version
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

    ``state_dict`` holds the previous graph, the refresh count (which seeds the refresh's
    random candidates) and the last full build's sampled recall (the drift rule's memory),
    so a resumed run refreshes exactly as the uninterrupted one.
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

    def state_dict(self) -> dict:
        """The kept graph (``LongTensor[N, w]`` or ``None``), the refresh count, the last full
        build's sampled recall (or ``None``) and the records."""
        return {"version": 1, "graph": self.index.graph, "count": int(self.index.last_refresh.get("count", 0)),
                "full_recall": self.index.last_refresh.get("full_recall"), **self.records()}

    def load_state_dict(self, state: dict) -> None:
        check_state_version(state, "EpochKnn")
        graph = state.get("graph")
        if graph is not None and (not torch.is_tensor(graph) or graph.dim() != 2 or graph.is_floating_point()):
            raise ValueError("state['graph'] must be None or a LongTensor[N, w] of neighbour indices")
        count = state.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"state['count'] must be an int >= 0, got {count!r}")
        full_recall = state.get("full_recall")
        if full_recall is not None and (isinstance(full_recall, bool) or not isinstance(full_recall, (int, float))
                                        or not 0.0 <= full_recall <= 1.0):
            raise ValueError(f"state['full_recall'] must be None or a recall in [0, 1], got {full_recall!r}")
        self.index.graph = None if graph is None else graph.long().cpu()
        self.index.last_refresh = {"count": count, "full_recall": full_recall}
        for name in self.RECORDS:
            setattr(self, name, float(state.get(name, getattr(self, name))))
