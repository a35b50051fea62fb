"""smart_triplets against a per-anchor loop written straight from Algorithm 1 (docs/smart_mining.md)."""
import pytest
import torch

from pml_ext import smart_triplets
from pml_ext.miners.smart_triplets import random_triplets

OUTSIDE = "outside"


def algorithm1_reference(nbr_row, dist_row, labels, anchor, kappa, ref_labels=None):
    """One anchor's walk, as the paper states it; returns its plan.

    ``("mined", p, n)`` with ``p = OUTSIDE`` when no listed positive fits, then
    ``("random",)`` if ``neg`` is empty from the start. Plain Python, no tensors.
    """
    ref_labels = labels if ref_labels is None else ref_labels
    own = labels[anchor]
    pos, neg, bound = [], [], None
    for x, d in zip(nbr_row, dist_row):
        is_pos = ref_labels[x] == own
        if bound is None:
            if is_pos:  # the first positive sets the bound and is kept with no valid negative
                bound = kappa * d
                pos.append((x, set()))
            continue
        if d < bound:
            continue
        if d > bound:  # "beyond the bound"; eq. 6 is strict, so d == bound is not beyond
            if is_pos:
                pos.append((x, set(neg)))
            else:
                neg.append(x)
    if not neg:
        return [("random",)]
    plan = []
    while neg:
        n = neg[0]
        p = next((p for p, valid in pos if n in valid), OUTSIDE)
        plan.append(("mined", p, n))
        neg.pop(0)
    return plan


def check_against_reference(nbr, dist, labels, kappa, seed=0, ref_labels=None):
    """Run both; every non-random choice must be equal, every random one must be legal."""
    a, p, n, stats = smart_triplets(nbr, dist, labels, kappa, torch.Generator().manual_seed(seed),
                                    ref_labels=ref_labels, return_stats=True)
    lab = labels.tolist()
    ref = lab if ref_labels is None else ref_labels.tolist()
    num_ref = len(ref)
    expected = {"num_mined": 0, "num_outside_positive": 0, "num_random": 0, "num_dropped": 0}
    for anchor in range(nbr.shape[0]):
        row = nbr[anchor].tolist()
        plan = algorithm1_reference(row, dist[anchor].tolist(), lab, anchor, kappa, ref)
        mine = (a == anchor).nonzero().flatten().tolist()
        got = [(int(p[i]), int(n[i]), bool(stats["is_random"][i])) for i in mine]
        members = [j for j in range(num_ref) if ref[j] == lab[anchor] and (ref_labels is not None or j != anchor)]
        others = [j for j in range(num_ref) if ref[j] != lab[anchor]]
        if plan == [("random",)]:
            if members and others:
                expected["num_random"] += 1
                assert len(got) == 1 and got[0][2], f"anchor {anchor}: expected one random triplet, got {got}"
                assert got[0][0] in members and got[0][1] in others
            else:
                expected["num_dropped"] += 1
                assert got == []
            continue
        outside = [j for j in members if j not in row]
        kept = [step for step in plan if step[1] != OUTSIDE or outside]
        expected["num_dropped"] += len(plan) - len(kept)
        assert len(got) == len(kept), f"anchor {anchor}: {got} vs {kept}"
        for (gp, gn, is_random), (_, ep, en) in zip(got, kept):
            assert not is_random and gn == en
            if ep == OUTSIDE:
                expected["num_outside_positive"] += 1
                assert gp in outside
            else:
                assert gp == ep
        expected["num_mined"] += len(kept)
    assert {key: stats[key] for key in expected} == expected
    return a, p, n, stats


# Hand-built lists over 12 samples: A = 0-3, B = 4-7, C = 8-11; k = 7, kappa = 2.
HAND_LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
HAND_ROWS = {
    # Several positives, a negative inside the bound: first positive 1 (d=1) -> bound 2;
    # 4 comes before it (skipped), 7 (1.5) is inside the bound; neg = [5, 8];
    # pos = (1, {}), (2, {5}), (3, {5, 8}) -> triplets (0, 2, 5), (0, 3, 8).
    0: ([4, 1, 7, 5, 2, 8, 3], [0.5, 1.0, 1.5, 2.5, 3.0, 3.5, 4.0]),
    # No positive in the list: everything is skipped, neg stays empty -> one random triplet.
    1: ([4, 5, 6, 8, 9, 10, 7], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    # No valid negative: bound = 2 * 0.5 = 1; 4, 5, 9 lie inside it -> random triplet.
    2: ([8, 0, 4, 5, 9, 1, 3], [0.3, 0.5, 0.6, 0.7, 0.8, 1.5, 1.6]),
    # No positive after the negatives: bound 2; 4 sits exactly on it (eq. 6 is strict,
    # not valid); 8, 5, 9, 6, 10 each take a positive from outside the list: {1, 2}.
    3: ([0, 4, 8, 5, 9, 6, 10], [1.0, 2.0, 3.0, 3.1, 3.2, 3.3, 3.4]),
    # Every other B is listed before the negatives: no positive is left outside the
    # list, so the four negatives are dropped and anchor 4 emits nothing.
    4: ([5, 6, 7, 0, 1, 2, 3], [0.1, 0.2, 0.3, 0.9, 1.0, 1.1, 1.2]),
}


def hand_lists():
    nbr, dist = [], []
    for i in range(12):
        if i in HAND_ROWS:
            row, d = HAND_ROWS[i]
        else:  # the seven next samples, cyclically, at distances 1..7
            row, d = [(i + j) % 12 for j in range(1, 8)], [float(j) for j in range(1, 8)]
        nbr.append(row)
        dist.append(d)
    return torch.tensor(nbr), torch.tensor(dist)


def test_hand_built_lists_cover_every_branch():
    nbr, dist = hand_lists()
    a, p, n, stats = check_against_reference(nbr, dist, HAND_LABELS, kappa=2.0)
    by_anchor = {i: [(int(p[t]), int(n[t])) for t in (a == i).nonzero().flatten()] for i in range(5)}
    assert by_anchor[0] == [(2, 5), (3, 8)]
    assert len(by_anchor[1]) == 1 and len(by_anchor[2]) == 1
    assert [n_ for _, n_ in by_anchor[3]] == [8, 5, 9, 6, 10]
    assert all(p_ in (1, 2) for p_, _ in by_anchor[3])
    assert by_anchor[4] == []
    assert stats["num_dropped"] >= 4 and stats["num_outside_positive"] >= 5


def knn_lists(num, dim, num_classes, k, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=gen, dtype=dtype)
    labels = torch.randint(0, num_classes, (num,), generator=gen)
    emb = centers[labels] * 0.7 + torch.randn(num, dim, generator=gen, dtype=dtype)
    sq = torch.cdist(emb, emb) ** 2
    sq.fill_diagonal_(float("inf"))
    dist, nbr = sq.sort(dim=1)
    return nbr[:, :k], dist[:, :k], labels, sq


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kappa", [0.5, 1.0, 1.5, 4.0])
def test_random_lists_match_the_per_anchor_loop(seed, kappa):
    nbr, dist, labels, _ = knn_lists(120, 6, 5, k=12, seed=seed)
    check_against_reference(nbr, dist, labels, kappa, seed=seed)


def test_separate_reference_set_matches_the_per_anchor_loop():
    nbr, dist, labels, sq = knn_lists(90, 5, 4, k=10, seed=7)
    # Anchors 0-29 query the reference samples 30-89.
    ref_sq = sq[:30, 30:]
    dist, nbr = ref_sq.sort(dim=1)
    check_against_reference(nbr[:, :10], dist[:, :10], labels[:30], 1.5, ref_labels=labels[30:])


@pytest.mark.parametrize("kappa", [1.0, 2.0])
def test_mined_triplets_obey_eq6_order_and_uniqueness(kappa):
    nbr, dist, labels, sq = knn_lists(300, 8, 6, k=24, seed=3)
    a, p, n, stats = smart_triplets(nbr, dist, labels, kappa, torch.Generator().manual_seed(0), return_stats=True)
    mined = ~stats["is_random"]
    a, p, n = a[mined], p[mined], n[mined]
    assert a.numel() > 100
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())
    # Distinct continuous distances: every mined triplet is strictly active ...
    assert bool((sq[a, n] < sq[a, p]).all())
    # ... and its negative is beyond kappa times the nearest listed positive (eq. 6).
    same = labels[nbr] == labels.unsqueeze(1)
    nearest_pos = dist.gather(1, same.int().argmax(dim=1, keepdim=True)).squeeze(1)
    assert bool((sq[a, n] > kappa * nearest_pos[a]).all())
    pairs = a * labels.numel() + n
    assert pairs.unique().numel() == pairs.numel()  # no negative twice for one anchor


def test_larger_kappa_gives_fewer_mined_triplets():
    nbr, dist, labels, _ = knn_lists(200, 6, 5, k=20, seed=1)
    counts = [smart_triplets(nbr, dist, labels, kappa, return_stats=True)[3]["num_mined"] for kappa in (1, 2, 4, 16)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_outside_positives_are_uniform_over_the_unlisted_members():
    # One anchor (label 0) queries a reference set of 6 positives and 2000 negatives. Its
    # list holds positive 0 first and then every negative: each of the 2000 negatives
    # needs a positive from outside the list, i.e. uniform over positives 1-5.
    ref_labels = torch.cat([torch.zeros(6, dtype=torch.long), torch.ones(2000, dtype=torch.long)])
    nbr = torch.cat([torch.tensor([0]), torch.arange(6, 2006)]).unsqueeze(0)
    dist = torch.linspace(1.0, 3.0, 2001).unsqueeze(0)
    a, p, n = smart_triplets(nbr, dist, torch.tensor([0]), 1.0, torch.Generator().manual_seed(0), ref_labels=ref_labels)
    assert n.tolist() == list(range(6, 2006))
    counts = torch.bincount(p, minlength=6)
    assert counts[0] == 0
    # 2000 draws over 5 values: 400 each, sd sqrt(2000 * 0.2 * 0.8) ~ 17.9; 80 is ~4.5 sd.
    assert bool(((counts[1:] - 400).abs() < 80).all()), counts


def test_same_generator_seed_gives_the_same_triplets():
    nbr, dist, labels, _ = knn_lists(150, 6, 5, k=8, seed=2)
    runs = [smart_triplets(nbr, dist, labels, 1.0, torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert all(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not all(torch.equal(x, y) for x, y in zip(runs[0], runs[2]))  # random parts exist here


def test_empty_lists_give_one_random_triplet_per_anchor_and_empty_input_gives_nothing():
    labels = torch.tensor([0, 0, 1, 1, 2])
    a, p, n, stats = smart_triplets(torch.zeros(5, 0, dtype=torch.long), torch.zeros(5, 0), labels, 1.0,
                                    return_stats=True)
    # Sample 4 is alone in class 2: no positive, so no triplet for it.
    assert a.tolist() == [0, 1, 2, 3] and stats["num_random"] == 4 and stats["num_dropped"] == 1
    assert bool((labels[a] == labels[p]).all()) and bool((a != p).all()) and bool((labels[a] != labels[n]).all())
    empty = smart_triplets(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 1.0)
    assert all(t.numel() == 0 and t.dtype == torch.long for t in empty)


def test_random_triplets_are_legal():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    anchors = torch.arange(6).repeat(50)
    a, p, n = random_triplets(anchors, labels, torch.Generator().manual_seed(0))
    assert a.numel() == 250  # anchor 5 (class 2 alone) is left out
    assert bool((labels[a] == labels[p]).all()) and bool((a != p).all()) and bool((labels[a] != labels[n]).all())


@pytest.mark.parametrize("kwargs, error, match", [
    ({"kappa": 0.0}, ValueError, "kappa"),
    ({"kappa": -1.0}, ValueError, "kappa"),
    ({"kappa": float("nan")}, ValueError, "kappa"),
    ({"neighbor_distances": torch.tensor([[1.0, float("nan")]] * 4)}, ValueError, "neighbor_distances"),
    ({"neighbor_distances": torch.tensor([[1.0, float("inf")]] * 4)}, ValueError, "neighbor_distances"),
    ({"neighbor_distances": torch.tensor([[1.0, 2.0, 3.0]] * 4)}, ValueError, "neighbor_distances"),
    ({"neighbor_indices": torch.tensor([1, 2, 3, 0])}, ValueError, "neighbor_indices"),
    ({"neighbor_indices": torch.tensor([[1.0, 2.0]] * 4)}, TypeError, "neighbor_indices"),
    ({"labels": torch.tensor([0, 0, 1])}, ValueError, "labels"),
    ({"neighbor_distances": torch.tensor([[2.0, 1.0]] * 4)}, ValueError, "sorted"),
    ({"neighbor_indices": torch.tensor([[1, 2], [0, 2], [0, 1], [3, 0]])}, ValueError, "anchor itself"),
    ({"neighbor_indices": torch.tensor([[1, 4], [0, 2], [0, 1], [1, 0]])}, ValueError, r"\[0, 4\)"),
    ({"neighbor_indices": torch.tensor([[1, 1], [0, 2], [0, 1], [1, 0]])}, ValueError, "twice"),
])
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    args = {"neighbor_indices": torch.tensor([[1, 2], [0, 2], [0, 1], [1, 0]]),
            "neighbor_distances": torch.tensor([[1.0, 2.0]] * 4), "labels": torch.tensor([0, 0, 1, 1]), "kappa": 1.0}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        smart_triplets(**args)
