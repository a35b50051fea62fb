"""SmartMiner: in-batch mining against the Algorithm 1 loop, global update against brute-force k-NN,
the batch layout, composition with PML losses, records and errors."""
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from pytorch_metric_learning.losses import LiftedStructureLoss as PMLLiftedStructureLoss
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import DoNothingReducer
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

import pml_ext
from pml_ext import SmartMiner, smart_triplets
from test_smart_triplets import OUTSIDE, algorithm1_reference


def batch(num=48, dim=8, num_classes=4, seed=0, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=gen)
    centers = torch.randn(num_classes, dim, generator=gen, dtype=dtype)
    emb = centers[labels] + 0.8 * torch.randn(num, dim, generator=gen, dtype=dtype)
    return emb.to(device), labels.to(device)


def unit_sq(emb):
    x = torch.nn.functional.normalize(emb, dim=1)
    return torch.cdist(x, x) ** 2


@pytest.mark.parametrize("kappa", [1.0, 2.0, 4.0])
def test_in_batch_triplets_follow_algorithm1_on_the_batch_matrix(kappa, device):
    emb, labels = batch(seed=int(kappa), device=device)
    a, p, n = SmartMiner(kappa=kappa)(emb, labels)
    sq = unit_sq(emb)
    lab = labels.tolist()
    for anchor in range(len(lab)):
        row = [j for j in sorted(range(len(lab)), key=lambda j: sq[anchor, j].item()) if j != anchor]
        plan = algorithm1_reference(row, [sq[anchor, j].item() for j in row], lab, anchor, kappa)
        got = [(int(p[t]), int(n[t])) for t in (a == anchor).nonzero().flatten()]
        if plan == [("random",)]:
            assert len(got) == 1 and lab[got[0][0]] == lab[anchor] and lab[got[0][1]] != lab[anchor]
        else:
            # The whole batch is listed, so a negative without a later positive has no
            # positive left anywhere: it is dropped.
            assert got == [(p_, n_) for _, p_, n_ in plan if p_ != OUTSIDE]


def test_in_batch_output_obeys_eq6_order_and_uniqueness(device):
    emb, labels = batch(num=96, seed=5, device=device)
    miner = SmartMiner(kappa=1.5)
    a, p, n = miner(emb, labels)
    sq = unit_sq(emb)
    sq.fill_diagonal_(float("inf"))
    mined = sq[a, n] < sq[a, p]
    assert miner.num_mined == float(mined.sum()) > 0
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    nearest_pos = torch.where(same, sq, torch.full_like(sq, float("inf"))).min(dim=1).values
    assert bool((sq[a, n][mined] > 1.5 * nearest_pos[a][mined]).all())
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all()) and bool((a != p).all())
    pairs = a * 1000 + n
    assert pairs.unique().numel() == pairs.numel()


def test_separate_reference_set_indexes_the_reference():
    emb, labels = batch(num=60, seed=2)
    a, p, n = SmartMiner(kappa=1.0)(emb[:20], labels[:20], emb[20:], labels[20:])
    assert int(a.max()) < 20 and int(p.max()) < 40 and int(n.max()) < 40
    assert bool((labels[:20][a] == labels[20:][p]).all()) and bool((labels[:20][a] != labels[20:][n]).all())


def test_cosine_similarity_gives_the_same_triplets_as_normalised_l2():
    # On unit vectors ||a - b||^2 = 2 - 2 cos(a, b): the rule sees the same numbers.
    emb, labels = batch(seed=3)
    l2 = SmartMiner(kappa=2.0, seed=1)(emb, labels)
    cos = SmartMiner(kappa=2.0, seed=1, distance=CosineSimilarity())(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(l2, cos))


def test_same_seed_same_triplets():
    emb, labels = batch(num=40, num_classes=8, seed=4)
    first, second = (SmartMiner(kappa=3.0, seed=9)(emb, labels) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_composes_with_triplet_margin_loss(device):
    emb, labels = batch(seed=6, device=device)
    emb.requires_grad_(True)
    triplets = SmartMiner(kappa=1.0)(emb, labels)
    loss = TripletMarginLoss(margin=0.2)(emb, labels, triplets)
    # Brute force: PML's triplet loss on these triplets, averaged over the non-zero ones.
    x = torch.nn.functional.normalize(emb, dim=1)
    terms = [max(0.0, (x[a] - x[p]).norm().item() - (x[a] - x[n]).norm().item() + 0.2) for a, p, n in zip(*triplets)]
    nonzero = [t for t in terms if t > 0]
    assert loss.item() == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-9)
    loss.backward()
    assert emb.grad.abs().sum() > 0


def test_composes_with_lifted_structure_loss_via_convert_to_pairs():
    emb, labels = batch(num=32, seed=7)
    pairs = lmu.convert_to_pairs(SmartMiner(kappa=1.0)(emb, labels), labels)
    ours = pml_ext.LiftedStructureLoss(neg_margin=1.0)(emb, labels, pairs)
    theirs = PMLLiftedStructureLoss(neg_margin=1.0)(emb, labels, pairs)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9)


def test_no_valid_triplet_gives_empty_tuples_and_a_graph_connected_zero_loss():
    emb = torch.randn(6, 4, requires_grad=True)
    labels = torch.zeros(6, dtype=torch.long)  # one class: no negative at all
    triplets = SmartMiner()(emb, labels)
    assert all(t.numel() == 0 for t in triplets)
    loss = TripletMarginLoss()(emb, labels, triplets)
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None


def test_fraction_active_hand_computed_in_batch_layout():
    # Unnormalised Euclidean, margin 0.2. Triplet 0: d(a,p) = 1, d(a,n) = 1.1 < 1.2 ->
    # active. Triplet 1: d(a,p) = 1, d(a,n) = 1.3 >= 1.2 -> inactive. e = 1/2.
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.1], [5.0, 5.0], [6.0, 5.0], [5.0, 6.3]])
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    miner = SmartMiner(batch_layout=True, margin=0.2, distance=LpDistance(normalize_embeddings=False))
    a, p, n = miner(emb, labels)
    assert (a.tolist(), p.tolist(), n.tolist()) == ([0, 3], [1, 4], [2, 5])
    assert miner.fraction_active == pytest.approx(0.5)
    assert isinstance(miner.fraction_active, float)


def test_epoch_fraction_active_is_measured_on_the_update_embeddings_not_the_current_ones():
    emb, labels = batch(num=90, dim=4, num_classes=3, seed=12, dtype=torch.float32)
    miner = SmartMiner(batch_layout=True, kappa=2.0, margin=0.2, k=16, index_method="exact",
                       distance=LpDistance(normalize_embeddings=False))
    a, p, n = miner.update(emb, labels)
    # brute force from the formula: d(a,n) < d(a,p) + margin, Euclidean, on the update's embeddings
    active = [float(torch.dist(emb[i], emb[k]) < torch.dist(emb[i], emb[j]) + 0.2)
              for i, j, k in zip(a.tolist(), p.tolist(), n.tolist())]
    assert len(active) > 10 and 0 < sum(active) < len(active)
    stale = sum(active) / len(active)
    assert miner.epoch_fraction_active == pytest.approx(stale)
    # a batch of five of those triplets after the network moved every negative far away
    rows = torch.stack([a[:5], p[:5], n[:5]], dim=1).reshape(-1)
    moved = emb[rows].clone()
    moved[2::3] += 100.0
    miner(moved, labels[rows])
    assert miner.fraction_active == 0.0 and miner.epoch_fraction_active == pytest.approx(stale)
    assert "epoch_fraction_active" in miner._record_these


def test_batch_layout_rejects_batches_the_sampler_did_not_build():
    miner = SmartMiner(batch_layout=True)
    with pytest.raises(ValueError, match="multiple of 3"):
        miner(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="layout"):
        miner(torch.randn(3, 3), torch.tensor([0, 1, 1]))


def test_update_equals_algorithm1_on_brute_force_knn():
    emb, labels = batch(num=200, dim=6, num_classes=5, seed=8, dtype=torch.float32)
    miner = SmartMiner(kappa=1.5, k=16, seed=3, index_method="exact")
    a, p, n = miner.update(emb, labels)
    sq = unit_sq(emb.double())
    sq.fill_diagonal_(float("inf"))
    dist, nbr = sq.sort(dim=1)
    expected = smart_triplets(nbr[:, :16], dist[:, :16], labels, 1.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip((a, p, n), expected))
    assert miner.num_updates == 1 and miner.triplet_is_random.shape == a.shape


def test_kappa_set_between_epochs_takes_effect_at_the_next_update():
    emb, labels = batch(num=150, dim=6, num_classes=5, seed=9, dtype=torch.float32)
    miner = SmartMiner(kappa=1.0, k=16, index_method="exact")
    miner.update(emb, labels)
    loose = miner.num_mined
    miner.kappa = 4.0
    a, p, n = miner.update(emb, labels)
    fresh = SmartMiner(kappa=4.0, k=16, index_method="exact")
    fa, fp, fn = fresh.update(emb, labels)
    mined, fresh_mined = ~miner.triplet_is_random, ~fresh.triplet_is_random
    # The (anchor, negative) choices are deterministic: equal to a miner built with kappa=4.
    assert torch.equal(a[mined], fa[fresh_mined]) and torch.equal(n[mined], fn[fresh_mined])
    assert miner.num_mined < loose and miner.kappa == 4.0


def test_records_are_plain_floats_and_registered():
    miner = SmartMiner(kappa=2.0, collect_stats=True)
    emb, labels = batch(seed=10)
    miner(emb, labels)
    assert {"kappa", "margin", "fraction_active"} <= set(miner._record_these)
    assert {"num_mined", "num_random"} <= set(miner._record_these_stats)
    for name in ("kappa", "fraction_active", "num_mined", "num_random"):
        assert type(getattr(miner, name)) is float
    assert 0.0 <= miner.fraction_active <= 1.0
    # Without collect_stats the counters are not PML stats, but the controller still reads them.
    plain = SmartMiner()
    plain(emb, labels)
    assert plain.num_mined > 0 and "num_mined" not in getattr(plain, "_record_these_stats", [])


@pytest.mark.parametrize("make, error, match", [
    (lambda: SmartMiner(kappa=0), ValueError, "kappa"),
    (lambda: SmartMiner(kappa=-2.0), ValueError, "kappa"),
    (lambda: SmartMiner(k=0), ValueError, "k must"),
    (lambda: SmartMiner(margin=-0.1), ValueError, "margin"),
    (lambda: SmartMiner(distance=DotProductSimilarity(normalize_embeddings=False)), ValueError, "distance"),
])
def test_bad_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_kappa_assignment_and_bad_update_input_raise():
    miner = SmartMiner()
    with pytest.raises(ValueError, match="kappa"):
        miner.kappa = 0.0
    with pytest.raises(ValueError, match="embeddings"):
        miner.update(torch.tensor([[0.0, float("nan")]] * 3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="labels"):
        miner.update(torch.randn(3, 2), torch.tensor([0, 1]))


def test_ratio_loss_zero_pattern_matches_fraction_active():
    # fraction_active is the share of non-zero ratio losses; check with the loss itself.
    emb, labels = batch(seed=11)
    miner = SmartMiner(kappa=1.0, margin=0.2)
    triplets = miner(emb, labels)
    losses = pml_ext.RatioTripletLoss(margin=0.2, reducer=DoNothingReducer())(emb, labels, triplets)["loss"]["losses"]
    assert miner.fraction_active == pytest.approx(float((losses > 0).double().mean()))


def test_update_accepts_a_prebuilt_index_and_rejects_a_mismatched_one():
    from pml_ext import EmbeddingIndex

    emb, labels = batch(num=120, dim=6, num_classes=4, seed=12, dtype=torch.float32)
    own = SmartMiner(kappa=1.0, k=10, seed=5, index_method="exact").update(emb, labels)
    index = EmbeddingIndex("exact").build(emb)
    given = SmartMiner(kappa=1.0, k=10, seed=5).update(emb, labels, index=index)
    assert all(torch.equal(x, y) for x, y in zip(own, given))
    with pytest.raises(ValueError, match="index"):
        SmartMiner().update(emb[:50], labels[:50], index=index)
