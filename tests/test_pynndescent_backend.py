"""The real PyNNDescent cold start (``pip install "pml-ext[pynndescent]"``); skipped without the package.

Oracle: the exact k nearest neighbours by brute force (torch.cdist / inner products over all
pairs). PyNNDescent's graph is approximate, but on 400 points in 8 clustered dimensions its
descent reaches (nearly) the exact graph; the index re-scores its candidates exactly, so the
scores it returns for the neighbours it found must be the exact ones.
"""
import pytest
import torch

from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

from pml_ext import EmbeddingIndex

pytest.importorskip("pynndescent")
from pml_ext.index.pynndescent_backend import pynndescent_graph  # noqa: E402

K = 6
# The first call in a process compiles numba kernels (tens of seconds on this two-core machine).
pytestmark = pytest.mark.slow


def clustered(n: int = 400, d: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(10, d, generator=gen)
    return centres[torch.arange(n) % 10] + torch.randn(n, d, generator=gen)


def brute_force(x: torch.Tensor, k: int, inner_product: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair scored; self excluded; nearest (largest inner product) first."""
    score = x @ x.T if inner_product else -torch.cdist(x, x)
    score.fill_diagonal_(-float("inf"))
    top = score.topk(k, dim=1)
    return (top.values if inner_product else -top.values), top.indices


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact))
    return hits / exact.numel()


def test_pynndescent_graph_holds_the_brute_force_neighbours():
    x = clustered()
    graph = pynndescent_graph(x, K + 1, inner_product=False, seed=0, num_threads=1)
    assert graph.shape == (400, K + 1) and graph.dtype == torch.long
    assert 0 <= int(graph.min()) and int(graph.max()) < 400
    _, exact = brute_force(x, K, inner_product=False)
    assert recall(graph, exact) > 0.95      # its candidates may also hold the row itself


@pytest.mark.parametrize("distance", [LpDistance(), CosineSimilarity()], ids=["euclidean", "dot"])
def test_cold_pynndescent_refresh_gives_exact_scores_of_nearly_the_exact_neighbours(distance):
    x = clustered(seed=1)
    index = EmbeddingIndex("exact", distance=distance, seed=0, num_threads=1)
    values, indices = index.refresh(x, K, cold="pynndescent")
    assert index.last_refresh["mode"] == "full"
    # both distances normalise the embeddings (PML's default), so the oracle does too
    unit = torch.nn.functional.normalize(x, dim=1)
    inner = distance.is_inverted
    _, exact_i = brute_force(unit, K, inner_product=inner)
    assert recall(indices, exact_i) > 0.95
    assert not (indices == torch.arange(400).unsqueeze(1)).any()      # self excluded, as knn_all
    scores = unit @ unit.T if inner else torch.cdist(unit, unit)
    assert torch.allclose(values, scores.gather(1, indices), atol=1e-4)
    ordered = values[:, :-1] >= values[:, 1:] - 1e-6 if inner else values[:, :-1] <= values[:, 1:] + 1e-6
    assert ordered.all()                                              # nearest first
