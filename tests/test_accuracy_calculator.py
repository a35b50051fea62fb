"""pml_ext.AccuracyCalculator (issue 6): isometry and collapse diagnostics next to PML's metrics.

Oracles: brute-force loops over queries from the formula of v_a (docs/isometric_mining.md),
numpy pairwise distances for the distance distribution (section 4), PML's own
AccuracyCalculator for PML's metrics.
"""
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator as PMLAccuracyCalculator

from pml_ext.utils.accuracy_calculator import AccuracyCalculator

CPU = torch.device("cpu")
RAW = LpDistance(normalize_embeddings=False)
OURS = ("isometry_defect", "isometry_defect_max", "embedding_spread", "relative_embedding_spread",
        "intrinsic_dimensionality")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small blocks: a second thread only adds contention on shared cores
    yield
    torch.set_num_threads(before)


def calc(**kwargs):
    kwargs.setdefault("device", CPU)
    return AccuracyCalculator(**kwargs)


def brute_force_defects(query, q_labels, ref, r_labels, margin, ref_includes_query, similarity=False):
    """{query index: v_a} over queries with a positive and a negative, one query at a time."""
    q = torch.nn.functional.normalize(query.double(), dim=1)
    r = torch.nn.functional.normalize(ref.double(), dim=1)
    out = {}
    for a in range(len(q)):
        pos = [j for j in range(len(r)) if r_labels[j] == q_labels[a] and not (ref_includes_query and j == a)]
        neg = [j for j in range(len(r)) if r_labels[j] != q_labels[a]]
        if not pos or not neg:
            continue
        if similarity:
            s = [float(q[a] @ r[j]) for j in range(len(r))]
            out[a] = max(0.0, max(s[j] for j in neg) - min(s[j] for j in pos) + margin)
        else:
            d = [float(torch.linalg.norm(q[a] - r[j])) for j in range(len(r))]
            out[a] = max(0.0, max(d[j] for j in pos) - min(d[j] for j in neg) + margin)
    return out


@pytest.mark.parametrize("similarity", [False, True])
def test_isometry_defect_matches_a_loop_over_queries_in_many_chunks(similarity):
    gen = torch.Generator().manual_seed(0)
    x, labels = torch.randn(37, 4, generator=gen), torch.randint(0, 3, (37,), generator=gen)
    labels[5] = 7  # a lone query: skipped
    margin = 0.3
    distance = CosineSimilarity() if similarity else LpDistance()
    # chunk_elements=100 with 37 references: 2 query rows per block, 19 blocks.
    out = calc(include=("isometry_defect", "isometry_defect_max"), margin=margin, distance=distance,
               chunk_elements=100).get_accuracy(x, labels)
    v = brute_force_defects(x, labels, x, labels, margin, True, similarity)
    assert 5 not in v and len(v) == 36
    assert out["isometry_defect"] == pytest.approx(sum(v.values()) / len(v), abs=1e-5)
    assert out["isometry_defect_max"] == pytest.approx(max(v.values()), abs=1e-5)


def test_isometry_defect_with_a_separate_reference_set_and_per_class():
    gen = torch.Generator().manual_seed(1)
    q, ql = torch.randn(20, 3, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    r, rl = torch.randn(30, 3, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    v = brute_force_defects(q, ql, r, rl, 0.2, False)
    per_class = calc(include=("isometry_defect", "isometry_defect_max"), return_per_class=True,
                     chunk_elements=64).get_accuracy(q, ql, r, rl)
    classes = sorted({int(ql[a]) for a in v})
    expected_mean = [np.mean([v[a] for a in v if ql[a] == c]) for c in classes]
    expected_max = [max(v[a] for a in v if ql[a] == c) for c in classes]
    assert per_class["isometry_defect"] == pytest.approx(expected_mean, abs=1e-5)
    assert per_class["isometry_defect_max"] == pytest.approx(expected_max, abs=1e-5)
    avg = calc(include=("isometry_defect",), avg_of_avgs=True).get_accuracy(q, ql, r, rl)
    assert avg["isometry_defect"] == pytest.approx(np.mean(expected_mean), abs=1e-5)



@pytest.mark.parametrize("layout", ["self", "separate", "ref_starts_with_queries"])
@pytest.mark.parametrize("multi_dim", [False, True])
def test_class_sorted_defects_equal_the_masked_path_and_the_loop(layout, multi_dim):
    """PML's default label equality takes the class-sorted path (no masks); a custom
    label_comparison_fn takes the masked one: same v_a, same skipped queries."""
    gen = torch.Generator().manual_seed(7)
    x, labels = torch.randn(50, 3, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    labels[:3] = torch.tensor([9, 8, 8])  # a singleton class and a pair
    q, ql, r, rl, ref_includes_query = x[:20], labels[:20], x[20:], labels[20:], False
    if layout == "self":
        r, rl, ref_includes_query = q, ql, True
    elif layout == "ref_starts_with_queries":
        r, rl, ref_includes_query = x, labels, True
    if multi_dim:  # [N, 2] labels: same label = both components equal
        ql, rl = torch.stack([ql, ql % 2], dim=1), torch.stack([rl, rl % 2], dim=1)
    grouped = calc(chunk_elements=64).isometry_defects(q, ql.float(), r, rl.float(), ref_includes_query)
    masked = calc(chunk_elements=64, label_comparison_fn=lambda a, b: a == b, exclude=("NMI", "AMI")
                  ).isometry_defects(q, ql.float(), r, rl.float(), ref_includes_query)
    assert torch.equal(grouped[1], masked[1]) and torch.allclose(grouped[0], masked[0], atol=1e-6)
    loop = brute_force_defects(q, ql[:, 0] if multi_dim else ql, r, rl[:, 0] if multi_dim else rl, 0.2,
                               ref_includes_query)
    assert sorted(loop) == torch.nonzero(grouped[1]).flatten().tolist()
    assert grouped[0][grouped[1]].tolist() == pytest.approx([loop[a] for a in sorted(loop)], abs=1e-5)


def numpy_distance_statistics(x):
    x = np.asarray(x, dtype=np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))[np.triu_indices(len(x), k=1)]
    mu, var = d.mean(), d.var()
    return mu, mu ** 2 / (2 * var), mu / (2 * np.linalg.norm(x, axis=1).mean())


def test_intrinsic_dimensionality_of_a_uniform_cube_grows_with_d_and_matches_numpy():
    rng = np.random.default_rng(0)
    rhos = []
    for d in (1, 2, 4, 8, 16):
        x = rng.random((150, d))
        out = calc(include=("embedding_spread", "relative_embedding_spread", "intrinsic_dimensionality"),
                   distance=RAW, chunk_elements=1000).get_accuracy(torch.tensor(x, dtype=torch.float32),
                                                                   torch.zeros(150))
        mu, rho, relative = numpy_distance_statistics(np.float32(x))
        assert out["embedding_spread"] == pytest.approx(mu, rel=1e-4)
        assert out["intrinsic_dimensionality"] == pytest.approx(rho, rel=1e-3)
        assert out["relative_embedding_spread"] == pytest.approx(relative, rel=1e-4)
        rhos.append(out["intrinsic_dimensionality"])
    assert rhos == sorted(rhos) and rhos[-1] > 8 * rhos[0]


def test_collapsed_set_has_spread_near_zero_and_a_spread_set_does_not():
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(200) % 5
    collapsed = torch.randn(1, 8, generator=gen) + 1e-4 * torch.randn(200, 8, generator=gen)
    spread = torch.randn(200, 8, generator=gen)
    metrics = ("embedding_spread", "relative_embedding_spread")
    c = calc(include=metrics).get_accuracy(collapsed, labels)
    s = calc(include=metrics).get_accuracy(spread, labels)
    # Normalised embeddings within ~1e-4 of one point: pairwise distances of order 1e-4.
    assert c["embedding_spread"] < 1e-3 and c["relative_embedding_spread"] < 1e-3
    # Gaussian directions in 8-d: mean chord ~ sqrt(2), relative ~ sqrt(2)/2.
    assert s["embedding_spread"] > 1.2 and s["relative_embedding_spread"] > 0.6


def test_identical_points_give_nan_dimensionality_and_zero_spread():
    out = calc(include=("embedding_spread", "intrinsic_dimensionality"), distance=RAW).get_accuracy(
        torch.ones(10, 3), torch.arange(10) % 2)
    assert out["embedding_spread"] == 0.0 and math.isnan(out["intrinsic_dimensionality"])


def test_large_sets_use_a_seeded_sample_and_never_an_n_by_n_block():
    class RecordingDistance(LpDistance):
        largest = 0

        def forward(self, query, ref=None):
            mat = super().forward(query, ref)
            RecordingDistance.largest = max(RecordingDistance.largest, mat.numel())
            return mat

    n, budget = 50_000, 2 ** 18
    gen = torch.Generator().manual_seed(3)
    x, labels = torch.rand(n, 3, generator=gen), torch.arange(n) % 10
    metrics = ("embedding_spread", "intrinsic_dimensionality")
    c = calc(include=metrics, distance=RecordingDistance(normalize_embeddings=False), chunk_elements=budget,
             distance_sample_size=600, seed=11)
    out = c.get_accuracy(x, labels)
    assert RecordingDistance.largest <= budget
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(11))[:600]
    mu, rho, _ = numpy_distance_statistics(x[keep].numpy())
    assert out["embedding_spread"] == pytest.approx(mu, rel=1e-4)
    assert out["intrinsic_dimensionality"] == pytest.approx(rho, rel=1e-3)
    assert c.get_accuracy(x, labels) == out  # same seed, same sample

    # The isometry defect is exact over all queries, still in blocks of at most `budget`.
    RecordingDistance.largest = 0
    small = x[:3000]
    exact = calc(include=("isometry_defect",), distance=RAW).get_accuracy(small, labels[:3000])
    blocked = calc(include=("isometry_defect",), distance=RecordingDistance(normalize_embeddings=False),
                   chunk_elements=budget).get_accuracy(small, labels[:3000])
    assert RecordingDistance.largest <= budget
    assert blocked["isometry_defect"] == pytest.approx(exact["isometry_defect"], rel=1e-6)


def test_pml_metrics_still_work_alongside_and_match_pml():
    gen = torch.Generator().manual_seed(4)
    x, labels = torch.randn(120, 6, generator=gen), torch.arange(120) % 4
    pml_metrics = ("precision_at_1", "mean_average_precision_at_r", "r_precision")
    ours = calc(include=pml_metrics + ("isometry_defect", "embedding_spread"), k="max_bin_count").get_accuracy(x, labels)
    theirs = PMLAccuracyCalculator(include=pml_metrics, k="max_bin_count", device=CPU).get_accuracy(x, labels)
    for name in pml_metrics:
        assert ours[name] == theirs[name]
    assert set(ours) == set(pml_metrics) | {"isometry_defect", "embedding_spread"}


def test_include_and_exclude_work_as_in_pml():
    # The diagnostics are opt-in (issue 18): by default the metrics are PML's.
    every = calc().get_curr_metrics()
    assert every == PMLAccuracyCalculator(device=CPU).get_curr_metrics() and not set(OURS) & set(every)
    assert set(calc(exclude=("isometry_defect", "NMI")).get_curr_metrics()) == set(every) - {"NMI"}
    assert set(calc(include=OURS, exclude=("isometry_defect",)).get_curr_metrics()) == set(OURS) - {"isometry_defect"}
    x, labels = torch.randn(30, 3), torch.arange(30) % 3
    assert set(calc(include=OURS).get_accuracy(x, labels)) == set(OURS)
    with pytest.raises(ValueError, match="Primary metrics"):
        calc(include=("isometry_defects",))


def test_queries_without_positives_give_nan():
    out = calc(include=("isometry_defect", "isometry_defect_max")).get_accuracy(torch.randn(4, 2), torch.arange(4))
    assert math.isnan(out["isometry_defect"]) and math.isnan(out["isometry_defect_max"])


@pytest.mark.parametrize(
    "kwargs, err, word",
    [
        ({"margin": -1.0}, ValueError, "margin"),
        ({"distance": "l2"}, TypeError, "distance"),
        ({"distance_sample_size": 1}, ValueError, "distance_sample_size"),
        ({"chunk_elements": 0}, ValueError, "chunk_elements"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, err, word):
    with pytest.raises(err, match=word):
        calc(**kwargs)
