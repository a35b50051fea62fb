"""IsometricHardMiner (issue 6): statistics, the mining rule, the pool cap, errors, collapse.

Oracles: brute-force loops over anchors written from the formulas in docs/isometric_mining.md,
PML's own BatchHardMiner on the same inputs, and PML's training of the collapse experiment.
"""
import math

import pytest
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

import pml_ext
from pml_ext.miners.isometric_hard_miner import IsometricHardMiner
from pml_ext.utils.experiment import embed_dataset, evaluate_embeddings, seed_everything, train_metric_model

MARGIN = 0.2


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices: a second OpenMP thread only adds synchronisation, which costs up to 8x
    # wall time when the two cores are shared with other jobs. Results do not change.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clustered_batch(seed, batch=40, dim=6, classes=4, noise=0.01, device="cpu"):
    """Tight clusters around unit-norm centres: a healthy, well-separated batch."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(batch) % classes
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    emb = centres[labels] + noise * torch.randn(batch, dim, generator=gen)
    return emb.to(device), labels.to(device)


def collapsed_batch(seed, batch=40, dim=6, classes=4):
    """Every embedding within 1e-3 of one point (float64: float32 distances at this scale are
    mostly rounding noise, ties included, for PML's miners as for ours)."""
    gen = torch.Generator().manual_seed(seed)
    point = torch.randn(1, dim, generator=gen, dtype=torch.float64)
    noise = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=1)
    radius = 1e-3 * torch.rand(batch, 1, generator=gen, dtype=torch.float64)
    return point + radius * noise, torch.arange(batch) % classes


def brute_force_stats(emb, labels, margin, similarity=False):
    """v_a, spread, relative spread from the formulas, one anchor at a time."""
    x = torch.nn.functional.normalize(emb.double(), dim=1)
    n = len(labels)
    v, neg_diss = [], []
    for a in range(n):
        pos = [j for j in range(n) if j != a and labels[j] == labels[a]]
        negs = [j for j in range(n) if labels[j] != labels[a]]
        if similarity:
            s = lambda i, j: float(x[i] @ x[j])  # noqa: E731
            neg_diss += [1.0 - s(a, j) for j in negs]  # (S_aa + S_jj)/2 - S_aj with unit norms
            if pos and negs:
                v.append(max(0.0, max(s(a, j) for j in negs) - min(s(a, j) for j in pos) + margin))
        else:
            d = lambda i, j: float(torch.linalg.norm(x[i] - x[j]))  # noqa: E731
            neg_diss += [d(a, j) for j in negs]
            if pos and negs:
                v.append(max(0.0, max(d(a, j) for j in pos) - min(d(a, j) for j in negs) + margin))
    mean_neg = sum(neg_diss) / len(neg_diss)
    scale = 2.0  # 2 * mean norm of unit vectors (2 * mean S_ii for the cosine)
    return v, mean_neg / margin, mean_neg / scale


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("similarity", [False, True])
def test_statistics_match_a_brute_force_loop_over_anchors(seed, similarity, device):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(23, 5, generator=gen).to(device)
    labels = torch.randint(0, 4, (23,), generator=gen).to(device)
    labels[0] = 9  # a lone class: anchor 0 has no positive and must be skipped
    distance = CosineSimilarity() if similarity else LpDistance()
    miner = IsometricHardMiner(margin=MARGIN, distance=distance, collect_stats=True)
    miner(emb, labels)
    v, spread, relative = brute_force_stats(emb, labels, MARGIN, similarity)
    assert miner.d_iso_max == pytest.approx(max(v), abs=1e-5)
    assert miner.d_iso_mean == pytest.approx(sum(v) / len(v), abs=1e-5)
    assert miner.spread == pytest.approx(spread, rel=1e-5)
    assert miner.relative_spread == pytest.approx(relative, rel=1e-5)
    for name in miner._stat_names:
        assert type(getattr(miner, name)) is float, name
        assert name in miner._record_these_stats


def test_relative_spread_is_scale_free_and_spread_is_in_margins():
    emb, labels = clustered_batch(0)
    raw = LpDistance(normalize_embeddings=False)
    small, big = IsometricHardMiner(distance=raw), IsometricHardMiner(distance=raw)
    small(emb, labels)
    big(10 * emb, labels)
    assert big.relative_spread == pytest.approx(small.relative_spread, rel=1e-5)
    assert big.spread == pytest.approx(10 * small.spread, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_batch_gives_exactly_batch_hard_triplets(seed, device):
    emb, labels = clustered_batch(seed, device=device)
    miner = IsometricHardMiner(margin=MARGIN)
    ours = miner(emb, labels)
    assert miner.semi_hard_mode == 0.0 and miner.collapse_detected == 0.0
    assert miner.d_iso_mean < MARGIN  # the precondition of hard mining, checked independently below
    theirs = miners.BatchHardMiner()(emb, labels)
    assert len(ours[0]) == len(emb)
    for x, y in zip(ours, theirs):
        assert torch.equal(x, y)


def test_healthy_batch_with_similarity_and_a_reference_set_matches_batch_hard():
    emb, labels = clustered_batch(3, batch=24)
    ref, ref_labels = clustered_batch(3, batch=36)  # same centres (same seed), more samples
    for distance in (LpDistance(), CosineSimilarity()):
        ours = IsometricHardMiner(distance=distance)(emb, labels, ref, ref_labels)
        theirs = miners.BatchHardMiner(distance=distance)(emb, labels, ref, ref_labels)
        for x, y in zip(ours, theirs):
            assert torch.equal(x, y)


def semi_hard_oracle(emb, labels, triplets, margin):
    """Every triplet is (anchor, positive, negative) with d(a,p) < d(a,n) < d(a,p) + margin."""
    x = torch.nn.functional.normalize(emb.double(), dim=1)
    for a, p, n in zip(*[t.tolist() for t in triplets]):
        d_ap, d_an = float(torch.linalg.norm(x[a] - x[p])), float(torch.linalg.norm(x[a] - x[n]))
        assert a != p and labels[a] == labels[p] and labels[a] != labels[n]
        assert d_ap < d_an < d_ap + margin


@pytest.mark.parametrize("seed", [0, 1])
def test_collapsed_batch_is_detected_and_mined_semi_hard(seed):
    emb, labels = collapsed_batch(seed)
    miner = IsometricHardMiner(margin=MARGIN, triplets_per_anchor=3, semi_hard_draws=16, seed=seed)
    triplets = miner(emb, labels)
    assert miner.collapse_detected == 1.0 and miner.semi_hard_mode == 1.0
    # All distances are < 2e-3 << margin, so a negative is semi-hard for (a, p) iff it is
    # farther than p: a fraction q_ap of a's negatives. A draw of (a, p) gives a triplet with
    # probability 1 - (1 - q_ap)^16 (16 rejection draws); p is uniform over a's positives.
    x = torch.nn.functional.normalize(emb, dim=1)
    dist = torch.cdist(x, x)
    hit = []
    for a in range(len(emb)):
        negs = dist[a][labels != labels[a]]
        pos = [j for j in range(len(emb)) if j != a and labels[j] == labels[a]]
        hit.append(sum(1 - (1 - float((negs > dist[a, j]).double().mean())) ** 16 for j in pos) / len(pos))
    expected = 3 * sum(hit)
    sd = math.sqrt(3 * sum(h * (1 - h) for h in hit))
    assert abs(len(triplets[0]) - expected) < 4 * sd + 1
    assert torch.bincount(triplets[0], minlength=len(emb)).max() <= 3
    semi_hard_oracle(emb, labels, triplets, MARGIN)
    hard = miners.BatchHardMiner()(emb, labels)
    assert len(hard[0]) != len(triplets[0])
    # Batch-hard's triplets are all "hard" (d_an < d_ap) here, ours never are.
    x = torch.nn.functional.normalize(emb, dim=1)
    assert bool(((x[hard[0]] - x[hard[2]]).norm(dim=1) < (x[hard[0]] - x[hard[1]]).norm(dim=1)).any())


def test_a_spread_batch_no_better_than_the_constant_map_is_mined_semi_hard():
    gen = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(64, 8, generator=gen), torch.arange(64) % 4
    miner = IsometricHardMiner(margin=MARGIN)
    triplets = miner(emb, labels)
    v, _, _ = brute_force_stats(emb, labels, MARGIN)
    assert sum(v) / len(v) >= MARGIN  # random embeddings: worse than f(x) = const
    assert miner.collapse_detected == 0.0 and miner.semi_hard_mode == 1.0
    semi_hard_oracle(emb, labels, triplets, MARGIN)
    # Raising iso_threshold above the measured ratio turns hard mining back on.
    lenient = IsometricHardMiner(margin=MARGIN, iso_threshold=miner.d_iso_mean / MARGIN + 1)
    assert all(torch.equal(x, y) for x, y in zip(lenient(emb, labels), miners.BatchHardMiner()(emb, labels)))


def test_semi_hard_negatives_are_uniform_over_the_semi_hard_set():
    # One anchor (index 0) on a line, unnormalised L2: positive at 1.0, negatives at
    # 0.5 (hard), 1.1, 1.2, 1.3 (semi-hard for margin 0.35: 1.0 < d < 1.35), 2.0 (easy).
    emb = torch.tensor([[0.0], [1.0], [0.5], [1.1], [1.2], [1.3], [2.0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    miner = IsometricHardMiner(margin=0.35, distance=LpDistance(normalize_embeddings=False),
                               triplets_per_anchor=1, semi_hard_draws=16, seed=0)
    counts = torch.zeros(7)
    for _ in range(600):  # one triplet per anchor per call: independent draws across calls
        a, p, n = miner(emb, labels)
        assert miner.semi_hard_mode == 1.0
        counts += torch.bincount(n[a == 0], minlength=7)
    assert counts[[0, 1, 2, 6]].sum() == 0
    # 16 draws over 5 negatives, 3 of them semi-hard: a miss has probability (2/5)^16 ~ 4e-7.
    # Each count ~ Binomial(600, 1/3): mean 200, sd ~11.5; allow 4 sd.
    assert counts.sum() == 600
    assert bool(((counts[3:6] - 200).abs() < 46).all())


def test_max_negatives_caps_the_pool_and_is_re_read_every_call():
    emb, labels = clustered_batch(0, batch=64, classes=4)  # 48 negatives per anchor
    miner = IsometricHardMiner()
    hard = miner(emb, labels)
    assert miner.candidate_negatives == 48.0
    miner.max_negatives = 48  # a cap that is not binding changes nothing
    assert all(torch.equal(x, y) for x, y in zip(miner(emb, labels), hard))
    miner.max_negatives = 1  # one random negative per anchor: not always the hardest
    seen = set()
    for _ in range(5):
        a, p, n = miner(emb, labels)
        assert miner.candidate_negatives == 1.0 and miner.semi_hard_mode == 0.0
        assert torch.equal(p, hard[1]) and bool((labels[n] != labels[a]).all())
        seen.update(n[a == 0].tolist())
    assert len(seen) > 1
    miner.max_negatives = 7.6  # a controller may write floats: rounded to 8
    miner(emb, labels)
    assert miner.candidate_negatives == 8.0


def test_pooled_negative_is_the_hardest_of_its_pool_on_average():
    # With a pool of k out of N negatives, the chosen negative is the pool's minimum, so its
    # rank among all N negatives is the minimum of k uniform draws: E[rank] = (N + 1)/(k + 1) - 1
    # (0-based). N = 48, k = 4: 48 + 1 over 5 minus 1 = 8.8.
    emb, labels = clustered_batch(1, batch=64, classes=4, noise=0.3)
    miner = IsometricHardMiner(max_negatives=4, iso_threshold=100.0, collapse_threshold=1e-9, seed=3)
    x = torch.nn.functional.normalize(emb, dim=1)
    dist = torch.cdist(x, x)
    ranks = []
    for _ in range(30):
        a, p, n = miner(emb, labels)
        assert miner.semi_hard_mode == 0.0
        for anchor, neg in zip(a.tolist(), n.tolist()):
            negs = (labels != labels[anchor]).nonzero().squeeze(1)
            order = negs[dist[anchor, negs].argsort()]
            ranks.append((order == neg).nonzero().item())
    assert sum(ranks) / len(ranks) == pytest.approx(8.8, abs=0.8)


def test_same_seed_same_triplets_and_reset_generator_repeats():
    emb, labels = collapsed_batch(0, batch=48)
    one, two = IsometricHardMiner(seed=7, max_negatives=5), IsometricHardMiner(seed=7, max_negatives=5)
    first = [one(emb, labels) for _ in range(3)]
    second = [two(emb, labels) for _ in range(3)]
    for t1, t2 in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(t1, t2))
    assert not all(torch.equal(x, y) for x, y in zip(first[0], first[1]))  # the stream moves on
    one.reset_generator()
    assert all(torch.equal(x, y) for x, y in zip(one(emb, labels), first[0]))
    other = IsometricHardMiner(seed=8, max_negatives=5)(emb, labels)
    assert not all(torch.equal(x, y) for x, y in zip(other, first[0]))


@pytest.mark.parametrize(
    "kwargs, err, word",
    [
        ({"margin": -0.1}, ValueError, "margin"),
        ({"max_negatives": 0}, ValueError, "max_negatives"),
        ({"max_negatives": "all"}, TypeError, "max_negatives"),
        ({"collapse_threshold": 0}, ValueError, "collapse_threshold"),
        ({"iso_threshold": -1}, ValueError, "iso_threshold"),
        ({"triplets_per_anchor": 0}, ValueError, "triplets_per_anchor"),
        ({"semi_hard_draws": 2.5}, TypeError, "semi_hard_draws"),
        ({"semi_hard_draws": 0}, ValueError, "semi_hard_draws"),
        ({"seed": "x"}, TypeError, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, err, word):
    with pytest.raises(err, match=word):
        IsometricHardMiner(**kwargs)


@pytest.mark.parametrize(
    "emb, labels, err, word",
    [
        (torch.tensor([[0.0, math.nan], [1.0, 0.0]]), torch.tensor([0, 1]), ValueError, "embeddings"),
        (torch.tensor([[0.0, math.inf], [1.0, 0.0]]), torch.tensor([0, 1]), ValueError, "embeddings"),
        (torch.zeros(4), torch.tensor([0, 1, 0, 1]), ValueError, "embeddings must be 2-D"),
        (torch.zeros(4, 2), torch.tensor([0, 1, 0]), ValueError, "labels has length 3"),
        (torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long), ValueError, "labels must be 1-D"),
        (torch.zeros(4, 2), torch.tensor([0.0, 1.0, 0.0, 1.0]), TypeError, "labels"),
    ],
)
def test_bad_inputs_name_the_argument(emb, labels, err, word):
    with pytest.raises(err, match=word):
        IsometricHardMiner()(emb, labels)


def test_bad_reference_and_bad_pool_at_call_time():
    emb, labels = clustered_batch(0, batch=8)
    miner = IsometricHardMiner()
    with pytest.raises(ValueError, match="ref_emb has dimension 3"):
        miner(emb, labels, torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="together"):
        miner(emb, labels, emb)
    miner.max_negatives = -2
    with pytest.raises(ValueError, match="max_negatives"):
        miner(emb, labels)


@pytest.mark.parametrize("emb", [torch.randn(6, 3), torch.full((6, 3), 0.5)])
def test_single_class_batch_gives_empty_triplets(emb):
    miner = IsometricHardMiner(collect_stats=True)
    a, p, n = miner(emb, torch.zeros(6, dtype=torch.long))
    assert a.numel() == p.numel() == n.numel() == 0 and a.dtype == torch.long
    assert miner.num_triplets == 0 and miner.semi_hard_mode == 0.0 and miner.d_iso_max == 0.0
    # PML's loss then returns a zero that is still connected to the graph.
    leaf = emb.clone().requires_grad_()
    loss = losses.TripletMarginLoss(margin=MARGIN)(leaf, torch.zeros(6, dtype=torch.long), (a, p, n))
    loss.backward()
    assert float(loss.detach()) == 0.0 and leaf.grad is not None


def test_all_singleton_classes_give_empty_triplets_but_measure_spread():
    emb, labels = clustered_batch(0, batch=4, classes=4)
    miner = IsometricHardMiner()
    assert all(t.numel() == 0 for t in miner(emb, labels))
    assert miner.spread > 0 and miner.d_iso_mean == 0.0


def test_collapse_experiment_batch_hard_collapses_isometric_does_not():
    """Digits 0-4 -> 5-9, MLP 64-256-2, TripletMarginLoss(0.2), Adam 1e-3, batch 256, 30 epochs."""
    train, test = pml_ext.digits_split()

    def run(miner):
        seed_everything(0)
        model = pml_ext.MLP([64, 256, 2])
        train_metric_model(model, train.data, train.labels, losses.TripletMarginLoss(margin=0.2), miner,
                           batch_size=256, epochs=30, seed=0)
        return evaluate_embeddings(embed_dataset(model, test.data), test.labels, include=("precision_at_1",))

    hard = run(miners.BatchHardMiner())
    assert hard["mean_distance"] < 0.1
    iso_miner = IsometricHardMiner(margin=0.2, seed=0)
    ours = run(iso_miner)
    assert ours["mean_distance"] > 0.5
    assert ours["precision_at_1"] >= 0.30
