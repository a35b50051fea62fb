"""EmbeddingIndex, ann_quality and compute_embeddings.

Oracles: PML's own distance classes on the same inputs (the full matrix, then topk) for
the exact index; brute force for recall; hand-computed cases for ann_quality.
"""
import types

import faiss
import pytest
import torch
from pytorch_metric_learning.distances import (
    CosineSimilarity,
    DotProductSimilarity,
    LpDistance,
    SNRDistance,
)

import pml_ext
from pml_ext import EmbeddingIndex
from pml_ext.index import embedding_index as ei_module
from pml_ext.index import index_quality as iq_module
from pml_ext.utils import ann_quality
from pml_ext.utils.inference import compute_embeddings

DISTANCES = {
    "lp_normalized": LpDistance(),
    "lp_raw": LpDistance(normalize_embeddings=False),
    "lp_squared": LpDistance(power=2),
    "cosine": CosineSimilarity(),
    "dot_raw": DotProductSimilarity(normalize_embeddings=False),
}


def random_points(n=300, d=12, seed=0, duplicates=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    if duplicates:
        x[10] = x[20]
        x[30] = x[20]  # one point three times
        x[40:46] = x[50]  # one point seven times: more copies than k + 1
    return x


def clustered(n=2000, d=32, classes=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, d, generator=gen), dim=1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    basis = torch.linalg.qr(torch.randn(d, 8, generator=gen))[0]
    x = centres[labels] + (0.3 * torch.randn(n, 8, generator=gen)) @ basis.T + 0.02 * torch.randn(n, d, generator=gen)
    return torch.nn.functional.normalize(x, dim=1), labels


def oracle_knn(distance, queries, data, k, exclude_self):
    """PML's distance matrix in float64, self masked out by index, then top-k."""
    mat = distance(queries.double(), data.double())
    if exclude_self:
        mat.fill_diagonal_(-float("inf") if distance.is_inverted else float("inf"))
    values, indices = mat.topk(k, dim=1, largest=distance.is_inverted)
    return mat, values, indices


def assert_same_knn(distance, mat, oracle_values, oracle_indices, values, indices):
    # Values must match the oracle's sorted values; the indices must have those values in
    # the oracle's own matrix (ties, e.g. duplicated points, may be listed in any order).
    assert torch.allclose(values.double(), oracle_values, atol=2e-5)
    assert torch.allclose(mat.gather(1, indices), oracle_values, atol=2e-5)
    step = values[:, 1:] - values[:, :-1]
    assert bool((step <= 1e-6).all()) if distance.is_inverted else bool((step >= -1e-6).all())
    for row in indices:  # indices are distinct within a row
        assert row.unique().numel() == row.numel()
    # Rows without near-ties inside the top k + 1 (the boundary counts) must match exactly.
    extended = mat.topk(min(indices.shape[1] + 1, mat.shape[1]), dim=1, largest=distance.is_inverted).values
    untied = (extended[:, 1:] - extended[:, :-1]).abs().min(dim=1).values > 1e-4
    assert int(untied.sum()) > 0.8 * len(untied)
    assert torch.equal(indices[untied], oracle_indices[untied])


@pytest.mark.parametrize("name", list(DISTANCES))
def test_exact_knn_all_matches_pml_distance_topk_with_self_excluded(name):
    distance = DISTANCES[name]
    x = random_points()
    index = EmbeddingIndex("exact", distance).build(x)
    values, indices = index.knn_all(5)
    assert values.shape == indices.shape == (300, 5) and indices.dtype == torch.long
    mat, oracle_values, oracle_indices = oracle_knn(distance, x, x, 5, exclude_self=True)
    assert_same_knn(distance, mat, oracle_values, oracle_indices, values, indices)
    assert not bool((indices == torch.arange(300).unsqueeze(1)).any())


@pytest.mark.parametrize("name", list(DISTANCES))
def test_exact_search_matches_pml_distance_topk(name):
    distance = DISTANCES[name]
    x = random_points()
    queries = torch.cat([x[:5], random_points(7, seed=1, duplicates=False)])
    index = EmbeddingIndex("exact", distance).build(x)
    values, indices = index.search(queries, 6)
    mat, oracle_values, oracle_indices = oracle_knn(distance, queries, x, 6, exclude_self=False)
    assert_same_knn(distance, mat, oracle_values, oracle_indices, values, indices)
    # Without exclusion an indexed query finds itself first, at its own distance.
    if not isinstance(distance, DotProductSimilarity):
        assert torch.equal(indices[:5, 0], torch.arange(5))


def test_duplicates_are_neighbours_at_distance_zero_but_never_the_point_itself():
    x = random_points()
    index = EmbeddingIndex("exact").build(x)
    values, indices = index.knn_all(2)
    for i, others in ((10, {20, 30}), (20, {10, 30}), (30, {10, 20})):
        assert set(indices[i].tolist()) == others
        assert values[i].tolist() == [0.0, 0.0]
    copies = set(range(40, 46)) | {50}
    for i in copies:  # 7 copies, k + 1 = 3: the point itself may not be in FAISS's top 3
        assert set(indices[i].tolist()) <= copies - {i}
        assert values[i].tolist() == [0.0, 0.0]


def test_float64_input_gives_float64_distances():
    x = random_points(duplicates=False).double()
    values, _ = EmbeddingIndex("exact").build(x).knn_all(3)
    assert values.dtype == torch.float64
    mat, oracle_values, _ = oracle_knn(LpDistance(), x, x, 3, exclude_self=True)
    assert torch.allclose(values, oracle_values, atol=1e-6)
    # Half precision is indexed as float32 (FAISS's type).
    half_values, _ = EmbeddingIndex("exact").build(x.half()).knn_all(3)
    assert half_values.dtype == torch.float32
    assert torch.allclose(half_values.double(), oracle_values, atol=5e-3)


@pytest.mark.parametrize("method, params, distance", [
    ("hnsw", {}, LpDistance()), ("ivf", {}, LpDistance()), ("ivf", {"nlist": 50, "nprobe": 4}, LpDistance()),
    ("hnsw", {}, CosineSimilarity()), ("ivf", {}, DotProductSimilarity(normalize_embeddings=False)),
])
def test_approximate_methods_reach_recall_090_on_clustered_data(method, params, distance):
    x, labels = clustered()
    index = EmbeddingIndex(method, distance, **params).build(x, labels)
    assert index.resolved_method == method
    _, indices = index.knn_all(10)
    _, _, exact = oracle_knn(distance, x, x, 10, exclude_self=True)
    recall = (indices.unsqueeze(2) == exact.unsqueeze(1)).any(2).float().mean().item()
    assert recall >= 0.9
    assert not bool((indices == torch.arange(len(x)).unsqueeze(1)).any())


def test_approximate_search_fills_short_rows_exactly():
    # nprobe=1 of 64 cells over 200 points: many queries see fewer than k points, FAISS
    # pads with -1, and those rows must be answered exactly instead.
    x = random_points(200, duplicates=False)
    index = EmbeddingIndex("ivf", nlist=64, nprobe=1).build(x)
    values, indices = index.knn_all(20)
    assert bool((indices >= 0).all())
    mat = LpDistance()(x.double(), x.double())
    assert torch.allclose(mat.gather(1, indices), values.double(), atol=1e-5)
    assert not bool((indices == torch.arange(200).unsqueeze(1)).any())


def test_quality_of_exact_is_perfect_and_of_approx_matches_brute_force(monkeypatch):
    x, labels = clustered(n=2000)
    perfect = EmbeddingIndex("exact").build(x).quality(8, num_queries=100)
    assert perfect["recall"] == perfect["precision"] == 1.0
    assert perfect["relative_distance_error"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["position_error"] == pytest.approx(0.0, abs=1e-9)
    assert not perfect["position_error_is_lower_bound"]

    weak = EmbeddingIndex("hnsw", M=4, efSearch=8, seed=3).build(x)
    # A clock read at the approximate search's start and end (2 s), then the exact one's (6 s).
    clock = iter([100.0, 102.0, 110.0, 116.0])
    monkeypatch.setattr(iq_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    q = weak.quality(8, num_queries=150)
    monkeypatch.undo()
    rows = torch.randperm(2000, generator=torch.Generator().manual_seed(3))[:150]
    _, approx = weak.knn_all(8)
    _, _, exact = oracle_knn(LpDistance(), x, x, 8, exclude_self=True)
    recall = (approx[rows].unsqueeze(2) == exact[rows].unsqueeze(1)).any(2).double().mean().item()
    assert q["recall"] == pytest.approx(recall, abs=1e-9)
    assert q["recall"] < 1.0 and q["relative_distance_error"] > 0 and q["position_error"] > 0
    assert q["improvement_in_efficiency"] == 3.0  # exact time / approximate time
    assert q["num_queries"] == 150 and q["method"] == "hnsw"
    assert all(isinstance(q[key], float) for key in ("recall", "precision", "position_error"))


def test_quality_true_ranks_follow_their_definition():
    # rank(o) = 1 + #{points nearer to the query than o}, checked by a Python loop.
    x = random_points(120, duplicates=False)
    index = EmbeddingIndex("exact").build(x)
    q = index._data[:4]
    values, indices = index.search(q, 5)
    ranks = index._true_ranks(q, torch.arange(4), values)
    mat = LpDistance()(x.double(), x.double())
    for i in range(4):
        for j in range(5):
            others = [o for o in range(120) if o != i]
            expected = 1 + sum(1 for o in others if mat[i, o] < mat[i, indices[i, j]] - 1e-6)
            assert ranks[i, j].item() == expected


def test_ivf_and_single_thread_hnsw_are_deterministic_under_a_seed():
    x, _ = clustered(n=1500)
    for method, kwargs in (("ivf", {}), ("hnsw", {"num_threads": 1})):
        a = EmbeddingIndex(method, seed=5, **kwargs).build(x).knn_all(6)
        b = EmbeddingIndex(method, seed=5, **kwargs).build(x).knn_all(6)
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    c = EmbeddingIndex("ivf", seed=6, nlist=40, nprobe=1).build(x).knn_all(6)
    d = EmbeddingIndex("ivf", seed=5, nlist=40, nprobe=1).build(x).knn_all(6)
    assert not torch.equal(c[1], d[1])  # different k-means cells: different misses


def test_num_threads_is_used_and_restored(monkeypatch):
    calls = []
    original = faiss.omp_set_num_threads
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: (calls.append(n), original(n)))
    before = faiss.omp_get_max_threads()
    index = EmbeddingIndex("hnsw", num_threads=1).build(random_points())
    index.knn_all(3)
    assert calls[0::2] == [1, 1] and calls[1::2] == [before, before]
    assert faiss.omp_get_max_threads() == before


def test_auto_is_exact_below_the_threshold_and_hnsw_above(monkeypatch):
    x = random_points(duplicates=False)
    assert EmbeddingIndex().build(x).resolved_method == "exact"
    monkeypatch.setattr(ei_module, "AUTO_EXACT_MAX_POINTS", 100)
    index = EmbeddingIndex(efSearch=64).build(x)
    assert index.resolved_method == "hnsw"
    assert index.num_points == 300 and index.labels is None


def test_labels_are_kept():
    x = random_points()
    labels = torch.arange(300) % 7
    index = EmbeddingIndex("exact").build(x, labels)
    assert torch.equal(index.labels, labels)


@pytest.mark.parametrize("call, error, match", [
    (lambda i: i.knn_all(300), ValueError, "k=300"),
    (lambda i: i.knn_all(0), ValueError, "k must be >= 1"),
    (lambda i: i.knn_all(2.0), TypeError, "k must be an int"),
    (lambda i: i.search(torch.randn(2, 12), 301), ValueError, "k=301"),
    (lambda i: i.search(torch.randn(2, 5), 3), ValueError, "queries must have 12 columns"),
    (lambda i: i.search(torch.full((2, 12), float("nan")), 3), ValueError, "queries contains NaN"),
    (lambda i: i.search(torch.randn(12), 3), ValueError, "queries must be 2-D"),
    (lambda i: i.quality(3, num_queries=0), ValueError, "num_queries"),
])
def test_bad_queries_raise_clear_errors(call, error, match):
    index = EmbeddingIndex("exact").build(random_points())
    with pytest.raises(error, match=match):
        call(index)
    assert index.search(random_points(2, duplicates=False), 300)[1].shape == (2, 300)  # k = N is allowed


@pytest.mark.parametrize("embeddings, labels, error, match", [
    (torch.zeros(0, 4), None, ValueError, "embeddings is empty"),
    (torch.randn(10), None, ValueError, "embeddings must be 2-D"),
    (torch.randn(2, 3, 4), None, ValueError, "embeddings must be 2-D"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), None, ValueError, "embeddings contains NaN"),
    (torch.randint(0, 3, (5, 2)), None, TypeError, "floating-point"),
    (torch.randn(5, 2), torch.zeros(4, dtype=torch.long), ValueError, "labels has length 4"),
    ([[1.0, 2.0]], None, TypeError, "embeddings must be a torch.Tensor"),
])
def test_bad_builds_raise_clear_errors(embeddings, labels, error, match):
    with pytest.raises(error, match=match):
        EmbeddingIndex("exact").build(embeddings, labels)


def test_bad_construction_and_use_before_build_raise():
    with pytest.raises(ValueError, match="method must be one of"):
        EmbeddingIndex("annoy")
    with pytest.raises(ValueError, match=r"faiss_params \['nprobe'\]"):
        EmbeddingIndex("hnsw", nprobe=3)
    with pytest.raises(ValueError, match="p=1"):
        EmbeddingIndex(distance=LpDistance(p=1))
    with pytest.raises(ValueError, match="SNRDistance is not supported"):
        EmbeddingIndex(distance=SNRDistance())
    with pytest.raises(ValueError, match="similarity power"):
        EmbeddingIndex(distance=CosineSimilarity(power=2))
    with pytest.raises(TypeError, match="PML distance"):
        EmbeddingIndex(distance="l2")
    with pytest.raises(ValueError, match="num_threads"):
        EmbeddingIndex(num_threads=0)
    with pytest.raises(RuntimeError, match="build"):
        EmbeddingIndex().search(torch.randn(2, 3), 1)
    with pytest.raises(RuntimeError, match="build"):
        EmbeddingIndex().knn_all(1)


# ---------------------------------------------------------------- ann_quality, by hand
def test_ann_quality_one_of_k_replaced_gives_recall_k_minus_1_over_k():
    exact_i = torch.tensor([[0, 1, 2, 3]])
    approx_i = torch.tensor([[0, 1, 2, 9]])  # 3 replaced by 9: 3 of 4 found
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    q = ann_quality(d, exact_i, torch.tensor([[1.0, 2.0, 3.0, 5.0]]), approx_i, num_points=20)
    assert q["recall"] == pytest.approx(3 / 4) and q["precision"] == pytest.approx(3 / 4)
    # ED = mean(0, 0, 0, 5/4 - 1) = 0.25 / 4 = 0.0625
    assert q["relative_distance_error"] == pytest.approx(0.0625)


def test_ann_quality_hand_computed_relative_distance_error():
    # Query 1: 1.5/1 - 1 = 0.5 and 2.5/2 - 1 = 0.25; query 2: exact both times (0, 0).
    # Mean over the 4 (query, position) terms: 0.75 / 4 = 0.1875.
    exact_d = torch.tensor([[1.0, 2.0], [1.0, 3.0]])
    approx_d = torch.tensor([[1.5, 2.5], [1.0, 3.0]])
    idx = torch.tensor([[0, 1], [0, 1]])
    q = ann_quality(exact_d, idx, approx_d, torch.tensor([[2, 3], [0, 1]]))
    assert q["relative_distance_error"] == pytest.approx(0.1875)
    # Similarities: (s_N - s_A) / |s_N| = (0.8 - 0.6) / 0.8 = 0.25.
    q = ann_quality(torch.tensor([[0.8]]), torch.tensor([[0]]), torch.tensor([[0.6]]), torch.tensor([[1]]),
                    is_similarity=True)
    assert q["relative_distance_error"] == pytest.approx(0.25)
    # A duplicate found at distance 0 where the exact answer is 0 counts as no error.
    q = ann_quality(torch.tensor([[0.0, 1.0]]), torch.tensor([[4, 5]]),
                    torch.tensor([[0.0, 1.0]]), torch.tensor([[6, 5]]))
    assert q["relative_distance_error"] == 0.0


def test_ann_quality_hand_computed_position_error():
    # Exact [10, 11, 12]; approximate [10, 12, 13] with true ranks 1, 3, 5 among |X| = 10.
    # |1 - 1| + |3 - 2| + |5 - 3| = 3; mean 1; PE = 1 / 10.
    exact_i, approx_i = torch.tensor([[10, 11, 12]]), torch.tensor([[10, 12, 13]])
    d = torch.tensor([[1.0, 2.0, 3.0]])
    q = ann_quality(d, exact_i, d, approx_i, approx_ranks=torch.tensor([[1, 3, 5]]), num_points=10)
    assert q["mean_position_displacement"] == pytest.approx(1.0)
    assert q["position_error"] == pytest.approx(0.1)
    assert q["position_error_is_lower_bound"] is False
    # Without true ranks, 13 (absent from the exact list) gets rank 4: (0 + 1 + 1) / 3.
    q = ann_quality(d, exact_i, d, approx_i, num_points=10)
    assert q["mean_position_displacement"] == pytest.approx(2 / 3)
    assert q["position_error_is_lower_bound"] is True


def test_ann_quality_improvement_in_efficiency_and_missing_entries():
    d = torch.tensor([[1.0, 2.0, 3.0]])
    q = ann_quality(d, torch.tensor([[0, 1, 2]]), torch.tensor([[1.0, 2.0, float("inf")]]),
                    torch.tensor([[0, 1, -1]]), exact_time=10.0, approx_time=2.0)
    assert q["improvement_in_efficiency"] == pytest.approx(5.0)
    assert q["recall"] == pytest.approx(2 / 3)  # 2 of the 3 true neighbours
    assert q["precision"] == pytest.approx(1.0)  # both returned objects are true neighbours
    assert q["relative_distance_error"] == 0.0 and q["position_error"] is None


def test_ann_quality_rejects_bad_input():
    good_d, good_i = torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        ann_quality(good_d, torch.zeros(2, 2, dtype=torch.long), good_d, good_i)
    with pytest.raises(ValueError, match="queries"):
        ann_quality(good_d, good_i, torch.ones(3, 3), torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="exact_indices must have an integer dtype"):
        ann_quality(good_d, good_d, good_d, good_i)
    with pytest.raises(ValueError, match="approx_distances must be 2-D"):
        ann_quality(good_d, good_i, torch.ones(3), good_i)
    with pytest.raises(ValueError, match="approx_ranks"):
        ann_quality(good_d, good_i, good_d, good_i, approx_ranks=torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="approx_time"):
        ann_quality(good_d, good_i, good_d, good_i, approx_time=-1.0)


# ---------------------------------------------------------------- compute_embeddings
def test_compute_embeddings_matches_eval_forward_and_restores_train_mode():
    train, _ = pml_ext.digits_split()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 8))
    model.train()
    embeddings, labels = compute_embeddings(model, train, batch_size=100)
    assert model.training
    assert not embeddings.requires_grad
    with torch.no_grad():
        expected = model.eval()(train.data)  # dropout off: eval mode was used
    assert torch.allclose(embeddings, expected, atol=1e-6)
    assert torch.equal(labels, train.labels) and labels.shape == (len(train),)


def test_compute_embeddings_rejects_bad_arguments():
    train, _ = pml_ext.digits_split()
    model = torch.nn.Linear(64, 4)
    with pytest.raises(ValueError, match="batch_size"):
        compute_embeddings(model, train, 0)
    with pytest.raises(ValueError, match="num_workers"):
        compute_embeddings(model, train, 8, num_workers=-1)
    with pytest.raises(ValueError, match="dataset is empty"):
        compute_embeddings(model, torch.utils.data.TensorDataset(torch.zeros(0, 64), torch.zeros(0)), 8)
    with pytest.raises(TypeError, match="model"):
        compute_embeddings(lambda x: x, train, 8)
