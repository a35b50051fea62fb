"""RatioTripletLoss against a brute-force loop over the paper's formula, PML's reducers and gradcheck."""
import math

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import AvgNonZeroReducer, DoNothingReducer
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from pml_ext import RatioTripletLoss


def data(num=12, dim=5, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    emb, labels = torch.randn(num, dim, generator=gen, dtype=torch.float64), torch.randint(0, 3, (num,), generator=gen)
    return emb.to(device), labels.to(device)


def loop_losses(emb, triplets, margin, normalize=True):
    """max(0, 1 - ||a-n|| / (||a-p|| + m)) for each triplet, in plain Python."""
    rows = [[float(v) for v in row] for row in emb]
    if normalize:
        rows = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]

    def dist(i, j):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(rows[i], rows[j])))

    return [max(0.0, 1 - dist(a, n) / (dist(a, p) + margin)) for a, p, n in zip(*(t.tolist() for t in triplets))]


def test_all_triplets_from_labels_match_the_loop_with_the_mean_reducer(device):
    emb, labels = data(device=device)
    expected = loop_losses(emb, lmu.get_all_triplets_indices(labels), 0.2)
    assert RatioTripletLoss()(emb, labels).item() == pytest.approx(sum(expected) / len(expected), rel=1e-12)


def test_per_triplet_values_and_avg_non_zero_reducer_on_given_triplets(device):
    emb, labels = data(seed=1, device=device)
    triplets = lmu.get_random_triplet_indices(labels, t_per_anchor=3)
    expected = loop_losses(emb, triplets, 0.3)
    values = RatioTripletLoss(margin=0.3, reducer=DoNothingReducer())(emb, labels, triplets)["loss"]["losses"]
    assert values.tolist() == pytest.approx(expected, rel=1e-12)
    nonzero = [v for v in expected if v > 0]
    got = RatioTripletLoss(margin=0.3, reducer=AvgNonZeroReducer())(emb, labels, triplets)
    assert got.item() == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-12)


def test_unnormalised_distance_is_used_as_given():
    emb, labels = data(seed=2)
    triplets = lmu.get_all_triplets_indices(labels)
    expected = loop_losses(emb, triplets, 0.2, normalize=False)
    got = RatioTripletLoss(distance=LpDistance(normalize_embeddings=False))(emb, labels, triplets)
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-12)


def test_zero_exactly_where_pml_triplet_margin_loss_is_zero():
    # 1 - dn / (dp + m) > 0  <=>  dp - dn + m > 0: the same hinge as TripletMarginLoss.
    emb, labels = data(num=30, seed=3)
    triplets = lmu.get_all_triplets_indices(labels)
    ours = RatioTripletLoss(margin=0.2, reducer=DoNothingReducer())(emb, labels, triplets)["loss"]["losses"]
    pml = TripletMarginLoss(margin=0.2, reducer=DoNothingReducer())(emb, labels, triplets)["loss"]["losses"]
    assert torch.equal(ours > 0, pml > 0)


def test_gradcheck_float64(device):
    emb, labels = data(num=8, seed=4, device=device)
    triplets = lmu.get_all_triplets_indices(labels)
    loss = RatioTripletLoss(margin=0.2)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels, triplets), (emb.clone().requires_grad_(True),))


def test_no_triplet_gives_a_graph_connected_zero():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = RatioTripletLoss()(emb, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None


def test_margin_is_recorded_and_fraction_active_is_a_float_stat():
    emb, labels = data(seed=5)
    loss = RatioTripletLoss(collect_stats=True)
    loss(emb, labels)
    assert "margin" in loss._record_these and type(loss.fraction_active) is float


@pytest.mark.parametrize("make, match", [
    (lambda: RatioTripletLoss(margin=0.0), "margin"),
    (lambda: RatioTripletLoss(margin=-1.0), "margin"),
    (lambda: RatioTripletLoss(distance=CosineSimilarity()), "distance"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_embeddings_raise():
    with pytest.raises(ValueError, match="embeddings"):
        RatioTripletLoss()(torch.tensor([[float("nan"), 0.0]] * 3), torch.tensor([0, 0, 1]))
