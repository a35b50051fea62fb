"""pml_ext.AccuracyCalculator as a drop-in for PML's (issue 18) and its raw-embedding spread (issue 13).

Oracle: PML's own AccuracyCalculator, run on the same data with the same options. The
diagnostics are opt-in (named in ``include=``), so by default the two must give the same
keys, in the same order, with the same values.
"""
import math

import faiss
import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.utils import accuracy_calculator as pml_ac
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_ext.utils.accuracy_calculator import DIAGNOSTIC_METRICS, AccuracyCalculator

CPU = torch.device("cpu")
PML_METRICS = ("AMI", "NMI", "mean_average_precision", "mean_average_precision_at_r", "mean_reciprocal_rank",
               "precision_at_1", "r_precision")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)  # also makes FAISS k-means (NMI, AMI) run the same way twice
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


def assert_same(ours: dict, theirs: dict) -> None:
    """Same keys in the same order, and equal values (NaN == NaN, lists element-wise)."""
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        a, b = np.asarray(ours[key], dtype=float), np.asarray(value, dtype=float)
        assert a.shape == b.shape, key
        assert np.array_equal(a, b, equal_nan=True), (key, ours[key], value)


def both(**kwargs):
    kwargs.setdefault("device", CPU)
    return AccuracyCalculator(**kwargs), pml_ac.AccuracyCalculator(**kwargs)


def data(seed: int, n: int = 160, d: int = 8, classes: int = 6):
    gen = torch.Generator().manual_seed(seed)
    x, labels = torch.randn(n, d, generator=gen), torch.randint(0, classes, (n,), generator=gen)
    labels[:2] = classes + 1  # a class of 2: its queries are lone when the reference is the query set minus one
    return x, labels


def squared_l2_knn(query, k, reference, ref_includes_query):
    """A hand-written knn_func with PML's signature: ``(distances [Nq, k], indices [Nq, k])``."""
    dist = torch.cdist(query, reference) ** 2
    if ref_includes_query:
        dist[torch.arange(len(query)), torch.arange(len(query))] = math.inf
    return torch.topk(dist, k, dim=1, largest=False)


SELECTIONS = [{}, {"exclude": ("NMI", "AMI")}, {"include": ("precision_at_1", "mean_average_precision_at_r", "NMI")},
              {"include": ("r_precision", "mean_reciprocal_rank", "AMI"), "exclude": ("AMI",)}]
MODES = [{}, {"avg_of_avgs": True}, {"return_per_class": True}]


@pytest.mark.parametrize("selection", SELECTIONS, ids=["all", "exclude", "include", "include+exclude"])
@pytest.mark.parametrize("mode", MODES, ids=["plain", "avg_of_avgs", "per_class"])
@pytest.mark.parametrize("k", [None, 5, "max_bin_count"])
def test_default_results_equal_pml_key_for_key(selection, mode, k):
    ours, theirs = both(k=k, **selection, **mode)
    assert ours.get_curr_metrics() == theirs.get_curr_metrics()
    x, labels = data(0)
    q, ql, r, rl = x[:60], labels[:60], x[60:], labels[60:]
    ql[5] = 99  # not in the reference set: a lone query
    calls = [((x, labels), {}),  # reference = query
             ((q, ql, r, rl, False), {}),  # a separate reference set
             ((q, ql, torch.cat([q, r]), torch.cat([ql, rl]), True), {}),  # reference starts with the queries
             ((x, labels), {"include": ("precision_at_1", "r_precision")}),
             ((x, labels), {"exclude": ("precision_at_1",)})]
    for args, kwargs in calls:
        assert_same(ours.get_accuracy(*args, **kwargs), theirs.get_accuracy(*args, **kwargs))


@pytest.mark.parametrize("knn", ["custom_knn", "function"])
@pytest.mark.parametrize("mode", MODES, ids=["plain", "avg_of_avgs", "per_class"])
@pytest.mark.parametrize("ref_includes_query", [False, True])
def test_custom_knn_functions_give_pml_results(knn, mode, ref_includes_query):
    knn_func = CustomKNN(LpDistance(normalize_embeddings=False, power=2), 37) if knn == "custom_knn" else squared_l2_knn
    ours, theirs = both(knn_func=knn_func, k="max_bin_count", exclude=("NMI", "AMI"), **mode)
    x, labels = data(1)
    args = (x, labels, x, labels, ref_includes_query)
    assert_same(ours.get_accuracy(*args), theirs.get_accuracy(*args))


def test_custom_label_comparison_and_numpy_input_give_pml_results():
    def same_parity(a, b):
        return (a % 2) == (b % 2)

    ours, theirs = both(label_comparison_fn=same_parity, exclude=("NMI", "AMI"), k="max_bin_count")
    x, labels = data(2)
    assert_same(ours.get_accuracy(x.numpy(), labels.numpy()), theirs.get_accuracy(x.numpy(), labels.numpy()))


@pytest.mark.parametrize("mode", MODES, ids=["plain", "avg_of_avgs", "per_class"])
@pytest.mark.parametrize("lone", [False, True])
def test_get_accuracy_internals_called_with_pmls_arguments_only(mode, lone):
    """What PML's tests do: get_function_dict() and _get_accuracy(function_dict, knn labels,
    label counts, lone-query mask), with no embeddings."""
    gen = torch.Generator().manual_seed(3)
    query_labels = torch.randint(0, 4, (12,), generator=gen)
    knn_labels = torch.randint(0, 4, (12, 6), generator=gen)
    label_counts = (torch.arange(4), torch.tensor([6, 7, 9, 8]))
    kwargs = {"query_labels": query_labels, "label_counts": label_counts, "knn_labels": knn_labels,
              "not_lone_query_mask": torch.full((12,), not lone)}
    ours, theirs = both(exclude=("NMI", "AMI"), **mode)
    function_dicts = (ours.get_function_dict(), theirs.get_function_dict())
    assert list(function_dicts[0]) == list(function_dicts[1])
    for ref_includes_query in (False, True):
        kwargs["ref_includes_query"] = ref_includes_query
        assert_same(ours._get_accuracy(function_dicts[0], **kwargs), theirs._get_accuracy(function_dicts[1], **kwargs))
        assert_same(ours._get_accuracy(ours.curr_function_dict, **kwargs),
                    theirs._get_accuracy(theirs.curr_function_dict, **kwargs))


def test_pml_errors_and_validation_are_unchanged():
    for k in (-1, 0, 1.5, "max"):
        with pytest.raises(ValueError, match="k must be"):
            AccuracyCalculator(k=k)
    with pytest.raises(ValueError, match="mutually exclusive"):
        AccuracyCalculator(avg_of_avgs=True, return_per_class=True)
    with pytest.raises(TypeError):
        AccuracyCalculator(include="precision_at_1")
    with pytest.raises(ValueError, match="Primary metrics"):
        AccuracyCalculator(include=("precision_at_2",))
    with pytest.raises(NotImplementedError):
        AccuracyCalculator(label_comparison_fn=torch.eq)  # clustering + custom comparison
    x = torch.arange(3.0)[:, None]
    with pytest.raises(ValueError, match="first len"):
        AccuracyCalculator(device=CPU).get_accuracy(x, torch.arange(3), x.flip(0), torch.arange(3), True)


# ---- the opt-in rule ----------------------------------------------------------------------

def test_diagnostics_only_when_named_in_include():
    x, labels = data(4)
    default = AccuracyCalculator(device=CPU)
    assert default.get_curr_metrics() == sorted(PML_METRICS)
    assert not set(default.get_accuracy(x, labels)) & set(DIAGNOSTIC_METRICS)
    # Named in get_accuracy's include: that call only.
    once = default.get_accuracy(x, labels, include=("precision_at_1", "embedding_spread", "isometry_defect"))
    assert list(once) == ["precision_at_1", "isometry_defect", "embedding_spread"]
    assert list(default.get_accuracy(x, labels)) == sorted(PML_METRICS)  # the next call: PML's again
    # Named in the constructor's include: every call, by default.
    named = AccuracyCalculator(include=("precision_at_1", "raw_embedding_spread"), device=CPU)
    assert set(named.get_accuracy(x, labels)) == {"precision_at_1", "raw_embedding_spread"}
    assert set(named.get_accuracy(x, labels, include=("precision_at_1",))) == {"precision_at_1"}
    # exclude= removes a diagnostic for good, as for PML's metrics.
    assert default.get_accuracy(x, labels, include=("isometry_defect",), exclude=("isometry_defect",)) == {}
    excluded = AccuracyCalculator(exclude=("isometry_defect",), device=CPU)
    assert excluded.get_curr_metrics() == sorted(PML_METRICS)
    assert excluded.get_accuracy(x, labels, include=("isometry_defect",)) == {}


def test_get_accuracy_internals_asking_for_a_diagnostic_without_embeddings_name_the_argument():
    calc = AccuracyCalculator(include=("precision_at_1", "isometry_defect"), device=CPU)
    kwargs = {"query_labels": torch.zeros(3), "knn_labels": torch.zeros(3, 2), "ref_includes_query": False,
              "not_lone_query_mask": torch.ones(3, dtype=torch.bool), "label_counts": (torch.zeros(1), torch.ones(1))}
    with pytest.raises(ValueError, match="isometry_defect needs the embeddings.*'query'"):
        calc._get_accuracy(calc.curr_function_dict, **kwargs)
    spread = AccuracyCalculator(include=("raw_embedding_spread",), device=CPU)
    with pytest.raises(ValueError, match="raw_embedding_spread.*'query'"):
        spread._get_accuracy(spread.curr_function_dict, **kwargs)
    out = spread._get_accuracy(spread.curr_function_dict, query=torch.eye(3), **kwargs)
    assert out["raw_embedding_spread"] == pytest.approx(math.sqrt(2))


# ---- issue 13: spread on the raw (unnormalised) embeddings --------------------------------

SPREAD = ("embedding_spread", "relative_embedding_spread", "intrinsic_dimensionality")
RAW_SPREAD = tuple("raw_" + name for name in SPREAD)


def numpy_spread(x, squared_half=False):
    """(mu, mu / (2 mean ||x||), rho) of the distinct pairs, from the formulas."""
    x = np.asarray(x, dtype=np.float64)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)[np.triu_indices(len(x), k=1)]
    d = sq / 2 if squared_half else np.sqrt(sq)
    return d.mean(), d.mean() / (2 * np.linalg.norm(x, axis=1).mean()), d.mean() ** 2 / (2 * d.var())


def test_collapse_toward_the_origin_shows_only_in_the_raw_spread():
    gen = torch.Generator().manual_seed(5)
    labels = torch.arange(300) % 5
    collapsed = 1e-4 * torch.randn(300, 16, generator=gen)  # every embedding within ~4e-4 of 0
    healthy = torch.randn(300, 16, generator=gen)
    calc = AccuracyCalculator(include=SPREAD + RAW_SPREAD, device=CPU)
    dead, alive = calc.get_accuracy(collapsed, labels), calc.get_accuracy(healthy, labels)
    # After L2 normalisation the collapsed set is random directions: it reads as healthy.
    assert dead["relative_embedding_spread"] == pytest.approx(alive["relative_embedding_spread"], abs=0.03)
    assert dead["relative_embedding_spread"] > 0.6 and dead["embedding_spread"] > 1.2
    # On the embeddings as passed it is 1e-4 of the healthy set's spread, far below the margin.
    assert dead["raw_embedding_spread"] < 1e-3 < 1 < alive["raw_embedding_spread"]
    mu, relative, rho = numpy_spread(collapsed.numpy())
    assert dead["raw_embedding_spread"] == pytest.approx(mu, rel=1e-4)
    assert dead["raw_relative_embedding_spread"] == pytest.approx(relative, rel=1e-4)  # scale-free: ~0.69 too
    assert dead["raw_intrinsic_dimensionality"] == pytest.approx(rho, rel=1e-3)
    assert calc.distance.normalize_embeddings  # the calculator's distance is left as it was


def test_raw_spread_of_a_similarity_and_of_an_unnormalised_distance():
    gen = torch.Generator().manual_seed(6)
    x, labels = 3 * torch.randn(80, 4, generator=gen), torch.arange(80) % 4
    cos = AccuracyCalculator(include=RAW_SPREAD, distance=CosineSimilarity(), device=CPU).get_accuracy(x, labels)
    mu, _, rho = numpy_spread(x.numpy(), squared_half=True)  # (S_ii + S_jj)/2 - S_ij of the dot product
    assert cos["raw_embedding_spread"] == pytest.approx(mu, rel=1e-4)
    assert cos["raw_intrinsic_dimensionality"] == pytest.approx(rho, rel=1e-3)
    raw = AccuracyCalculator(include=SPREAD + RAW_SPREAD, distance=LpDistance(normalize_embeddings=False),
                             device=CPU).get_accuracy(x, labels)
    for name in SPREAD:  # nothing to undo: the raw metrics are the plain ones
        assert raw["raw_" + name] == raw[name]


@pytest.mark.parametrize("k", [2, 4, 8])
def test_recall_at_k_against_a_brute_force_loop(k):
    from pml_ext import AccuracyCalculator

    g = torch.Generator().manual_seed(k)
    query, labels = torch.randn(120, 6, generator=g), torch.randint(0, 10, (120,), generator=g)
    calc = AccuracyCalculator(include=(f"recall_at_{k}", "precision_at_1"), k="max_bin_count")
    got = calc.get_accuracy(query, labels, query, labels, ref_includes_query=True)
    dist = torch.cdist(query, query)
    dist.fill_diagonal_(float("inf"))
    hits = [float(labels[i] in labels[dist[i].argsort()[:k]].tolist()) for i in range(len(labels))]
    assert got[f"recall_at_{k}"] == pytest.approx(sum(hits) / len(hits))
    if k == 2:
        assert set(got) == {"recall_at_2", "precision_at_1"}
    # off unless asked for: the default keys stay PML's
    assert f"recall_at_{k}" not in AccuracyCalculator().get_accuracy(query, labels, query, labels, True)


def test_recall_at_k_needs_enough_neighbours():
    from pml_ext import AccuracyCalculator

    x, y = torch.randn(30, 4), torch.arange(30) % 3
    with pytest.raises(ValueError, match="recall_at_8 needs at least 8 neighbours"):
        AccuracyCalculator(include=("recall_at_8",), k=4).get_accuracy(x, y, x, y, True)
