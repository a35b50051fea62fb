"""EmbeddingIndex.refresh: incremental k-NN refresh from last epoch's graph.

Oracles: PML's own distance matrix (full, then topk) for the exact lists and their values;
recall counted by brute force over the whole set; a world of 2 gloo processes against one.
"""
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance

from dist_utils import run_world
from knn_oracles import relative_distance_error
from pml_ext import EmbeddingIndex
from pml_ext.index.index_quality import sample_rows
from pml_ext.index.index_refresh import RefreshParams

N, D, K = 2000, 16, 8


def clustered(n=N, d=D, seed=0):
    """Unit-norm points around n/20 random centres (so k-NN lists have structure)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n // 20, d, generator=gen)
    x = centres[torch.arange(n) % centres.shape[0]] + 0.5 * torch.randn(n, d, generator=gen)
    return torch.nn.functional.normalize(x, dim=1)


def drift(x, eps, seed=1):
    """A known rotation expm(eps * skew) plus noise eps / 5 per direction, renormalised."""
    gen = torch.Generator().manual_seed(seed)
    skew = torch.randn(x.shape[1], x.shape[1], generator=gen)
    rotation = torch.linalg.matrix_exp(eps * (skew - skew.T) / 4)
    return torch.nn.functional.normalize(x @ rotation + eps / 5 * torch.randn(x.shape, generator=gen), dim=1)


def exact_knn(x, k, distance=None):
    """The oracle: PML's full distance matrix, self masked, topk."""
    distance = distance or LpDistance()
    mat = distance(x, x)
    mat.fill_diagonal_(-float("inf") if distance.is_inverted else float("inf"))
    values, indices = torch.topk(mat, k, dim=1, largest=distance.is_inverted)
    return values, indices


def recall(found, exact):
    return float((exact.unsqueeze(2) == found.unsqueeze(1)).any(2).float().mean())


def warm_index(x, **kwargs):
    index = EmbeddingIndex("exact", **kwargs)
    index.refresh(x, K)
    assert index.last_refresh["mode"] == "full" and index.last_refresh["reason"] == "no previous graph"
    assert index.graph.shape == (x.shape[0], 2 * K)
    return index


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.35])
def test_controlled_drift_recall_against_exact_search(eps):
    x = clustered()
    index = warm_index(x)
    kept = index.graph.clone()
    y = drift(x, eps)
    _, indices = index.refresh(y, K)
    report = index.last_refresh
    assert report["mode"] == "incremental", report
    exact = exact_knn(y, K)[1]
    got = recall(indices, exact)
    # The first round re-scores every kept 2K-wide list exactly, so every true
    # neighbour in it reaches the top K (only truly nearer points can outrank it), and
    # later rounds only add candidates: the refreshed recall is at least the share of the
    # new exact lists found in the kept ones (counted here over all points).
    assert got >= recall(kept, exact) - 1e-9
    # ... and strictly better than keeping last epoch's top K.
    assert got > recall(kept[:, :K], exact)
    # The recorded sampled recall is the recall on its sample (the rows drawn with seed
    # index.seed + refresh count), re-counted here by brute force.
    assert report["check_queries"] == 256
    rows = sample_rows(N, 256, index.seed + 1)
    assert report["recall"] == pytest.approx(recall(indices[rows], exact[rows]), abs=1e-6)  # float32 mean
    assert report["relative_distance_error"] == pytest.approx(
        relative_distance_error(y, indices, K, index.seed + 1), rel=1e-3, abs=1e-7)  # float32 distances
    assert report["recall"] >= 0.9  # else the rule would have fallen back (min_recall)


def test_drift_size_shows_in_previous_recall_and_gained_lists():
    x = clustered()
    reports = []
    for eps in (0.05, 0.5):
        index = warm_index(x)
        index.refresh(drift(x, eps), K, min_start_recall=0.0)  # refine even the large drift
        reports.append(index.last_refresh)
    assert reports[0]["previous_recall"] > reports[1]["previous_recall"]
    assert reports[0]["gained"][0] <= reports[1]["gained"][0]


def test_fallback_to_a_full_build_when_the_previous_graph_is_unrelated():
    x = clustered()
    index = warm_index(x)
    # Other points, in another order: last epoch's lists say nothing about their neighbours.
    unrelated = clustered(seed=7)[torch.randperm(N, generator=torch.Generator().manual_seed(7))]
    distances, indices = index.refresh(unrelated, K)
    assert index.last_refresh["mode"] == "full"
    assert index.last_refresh["reason"] == "previous lists too far from the new exact ones"
    exact_d, exact_i = exact_knn(unrelated, K)
    assert torch.equal(indices, exact_i) or recall(indices, exact_i) == 1.0
    assert torch.allclose(distances, exact_d, atol=1e-5)


def test_a_drift_the_descent_cannot_bridge_builds_cold_without_refining(monkeypatch):
    """Kept lists holding 0.5-0.85 of the new top k (real early-training drift) go
    straight to a full build: the descent's gain is too small to reach min_recall."""
    import pml_ext.index.index_refresh as index_refresh

    x = clustered()
    index = warm_index(x)
    y = drift(x, 0.5)
    refined = []
    monkeypatch.setattr(index_refresh, "refine_graph", lambda *a, **kw: refined.append(1))
    distances, indices = index.refresh(y, K)
    report = index.last_refresh
    assert 0.0 < report["previous_recall"] < 0.85 and not refined
    assert report["mode"] == "full" and report["reason"] == "previous lists too far from the new exact ones"
    assert recall(indices, exact_knn(y, K)[1]) == 1.0


def test_fallback_when_the_refreshed_lists_miss_min_recall():
    x = clustered()
    index = warm_index(x)
    index.refresh(drift(x, 0.5), K, min_start_recall=0.0, min_recall=1.0, rounds=1, fan=0, num_random=0)
    assert index.last_refresh["mode"] == "full"
    assert index.last_refresh["reason"] == "refreshed lists below min_recall"
    assert index.last_refresh["recall"] == 1.0  # the exact full build


def test_a_different_number_of_points_starts_cold():
    index = warm_index(clustered())
    index.refresh(clustered(n=1500), K)
    assert index.last_refresh["reason"] == "no previous graph"


@pytest.mark.parametrize("distance", [LpDistance(), LpDistance(power=2), LpDistance(normalize_embeddings=False),
                                      CosineSimilarity(), DotProductSimilarity(normalize_embeddings=False)])
def test_output_format_is_knn_all_format(distance):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(600, 8, generator=gen)
    index = EmbeddingIndex("exact", distance=distance)
    index.refresh(x, K)
    y = x + 0.01 * torch.randn(x.shape, generator=gen)
    distances, indices = index.refresh(y, K)
    assert index.last_refresh["mode"] == "incremental"
    assert distances.shape == indices.shape == (600, K) and indices.dtype == torch.long
    assert not (indices == torch.arange(600).unsqueeze(1)).any()                     # self excluded
    assert (torch.sort(indices, 1).values.diff(dim=1) != 0).all()                     # no repeats
    steps = distances.diff(dim=1)
    assert (steps <= 1e-6).all() if distance.is_inverted else (steps >= -1e-6).all()  # nearest first
    pml = distance(y, y).gather(1, indices)                                           # PML units
    assert torch.allclose(distances, pml, atol=1e-4)
    ref_d, ref_i = EmbeddingIndex("exact", distance=distance).build(y).knn_all(K)
    assert torch.allclose(distances, ref_d, atol=1e-4)


def test_deterministic_under_a_seed():
    x = clustered()
    y = drift(x, 0.2)
    runs = []
    for _ in range(2):
        index = warm_index(x, seed=5)
        runs.append(index.refresh(y, K))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_previous_given_as_knn_all_output():
    x = clustered()
    previous = EmbeddingIndex("exact").build(x).knn_all(K)
    index = EmbeddingIndex("exact")
    y = drift(x, 0.05)
    _, indices = index.refresh(y, K, previous=previous)
    assert index.last_refresh["mode"] == "incremental"
    exact = exact_knn(y, K)[1]
    assert recall(indices, exact) > recall(previous[1], exact)  # only K wide: the descent must add


@pytest.mark.parametrize("params, error, match", [
    ({"fan": -1}, ValueError, "fan"),
    ({"min_recall": 1.5}, ValueError, "min_recall"),
    ({"cold": "annoy"}, ValueError, "cold"),
    ({"bogus": 1}, TypeError, "bogus"),
    ({"chunk_rows": 0}, ValueError, "chunk_rows"),
])
def test_bad_params_are_named(params, error, match):
    with pytest.raises(error, match=match):
        EmbeddingIndex("exact").refresh(clustered(n=100), 4, **params)
    with pytest.raises(error, match=match):
        RefreshParams.from_dict(params)


def test_bad_previous_is_named():
    x = clustered(n=100)
    with pytest.raises(ValueError, match="previous"):
        EmbeddingIndex("exact").refresh(x, 4, previous=torch.full((100, 6), 100))
    with pytest.raises(TypeError, match="previous"):
        EmbeddingIndex("exact").refresh(x, 4, previous=torch.zeros(100, 6))


def _world_worker(rank, world_size, out_dir):
    x = clustered()
    previous = EmbeddingIndex("exact").build(x).knn_all(2 * K)[1]
    index = EmbeddingIndex("exact", seed=2)
    # Small chunks, so the two ranks really split the rows (12 chunks of 200).
    result = index.refresh(drift(x, 0.2), K, previous=previous, chunk_rows=200)
    torch.save({"result": result, "graph": index.graph, "report": index.last_refresh}, f"{out_dir}/rank{rank}.pt")


def test_world_of_two_equals_one_process(tmp_path):
    run_world(_world_worker, str(tmp_path))
    x = clustered()
    previous = EmbeddingIndex("exact").build(x).knn_all(2 * K)[1]
    index = EmbeddingIndex("exact", seed=2)
    single = index.refresh(drift(x, 0.2), K, previous=previous, chunk_rows=200)
    assert index.last_refresh["mode"] == "incremental"
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["result"][0], single[0]) and torch.equal(got["result"][1], single[1])
        assert torch.equal(got["graph"], index.graph)
        assert got["report"]["gained"] == index.last_refresh["gained"]


class _FakeNNDescent:
    """Stands in for pynndescent.NNDescent (whose numba JIT takes minutes): the exact graph,
    self first, as PyNNDescent's neighbor_graph gives it."""

    def __init__(self, data, n_neighbors, metric, random_state, n_jobs, compressed, verbose):
        x = torch.as_tensor(data)
        mat = -(x @ x.T) if metric == "dot" else torch.cdist(x, x)
        order = torch.argsort(mat, dim=1, stable=True)[:, :n_neighbors]
        self.neighbor_graph = (order.numpy(), mat.gather(1, order).numpy())


def test_cold_pynndescent_rescores_its_graph_into_knn_all_format(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "pynndescent", types.SimpleNamespace(NNDescent=_FakeNNDescent))
    x = clustered()
    index = EmbeddingIndex("exact")
    distances, indices = index.refresh(x, K, cold="pynndescent")
    assert index.last_refresh["mode"] == "full" and index._knn is None  # no FAISS index was built
    exact_d, exact_i = exact_knn(x, K)
    assert recall(indices, exact_i) == 1.0
    assert torch.allclose(distances, exact_d, atol=1e-5)


def test_cold_pynndescent_without_the_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynndescent", None)
    with pytest.raises(ImportError, match="pip install pynndescent"):
        EmbeddingIndex("exact").refresh(clustered(n=200), 4, cold="pynndescent")


@pytest.mark.parametrize("distance", [LpDistance(), DotProductSimilarity()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_brute_force_raw_equals_faiss_flat_search(distance, dtype):
    """The exact check's brute force against FAISS's flat index (shares no code)."""
    import faiss

    from pml_ext.index.index_quality import brute_force_raw

    gen = torch.Generator().manual_seed(3)
    data = torch.randn(70_000, 8, generator=gen).to(dtype)  # spans 3 column blocks
    q = torch.randn(40, 8, generator=gen).to(dtype)
    flat = faiss.IndexFlat(8, faiss.METRIC_INNER_PRODUCT if distance.is_inverted else faiss.METRIC_L2)
    flat.add(data.float().numpy())
    want_raw, want_idx = flat.search(q.float().numpy(), 12)
    raw, idx = brute_force_raw(data, (data ** 2).sum(1), q, 12, distance.is_inverted)
    assert raw.dtype == dtype and idx.dtype == torch.long
    assert torch.equal(idx, torch.as_tensor(want_idx).long())
    assert torch.allclose(raw.float(), torch.as_tensor(want_raw), rtol=1e-4, atol=1e-4)


def test_refresh_runs_with_the_index_thread_count_and_restores_it():
    import faiss

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(2)  # so that "1 inside" cannot be the setting the test found
    faiss.omp_set_num_threads(2)
    seen = []
    index = EmbeddingIndex("exact", num_threads=1)
    original = index._set_data

    def spy(*args):
        seen.append((torch.get_num_threads(), faiss.omp_get_max_threads()))
        return original(*args)

    index._set_data = spy
    try:
        index.refresh(clustered(), K)
        assert seen and set(seen) == {(1, 1)}
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def test_a_full_build_worse_than_the_refresh_is_not_kept(monkeypatch):
    """An approximate cold method can do far worse than the descent (HNSW at N=1M on the
    isotropic data); then the refreshed lists are returned, computed even though the kept
    lists were below min_start_recall."""
    import pml_ext.index.index_refresh as index_refresh

    x = clustered()
    index = warm_index(x)
    y = drift(x, 0.2)
    gen = torch.Generator().manual_seed(0)

    builds = []

    def poor_cold_build(index, embeddings, labels, width, settings):
        builds.append(1)
        lists = torch.randint(0, N, (N, width), generator=gen)
        return torch.zeros(N, width), lists, False

    monkeypatch.setattr(index_refresh, "_full_build", poor_cold_build)
    distances, indices = index.refresh(y, K, min_start_recall=1.0)
    report = index.last_refresh
    assert report["mode"] == "incremental" and report["gained"]
    assert report["reason"] == "previous lists too far from the new exact ones; the full build's recall was lower"
    assert report["recall"] >= 0.9 and recall(indices, exact_knn(y, K)[1]) >= 0.9
    assert torch.equal(index.graph[:, :K], indices) or recall(index.graph[:, :K], indices) == 1.0
    assert len(builds) == 1 and report["full_recall"] < 0.1
    # The next epoch does not pay for the poor cold method again while the refresh beats it.
    index.refresh(drift(y, 0.2, seed=2), K, min_start_recall=1.0)
    assert len(builds) == 1 and index.last_refresh["mode"] == "incremental"
    assert index.last_refresh["reason"] == "previous lists too far from the new exact ones; an earlier full build did worse"
    assert index.last_refresh["full_recall"] == report["full_recall"]
