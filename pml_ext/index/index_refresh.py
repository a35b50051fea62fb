"""``EmbeddingIndex.refresh``: this epoch's k-NN lists from last epoch's, or a full build.

The rule (docs/index.md, "Incremental refresh"):

1. No previous graph (first epoch, or a different number of points): full build.
2. ``check_queries`` rows are drawn (seed ``index.seed`` + refresh count) and searched
   exactly. If last epoch's extended lists hold less than ``min_start_recall`` of their
   new exact top-``k``, the embedding drifted too far for a descent: full build.
3. Otherwise ``refine_graph`` refreshes every list. If the refreshed lists' sampled
   recall@k is below ``min_recall``: full build.
4. A full build whose sampled recall is below ``min_recall`` (an approximate cold method
   on hard data) is kept only if the refreshed lists (computed now if step 2 skipped
   them) do no better; else the refreshed lists are returned. Its recall is remembered:
   later refreshes skip the full build while their lists do at least as well.

Whatever path was taken, the result's sampled recall@k and relative distance error
against the exact answer (``ann_quality``) are recorded in ``index.last_refresh``.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

import torch

from ..utils.ann_quality import ann_quality
from ..utils.checks import check_int, check_positive
from ..utils.distributed import all_gather_uneven, rank_and_world_size
from ._faiss_ops import IndexedPoints, check_k
from .graph_refresh import CandidateScorer, refine_graph
from .index_quality import exact_rows, sample_rows
from .pynndescent_backend import pynndescent_graph

__all__ = ["RefreshParams", "refresh_index", "previous_lists"]

COLD_METHODS = ("index", "pynndescent")


@dataclasses.dataclass(frozen=True)
class RefreshParams:
    """Settings of ``EmbeddingIndex.refresh`` (defaults measured in benchmarks/results/index_refresh.md).

    Attributes:
        extra: the kept graph has ``k + extra`` neighbours per point (default ``k``):
            last epoch's neighbours k+1..2k are where most of this epoch's new top-k
            come from.
        fan, rounds, num_random: ``refine_graph``'s second ring, descent rounds and random
            candidates per row.
        check_queries: rows searched exactly to measure drift and quality.
        min_start_recall: below this sampled recall of last epoch's lists: full build.
        min_recall: below this sampled recall of the refreshed lists: full build.
        chunk_rows: rows per chunk of the descent (default ~16 MB gathered blocks).
        cold: the full build: ``"index"`` (``build`` + ``knn_all`` with the index's
            method) or ``"pynndescent"`` (PyNNDescent's graph, re-scored exactly; needs
            ``pip install pynndescent``).
    """

    extra: int | None = None
    fan: int = 2
    rounds: int = 2
    num_random: int = 4
    check_queries: int = 256
    min_start_recall: float = 0.85
    min_recall: float = 0.9
    chunk_rows: int | None = None
    cold: str = "index"

    def __post_init__(self):
        if self.extra is not None:
            check_int(self.extra, "extra", 0)
        check_int(self.fan, "fan", 0)
        check_int(self.rounds, "rounds", 1)
        check_int(self.num_random, "num_random", 0)
        check_int(self.check_queries, "check_queries", 1)
        if self.chunk_rows is not None:
            check_int(self.chunk_rows, "chunk_rows", 1)
        for name in ("min_start_recall", "min_recall"):
            value = getattr(self, name)
            check_positive(value, name, allow_zero=True)
            if value > 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.cold not in COLD_METHODS:
            raise ValueError(f"cold must be one of {COLD_METHODS}, got {self.cold!r}")

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> "RefreshParams":
        params = dict(params or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise TypeError(f"refresh params: unknown {unknown}; expected some of {sorted(names)}")
        return cls(**params)


class RefreshedIndex(Protocol):
    """What the refresh reads from and records on ``EmbeddingIndex``."""

    points: IndexedPoints
    seed: int
    num_threads: int | None
    graph: torch.Tensor | None
    last_refresh: dict

    def build(self, embeddings: torch.Tensor, labels: torch.Tensor | None) -> Any: ...

    def knn_all(self, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def refresh_index(index: RefreshedIndex, embeddings: torch.Tensor, labels: torch.Tensor | None, k: int,
                  kept: torch.Tensor | None, settings: RefreshParams,
                  start: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``EmbeddingIndex.refresh`` once the index holds the new ``embeddings`` (see there and
    the module docstring); ``kept`` is last epoch's lists (``previous_lists``), ``start``
    the refresh's ``time.perf_counter()``."""
    points = index.points
    data = points.data
    num_points = data.shape[0]
    k = check_k(k, num_points - 1, "refresh", num_points)
    width = min(num_points - 1, k + (k if settings.extra is None else settings.extra))
    kept = _check_previous(kept, num_points, "previous")
    count = int(index.last_refresh.get("count", 0))
    rows = sample_rows(num_points, min(settings.check_queries, num_points), index.seed + count)
    (exact_raw, exact_idx), _ = exact_rows(points, rows, k)
    report: dict[str, Any] = {"count": count + 1, "previous_recall": None, "gained": [],
                              "full_recall": index.last_refresh.get("full_recall")}
    if kept is not None:
        report["previous_recall"] = _recall(kept[rows], exact_idx)
    refine = lambda: _refine(points, index.seed, kept, width, k, settings, count)  # noqa: E731
    sampled = lambda graph: _recall(graph[rows, :k], exact_idx)  # noqa: E731
    raw, graph, finished, mode, reason = _choose_lists(index, embeddings, labels, width, settings, report, refine,
                                                       sampled)
    distances, indices = raw[:, :k].clone(), graph[:, :k].clone()
    if not finished:
        distances, indices = _finish(points, distances, indices)
    exact_d, exact_i = points.finish(data[rows], exact_raw, exact_idx, rows)
    quality = ann_quality(exact_d, exact_i, distances[rows], indices[rows], is_similarity=points.distance.is_inverted)
    report.update(mode=mode, reason=reason, recall=quality["recall"],
                  relative_distance_error=quality["relative_distance_error"], check_queries=int(rows.numel()),
                  seconds=time.perf_counter() - start)
    index.graph, index.last_refresh = graph, report
    return distances, indices


def _choose_lists(index, embeddings, labels, width, settings, report, refine, sampled):
    """The drift rule: ``(values, indices, in_pml_units, mode, reason)``.

    A full build replaces the refreshed lists only when its sampled recall is higher: with
    an approximate cold method on hard data it can be far lower (measured at N=1M,
    isotropic: HNSW 0.30 in 446 s against the refresh's 0.82 in 22 s,
    benchmarks/results/index_refresh.md). Such a poor build's recall is remembered
    (``report["full_recall"]``), and no full build is tried again while the refreshed
    lists do at least as well.
    """
    refreshed, last_full = None, report["full_recall"]
    if report["previous_recall"] is None:
        reason = "no previous graph"
    elif report["previous_recall"] < settings.min_start_recall:
        reason = "previous lists too far from the new exact ones"
    else:
        refreshed = refine()
        report["gained"] = refreshed[2]
        if sampled(refreshed[1]) >= settings.min_recall:
            return refreshed[0], refreshed[1], False, "incremental", None
        reason = "refreshed lists below min_recall"
    poor_cold = last_full is not None and last_full < settings.min_recall
    if report["previous_recall"] is not None and poor_cold:
        refreshed = refreshed or refine()
        report["gained"] = refreshed[2]
        if sampled(refreshed[1]) >= last_full:
            return refreshed[0], refreshed[1], False, "incremental", f"{reason}; an earlier full build did worse"
    raw, graph, finished = _full_build(index, embeddings, labels, width, settings)
    report["full_recall"] = full_recall = sampled(graph)
    if report["previous_recall"] is None or full_recall >= settings.min_recall:
        return raw, graph, finished, "full", reason
    refreshed = refreshed or refine()  # the cold method did poorly: see whether the descent does better
    report["gained"] = refreshed[2]
    if sampled(refreshed[1]) > full_recall:
        return refreshed[0], refreshed[1], False, "incremental", f"{reason}; the full build's recall was lower"
    return raw, graph, finished, "full", reason


def _refine(points, seed, kept, width, k, settings, count):
    rank, world = rank_and_world_size()
    return refine_graph(
        points.data, kept, width, k, inner_product=points.distance.is_inverted, fan=settings.fan,
        num_random=settings.num_random, rounds=settings.rounds, seed=seed + count,
        chunk_rows=settings.chunk_rows,
        # Each rank refreshes a contiguous share of the row chunks; the chunk grid does not
        # depend on the world size, so the gathered lists equal the single-process ones.
        my_chunks=lambda n: range(rank * n // world, (rank + 1) * n // world),
        gather_rows=all_gather_uneven)


def _full_build(index, embeddings, labels, width, settings):
    """``(values, indices, in_pml_units)``, ``[N, width]`` each, from a cold start."""
    data, inverted = index.points.data, index.points.distance.is_inverted
    if settings.cold == "pynndescent":
        candidates = pynndescent_graph(data, width + 1, inverted, index.seed, index.num_threads)
        scorer, rows = CandidateScorer(data, inverted), torch.arange(data.shape[0])
        tops = [scorer.top(rows[s:s + 65536], candidates[s:s + 65536], width) for s in range(0, data.shape[0], 65536)]
        raw, arg = torch.cat([t[0] for t in tops]), torch.cat([t[1] for t in tops])
        return raw, candidates.gather(1, arg), False
    index.build(embeddings, labels)
    return (*index.knn_all(width), True)


def _finish(points: IndexedPoints, raw, indices):
    """Raw scores ``[N, k]`` -> PML units, sorted, as ``knn_all`` gives them."""
    # Rows whose top k reached a masked candidate (self or repeat; tiny N only) are
    # re-answered exactly by finish's short-row path.
    bad = ~torch.isfinite(raw)
    indices[bad] = -1
    return points.finish(points.data, raw, indices, exclude=torch.arange(points.num_points))


def previous_lists(graph: torch.Tensor | None, previous) -> torch.Tensor | None:
    """The lists a refresh starts from: ``previous`` (``LongTensor[N, k0]`` or a
    ``(distances, indices)`` pair), else the index's kept ``graph``."""
    if previous is None:
        return graph
    if isinstance(previous, (tuple, list)):
        if len(previous) != 2:
            raise ValueError("previous must be LongTensor[N, k0] or a (distances, indices) pair")
        previous = previous[1]
    return previous


def _check_previous(graph, num_points: int, name: str) -> torch.Tensor | None:
    if graph is None:
        return None
    if not torch.is_tensor(graph) or graph.dim() != 2 or graph.is_floating_point() or graph.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer LongTensor[N, k0] of neighbour indices")
    if graph.shape[0] != num_points:
        return None  # a different set of points: nothing to refresh from
    graph = graph.detach().cpu().long()
    low, high = graph.aminmax() if graph.numel() else (0, 0)
    if int(low) < 0 or int(high) >= num_points:
        raise ValueError(f"{name} holds indices outside [0, {num_points})")
    return graph


def _recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of ``exact: LongTensor[Q, k]`` present in ``found: LongTensor[Q, w]``, over all rows."""
    return float((exact.unsqueeze(2) == found.unsqueeze(1)).any(2).float().mean())
