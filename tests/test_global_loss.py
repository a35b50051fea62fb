"""GlobalLoss against a brute-force loop over Kumar et al.'s formula, gradcheck and MultipleLosses."""
import math

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
from pytorch_metric_learning.losses import MultipleLosses
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from pml_ext import GlobalLoss, RatioTripletLoss, SmartMiner


def data(num=12, dim=5, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    emb, labels = torch.randn(num, dim, generator=gen, dtype=torch.float64), torch.randint(0, 3, (num,), generator=gen)
    return emb.to(device), labels.to(device)


def loop_global(emb, triplets, lambda_, t):
    """var(d+) + var(d-) + lambda * max(0, mean(d+) - mean(d-) + t), d = ||.||^2 / 4 on unit vectors."""
    rows = [[float(v) for v in row] for row in emb]
    rows = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]

    def quarter_sq(i, j):
        return sum((x - y) ** 2 for x, y in zip(rows[i], rows[j])) / 4

    pos, neg = [], []
    for a, p, n in zip(*(t_.tolist() for t_ in triplets)):
        pos.append(quarter_sq(a, p))
        neg.append(quarter_sq(a, n))
    mp, mn = sum(pos) / len(pos), sum(neg) / len(neg)
    vp = sum((v - mp) ** 2 for v in pos) / len(pos)  # population variances
    vn = sum((v - mn) ** 2 for v in neg) / len(neg)
    return vp + vn + lambda_ * max(0.0, mp - mn + t)


@pytest.mark.parametrize("lambda_, t", [(1.0, 0.01), (0.5, 0.3), (0.0, 0.01)])
def test_all_triplets_from_labels_match_the_loop(lambda_, t, device):
    emb, labels = data(device=device)
    expected = loop_global(emb, lmu.get_all_triplets_indices(labels), lambda_, t)
    assert GlobalLoss(lambda_=lambda_, t=t)(emb, labels).item() == pytest.approx(expected, rel=1e-12)


def test_mined_triplets_and_pairs_match_the_loop(device):
    emb, labels = data(num=30, seed=1, device=device)
    triplets = SmartMiner(kappa=1.0)(emb, labels)
    expected = loop_global(emb, triplets, 2.0, 0.01)
    assert GlobalLoss(lambda_=2.0)(emb, labels, triplets).item() == pytest.approx(expected, rel=1e-12)
    pairs = lmu.get_all_pairs_indices(labels)
    expected_pairs = loop_global(emb, lmu.convert_to_triplets(pairs, labels), 2.0, 0.01)
    assert GlobalLoss(lambda_=2.0)(emb, labels, pairs).item() == pytest.approx(expected_pairs, rel=1e-12)


def test_cosine_similarity_gives_the_same_value():
    # 2 - 2 cos = ||a - b||^2 on unit vectors.
    emb, labels = data(seed=2)
    assert GlobalLoss(distance=CosineSimilarity())(emb, labels).item() == pytest.approx(
        GlobalLoss()(emb, labels).item(), rel=1e-10)


@pytest.mark.parametrize("seed", [3, 6])
def test_gradcheck_float64(seed, device):
    # mean(d+) - mean(d-) is +0.054 for seed 3 (hinge active with t = 0.01) and -0.222 for
    # seed 6 (hinge off): both sides of the max are checked, away from its kink.
    t = 0.01
    emb, labels = data(num=8, seed=seed, device=device)
    loss = GlobalLoss(lambda_=1.5, t=t)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (emb.clone().requires_grad_(True),))


def test_works_inside_multiple_losses_with_a_miner():
    emb, labels = data(num=24, seed=4)
    miner = SmartMiner(kappa=1.0, seed=0)
    combined = MultipleLosses([RatioTripletLoss(), GlobalLoss()], miners=[miner, miner], weights=[1.0, 0.5])
    value = combined(emb, labels)
    # The miner is called once per loss; re-create the same two draws with a fresh miner.
    replay = SmartMiner(kappa=1.0, seed=0)
    first, second = replay(emb, labels), replay(emb, labels)
    expected = RatioTripletLoss()(emb, labels, first) + 0.5 * GlobalLoss()(emb, labels, second)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_no_triplet_gives_a_graph_connected_zero_and_stats_are_floats():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = GlobalLoss()(emb, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None
    recorded = GlobalLoss(collect_stats=True)
    emb, labels = data(seed=5)
    recorded(emb, labels)
    assert {"lambda_", "t"} <= set(recorded._record_these)
    assert all(type(getattr(recorded, s)) is float for s in ("mean_pos", "mean_neg", "var_pos", "var_neg"))


@pytest.mark.parametrize("make, match", [
    (lambda: GlobalLoss(lambda_=-1.0), "lambda_"),
    (lambda: GlobalLoss(t=-0.1), "t must"),
    (lambda: GlobalLoss(distance=DotProductSimilarity(normalize_embeddings=False)), "distance"),
])
def test_bad_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
