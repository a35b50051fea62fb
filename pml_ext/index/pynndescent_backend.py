"""PyNNDescent (McInnes, pynndescent) as an optional cold start for ``EmbeddingIndex.refresh``.

Its first call in a process compiles its numba kernels (JIT warm-up, minutes on a loaded
2-core machine; benchmarks/results/index_refresh.md), so it pays only in long-lived
processes that rebuild cold more than once, or at N where its graph beats HNSW's.
"""
from __future__ import annotations

import torch

__all__ = ["pynndescent_graph"]


def pynndescent_graph(data: torch.Tensor, num_neighbors: int, inner_product: bool, seed: int,
                      num_threads: int | None) -> torch.LongTensor:
    """PyNNDescent's ``num_neighbors`` candidates of every row of ``data: Tensor[N, d]``: ``LongTensor[N, n]``.

    Inner-product data is searched with its ``"dot"`` metric, L2 with ``"euclidean"``; the
    caller re-scores the candidates exactly, so only their set matters (it may contain the
    row itself).
    """
    try:
        from pynndescent import NNDescent
    except ImportError as error:  # an optional extra
        raise ImportError("cold='pynndescent' needs the pynndescent package: pip install pynndescent") from error
    n_jobs = -1 if num_threads is None else int(num_threads)
    search = NNDescent(data.float().numpy(), n_neighbors=int(num_neighbors), metric="dot" if inner_product else "euclidean",
                       random_state=int(seed), n_jobs=n_jobs, compressed=True, verbose=False)
    indices, _ = search.neighbor_graph
    indices = torch.as_tensor(indices).long()
    # PyNNDescent pads rows it could not fill with -1: fill them with the row itself,
    # which the exact re-scoring masks out.
    own = torch.arange(indices.shape[0]).unsqueeze(1).expand_as(indices)
    return torch.where(indices < 0, own, indices)
