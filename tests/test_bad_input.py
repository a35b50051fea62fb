"""Bad-input matrix (issue 16): every public class and function x every kind of bad input.

Each case expects the exact error type and the user's argument named in the message, or
(empty batch / empty tuple) PML's zero loss connected to the graph and empty tuples from
miners. FAISS parameters are fuzzed in subprocesses in tests/test_faiss_fuzz.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.miners import TripletMarginMiner

from pml_ext import (AdaptiveController, EmbeddingIndex, GlobalLoss, HardNeighborSampler, IsometricHardMiner,
                     LiftedStructureLoss, RatioTripletLoss, SmartMiner)
from pml_ext.miners.smart_triplets import smart_triplets
from pml_ext.utils import ann_quality

LOSSES = [LiftedStructureLoss, GlobalLoss, RatioTripletLoss]
MINERS = [SmartMiner, IsometricHardMiner]
B, D = 8, 4


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.randn(B, D, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    return emb, torch.arange(B) // 2


def idx(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def with_value(value: float) -> torch.Tensor:
    emb, _ = batch()
    emb = emb.detach().clone()
    emb[3, 1] = value
    return emb


# (case, call(fn, emb, labels) -> result, error type, word that the message must contain)
TENSOR_CASES = [
    ("nan", lambda f, e, y: f(with_value(float("nan")), y), ValueError, "embeddings contains NaN"),
    ("inf", lambda f, e, y: f(with_value(float("inf")), y), ValueError, "embeddings contains NaN or inf"),
    ("int dtype", lambda f, e, y: f(torch.ones(B, D, dtype=torch.long), y), TypeError, "embeddings"),
    ("1-D embeddings", lambda f, e, y: f(torch.ones(B), y), ValueError, "embeddings must be 2-D"),
    ("float labels", lambda f, e, y: f(e, y.float()), TypeError, "labels"),
    ("short labels", lambda f, e, y: f(e, y[:-1]), ValueError, "labels has length"),
    ("ref_emb dim", lambda f, e, y: f(e, y, ref_emb=torch.randn(5, D + 1), ref_labels=idx(0, 1, 2, 3, 4)),
     ValueError, "ref_emb has dimension"),
    ("ref_emb nan", lambda f, e, y: f(e, y, ref_emb=torch.full((5, D), float("nan")), ref_labels=idx(0, 1, 2, 3, 4)),
     ValueError, "ref_emb contains NaN"),
    ("ref_emb without ref_labels", lambda f, e, y: f(e, y, ref_emb=torch.randn(5, D)), ValueError, "ref_labels"),
    ("ref_labels without ref_emb", lambda f, e, y: f(e, y, ref_labels=idx(0, 1)), ValueError, "ref_emb"),
    ("ref_labels length", lambda f, e, y: f(e, y, ref_emb=torch.randn(5, D), ref_labels=idx(0, 1)),
     ValueError, "ref_labels has length"),
]

INDEX_CASES = [
    ("negative triplet index", (idx(0), idx(1), idx(-1)), "indices_tuple[2] must lie in [0, 8)"),
    ("out-of-range triplet index", (idx(0), idx(1), idx(8)), "indices_tuple[2]"),
    ("negative anchor", (idx(-8), idx(1), idx(2)), "indices_tuple[0]"),
    ("out-of-range pair", (idx(0), idx(9), idx(0), idx(2)), "indices_tuple[1]"),
    ("negative pair index", (idx(0, 2), idx(1, 3), idx(0), idx(-3)), "indices_tuple[3]"),
]


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("case, call, err, word", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_losses_name_the_bad_argument(loss_cls, case, call, err, word):
    emb, labels = batch()
    with pytest.raises(err, match=word):
        call(loss_cls(), emb, labels)


@pytest.mark.parametrize("miner_cls", MINERS)
@pytest.mark.parametrize("case, call, err, word", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_miners_name_the_bad_argument(miner_cls, case, call, err, word):
    emb, labels = batch()
    with pytest.raises(err, match=word):
        call(miner_cls(), emb.detach(), labels)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("case, tup, word", INDEX_CASES, ids=[c[0] for c in INDEX_CASES])
def test_out_of_range_indices_raise_in_every_loss(loss_cls, case, tup, word):
    emb, labels = batch()
    with pytest.raises(ValueError, match=word.replace("[", r"\[").replace(")", r"\)")):
        loss_cls()(emb, labels, tup)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("tup, err, word", [
    ((idx(0), idx(1)), ValueError, "3 \\(triplets\\) or 4"),
    ((idx(0), idx(1), torch.tensor([2.0])), TypeError, r"indices_tuple\[2\] must have an integer dtype"),
    ((idx(0), idx(1), idx(2).view(1, 1)), ValueError, r"indices_tuple\[2\] must be 1-D"),
    ((idx(0, 1), idx(1), idx(2)), ValueError, "equal lengths"),
    ((idx(0), [1], idx(2)), TypeError, r"indices_tuple\[1\] must be a torch.Tensor"),
])
def test_malformed_indices_tuple_is_named(loss_cls, tup, err, word):
    emb, labels = batch()
    with pytest.raises(err, match=word):
        loss_cls()(emb, labels, tup)


def test_indices_into_ref_emb_are_checked_against_its_size():
    emb, labels = batch()
    ref, ref_labels = torch.randn(3, D), idx(0, 0, 1)
    with pytest.raises(ValueError, match=r"indices_tuple\[1\] must lie in \[0, 3\) \(rows of ref_emb\)"):
        RatioTripletLoss()(emb, labels, (idx(5), idx(4), idx(2)), ref, ref_labels)
    # In range for ref_emb (3 rows) but anchors index the batch (8 rows): accepted.
    value = RatioTripletLoss()(emb, labels, (idx(5), idx(1), idx(2)), ref, ref_labels)
    dist = torch.cdist(torch.nn.functional.normalize(emb[5:6]), torch.nn.functional.normalize(ref))[0]
    assert torch.isclose(value, torch.relu(1 - dist[2] / (dist[1] + 0.2)), atol=1e-5)


def test_single_out_of_range_pair_raises_where_pml_returns_zero():
    emb, labels = batch()
    tup = (idx(0), idx(99), idx(0), idx(2))
    assert float(pml_losses.LiftedStructureLoss()(emb, labels, tup)) == 0.0  # PML: silent zero
    with pytest.raises(ValueError, match=r"indices_tuple\[1\]"):
        LiftedStructureLoss()(emb, labels, tup)


@pytest.mark.parametrize("wrapped", [(idx(0), idx(1), idx(-1)), (idx(-1), idx(0), idx(1))])
def test_pml_wraps_a_negative_index_that_pml_ext_refuses(wrapped):
    """The oracle: PML's own loss scores index -1 as the last row; pml_ext raises instead."""
    emb, labels = batch()
    explicit = tuple(t % B for t in wrapped)
    pml = pml_losses.TripletMarginLoss()
    assert torch.isclose(pml(emb, labels, wrapped), pml(emb, labels, explicit))
    with pytest.raises(ValueError, match="indices_tuple"):
        RatioTripletLoss()(emb, labels, wrapped)


def test_valid_tuple_still_matches_pml():
    emb, labels = batch(1)
    tup = (idx(0, 2, 4), idx(1, 3, 5), idx(0, 2, 6), idx(3, 7, 1))
    ours = LiftedStructureLoss()(emb, labels, tup)
    theirs = pml_losses.LiftedStructureLoss()(emb, labels, tup)
    assert torch.isclose(ours, theirs, atol=1e-6)


def _assert_connected_zero(loss: torch.Tensor, emb: torch.Tensor) -> None:
    assert float(loss) == 0.0 and loss.requires_grad and loss.grad_fn is not None
    loss.backward()
    assert emb.grad is not None and emb.grad.shape == emb.shape and not bool(emb.grad.any())


@pytest.mark.parametrize("loss_cls", LOSSES + [pml_losses.TripletMarginLoss])
@pytest.mark.parametrize("empty", ["batch", "triplets", "pairs"])
def test_empty_input_gives_a_zero_loss_connected_to_the_graph(loss_cls, empty):
    """The same for every pml_ext loss as for PML's own TripletMarginLoss (the oracle)."""
    if empty == "batch":
        emb = torch.empty(0, D, requires_grad=True)
        loss = loss_cls()(emb, torch.empty(0, dtype=torch.long))
    else:
        emb, labels = batch()
        tup = (idx(), idx(), idx()) if empty == "triplets" else (idx(), idx(), idx(), idx())
        loss = loss_cls()(emb, labels, tup)
    _assert_connected_zero(loss, emb)


@pytest.mark.parametrize("miner_cls", MINERS + [TripletMarginMiner])
@pytest.mark.parametrize("ref", [False, True])
def test_empty_batch_gives_empty_tuples_from_every_miner(miner_cls, ref):
    emb, labels = torch.empty(0, D), torch.empty(0, dtype=torch.long)
    kwargs = {"ref_emb": torch.randn(4, D), "ref_labels": idx(0, 0, 1, 1)} if ref else {}
    out = miner_cls()(emb, labels, **kwargs)
    assert len(out) == 3 and all(t.shape == (0,) and t.dtype == torch.long for t in out)


@pytest.mark.parametrize("miner_cls", MINERS + [TripletMarginMiner])
def test_empty_reference_gives_empty_tuples_from_every_miner(miner_cls):
    emb, labels = batch()
    out = miner_cls()(emb.detach(), labels, torch.empty(0, D), torch.empty(0, dtype=torch.long))
    assert len(out) == 3 and all(t.shape == (0,) and t.dtype == torch.long for t in out)


@pytest.mark.parametrize("loss_cls", LOSSES + [pml_losses.TripletMarginLoss])
def test_empty_reference_gives_a_zero_loss_connected_to_the_graph(loss_cls):
    emb, labels = batch()
    _assert_connected_zero(loss_cls()(emb, labels, ref_emb=torch.empty(0, D),
                                      ref_labels=torch.empty(0, dtype=torch.long)), emb)


def test_smart_miner_nan_error_names_the_users_embeddings():
    with pytest.raises(ValueError, match=r"^embeddings contains NaN") as info:
        SmartMiner()(with_value(float("nan")), batch()[1])
    assert "neighbor" not in str(info.value)


# ------------------------------------------------------------------ index and samplers
@pytest.mark.parametrize("kwargs, err, word", [
    ({"method": "hnsw", "M": 0}, ValueError, "M must be >= 2"),
    ({"method": "hnsw", "M": 1}, ValueError, "M must be >= 2"),
    ({"method": "hnsw", "M": -4}, ValueError, "M must be >= 2"),
    ({"method": "hnsw", "M": 16.0}, TypeError, "M must be an int"),
    ({"method": "hnsw", "efSearch": 2**31 - 1}, ValueError, "efSearch must be <="),
    ({"method": "auto", "efConstruction": 0}, ValueError, "efConstruction"),
    ({"method": "ivf", "nlist": 0}, ValueError, "nlist"),
    ({"method": "ivf", "nprobe": -1}, ValueError, "nprobe"),
    ({"method": "ivf", "niter": 0}, ValueError, "niter"),
    ({"method": "ivf", "max_points_per_centroid": "64"}, TypeError, "max_points_per_centroid"),
    ({"method": "ivf", "M": 8}, ValueError, "faiss_params"),
    ({"method": "exact", "num_threads": 0}, ValueError, "num_threads"),
    ({"method": "exact", "seed": -1}, ValueError, "seed"),
    ({"method": "exact", "seed": 2**31}, ValueError, "seed"),
])
def test_index_constructor_checks_every_faiss_parameter(kwargs, err, word):
    with pytest.raises(err, match=word):
        EmbeddingIndex(**kwargs)


@pytest.mark.parametrize("case, call, err, word", [
    ("nan", lambda: EmbeddingIndex().build(with_value(float("nan"))), ValueError, "embeddings contains"),
    ("empty", lambda: EmbeddingIndex().build(torch.empty(0, D)), ValueError, "embeddings is empty"),
    ("no columns", lambda: EmbeddingIndex().build(torch.empty(5, 0)), ValueError, "at least 1 column"),
    ("int dtype", lambda: EmbeddingIndex().build(torch.ones(5, D, dtype=torch.int32)), TypeError, "embeddings"),
    ("nlist > N", lambda: EmbeddingIndex("ivf", nlist=9).build(torch.randn(B, D)), ValueError, "nlist=9"),
    ("query width", lambda: EmbeddingIndex().build(torch.randn(B, D)).search(torch.randn(2, D + 1), 1),
     ValueError, "queries"),
    ("negative k", lambda: EmbeddingIndex().build(torch.randn(B, D)).knn_all(-1), ValueError, "k must be >= 1"),
    ("float k", lambda: EmbeddingIndex().build(torch.randn(B, D)).search(torch.randn(2, D), 1.0),
     TypeError, "k must be an int"),
])
def test_index_build_and_search_name_the_bad_argument(case, call, err, word):
    with pytest.raises(err, match=word):
        call()


@pytest.mark.parametrize("make, err, word", [
    (lambda: SmartMiner(index_method="hnsw", index_params={"M": 1}), ValueError, "M must be >= 2"),
    (lambda: SmartMiner(index_method="ivf", index_params={"nprobe": 0}), ValueError, "nprobe"),
    (lambda: SmartMiner(index_method="nope"), ValueError, "method"),
    (lambda: SmartMiner(index_params=[("M", 8)]), TypeError, "index_params"),
    (lambda: SmartMiner(k=0), ValueError, "k must be >= 1"),
    (lambda: HardNeighborSampler(torch.arange(40) % 4, 8, num_threads=0), ValueError, "num_threads"),
    (lambda: HardNeighborSampler(torch.arange(40) % 4, 8, method="hnws"), ValueError, "method"),
    (lambda: HardNeighborSampler(torch.arange(40) % 4, 8, seed=-3), ValueError, "seed"),
    (lambda: HardNeighborSampler(torch.arange(40) % 4, 8.0), TypeError, "batch_size"),
    (lambda: IsometricHardMiner(semi_hard_draws=0), ValueError, "semi_hard_draws"),
])
def test_constructors_fail_at_start_up(make, err, word):
    with pytest.raises(err, match=word):
        make()


def test_smart_triplets_and_ann_quality_name_their_arguments():
    nbr, dist, labels = idx(1, 0).view(2, 1), torch.tensor([[0.5], [float("nan")]]), idx(0, 1)
    with pytest.raises(ValueError, match="neighbor_distances"):
        smart_triplets(nbr, dist, labels, 1.0)
    with pytest.raises(ValueError, match="neighbor_indices"):
        smart_triplets(idx(-1, 0).view(2, 1), torch.ones(2, 1), labels, 1.0)
    d, i = torch.tensor([[1.0, 2.0]]), idx(3, 4).view(1, 2)
    with pytest.raises(ValueError, match="approx_distances"):
        ann_quality(d, i, torch.tensor([[1.0, float("nan")]]), i)
    with pytest.raises(ValueError, match="num_points"):
        ann_quality(d, i, d, i, num_points=0)
    with pytest.raises(TypeError, match="num_points"):
        ann_quality(d, i, d, i, num_points=2.5)
    padded = ann_quality(d, i, torch.tensor([[1.0, float("inf")]]), idx(3, -1).view(1, 2))
    assert padded["recall"] == 0.5  # FAISS's padding (-1, inf) is still accepted


# ------------------------------------------------------------------ corrupted controller state
def _controller() -> tuple[AdaptiveController, TripletMarginMiner]:
    miner = TripletMarginMiner(margin=0.2)
    miner.fraction_active = 0.0
    ctrl = AdaptiveController(miner, "margin", target=0.3, start_epoch=1)
    for error in (0.5, 0.4, 0.35):
        ctrl.observe(error)
        ctrl.step()
    return ctrl, miner


CORRUPT = [
    ("setting", float("nan"), ValueError), ("setting", float("inf"), ValueError), ("setting", 0, ValueError),
    ("setting", -5, ValueError), ("setting", "0.2", TypeError), ("target", 7, ValueError),
    ("target", float("nan"), ValueError), ("epoch", 2.5, TypeError), ("epoch", -1, ValueError),
    ("history", [[1, 0.2, float("nan")]], ValueError), ("history", [[1, 0.2, 3.0]], ValueError),
    ("history", [[1, -0.2, 0.3]], ValueError), ("history", [[1, 0.2]], ValueError),
    ("last_error", float("inf"), ValueError), ("last_error", 4.0, ValueError), ("slope", float("inf"), ValueError),
    ("used_fallback", 0.5, ValueError), ("inferred_sign", 3, ValueError), ("num_skipped", -1, ValueError),
    ("obs_count", 1.5, TypeError), ("obs_sum", float("nan"), ValueError),
    ("step_log", [[1.0] * 7], ValueError), ("step_log", [[1.0, "x"] + [0.0] * 6], TypeError),
]


@pytest.mark.parametrize("key, value, err", CORRUPT, ids=[f"{k}={v!r}" for k, v, _ in CORRUPT])
def test_corrupted_controller_state_is_refused_whole(key, value, err):
    saved, _ = _controller()
    state = {**saved.state_dict(), key: value}
    ctrl, miner = _controller()
    ctrl.step()  # move on, so that a half-load would show
    before, margin = ctrl.state_dict(), miner.margin
    with pytest.raises(err, match=rf"state\['{key}'\]"):
        ctrl.load_state_dict(state)
    assert miner.margin == margin and not math.isnan(miner.margin)
    after = ctrl.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k] == before[k] or (after[k] != after[k] and before[k] != before[k]) for k in before)


def test_a_valid_state_still_round_trips():
    saved, _ = _controller()
    ctrl, miner = _controller()
    ctrl.step()
    ctrl.load_state_dict(saved.state_dict())
    assert miner.margin == saved.setting and ctrl.epoch == saved.epoch and ctrl.history == saved.history


def test_smart_miner_checks_index_arguments_but_not_the_in_batch_distance():
    """LpDistance(p=1) cannot be indexed by FAISS, but in-batch mining takes it (docs/smart_mining.md)."""
    from pytorch_metric_learning.distances import LpDistance
    emb, labels = torch.randn(9, D, generator=torch.Generator().manual_seed(0)), torch.arange(9) // 3
    a, p, n = SmartMiner(distance=LpDistance(p=1))(emb, labels)
    assert len(a) > 0 and bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())
    with pytest.raises(ValueError, match="seed"):
        SmartMiner(seed=2**31)
