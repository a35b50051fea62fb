"""Issue 13 (smart mining): the sampler's mined share counts only triplets Algorithm 1 really mined,
a shortfall is filled with random triplets (no repeats), and the controller keeps kappa >= 1."""
import math

import pytest
import torch

from pml_ext import AdaptiveController, SmartBatchSampler, SmartMiner, smart_triplets

# Hand-built lists: classes {0..4} and {5..9}, k = 4, squared distances 1, 2, 3, 4.
# Anchor 0: [1+, 5-, 2+, 6-]; anchor 1: [5-, 0+, 6-, 2+]; anchors 2..9 list positives only.
LABELS = torch.tensor([0] * 5 + [1] * 5)
DIST = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).repeat(10, 1)


def hand_lists():
    rows = [[1, 5, 2, 6], [5, 0, 6, 2]]
    for i in range(2, 10):
        rows.append([j for j in range(10) if LABELS[j] == LABELS[i] and j != i])
    return torch.tensor(rows)


# Algorithm 1 by hand, as {(anchor, negative)} of the really mined triplets:
# kappa 1:   anchor 0, bound 1: 5 (pos 2 after it), 6 (no listed positive after: from {3, 4});
#            anchor 1, bound 2 (first positive 0 at d=2): 6 (pos 2 after it); 5 is before p_nn.
# kappa 2.5: anchor 0, bound 2.5: only 6; anchor 1, bound 5: nothing.
# kappa 5:   nothing. Every anchor without a mined triplet gets one random fallback triplet.
EXPECTED = {1.0: {(0, 5), (0, 6), (1, 6)}, 2.5: {(0, 6)}, 5.0: set()}


class ListIndex:
    """An ``EmbeddingIndex`` stand-in that returns the hand-built lists (in LpDistance units)."""

    num_points = 10

    def knn_all(self, k):
        return DIST.sqrt(), hand_lists()


def hand_sampler(kappa, mined_fraction=1.0, triplets_per_epoch=10, batch_size=6):
    miner = SmartMiner(kappa=kappa, k=4, seed=0)
    miner.update(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), LABELS, index=ListIndex())
    sampler = SmartBatchSampler(miner, batch_size, mined_fraction=mined_fraction, warmup_epochs=0, seed=0,
                                triplets_per_epoch=triplets_per_epoch)
    trip = torch.tensor(list(sampler)).view(-1, 3)
    return sampler, miner, trip


def pairs(trip):
    return [(int(a), int(n)) for a, n in zip(trip[:, 0], trip[:, 2])]


# ---------------------------------------------------------------- smart_triplets' mask
@pytest.mark.parametrize("kappa", sorted(EXPECTED))
def test_mined_mask_marks_exactly_algorithm1s_mined_triplets(kappa):
    gen = torch.Generator().manual_seed(0)
    a, p, n, is_mined = smart_triplets(hand_lists(), DIST, LABELS, kappa, gen, return_mined_mask=True)
    assert set(zip(a[is_mined].tolist(), n[is_mined].tolist())) == EXPECTED[kappa]
    assert int(is_mined.sum()) == len(EXPECTED[kappa])
    # The rest are the random fallback triplets, one per anchor that mined nothing.
    mined_anchors = {anchor for anchor, _ in EXPECTED[kappa]}
    assert sorted(a[~is_mined].tolist()) == [i for i in range(10) if i not in mined_anchors]
    assert bool((LABELS[a] == LABELS[p]).all() and (LABELS[a] != LABELS[n]).all())
    if kappa == 1.0:  # negative 6 of anchor 0 has no listed positive after it: one from {3, 4}
        assert int(p[(a == 0) & (n == 6)]) in (3, 4) and int(p[(a == 0) & (n == 5)]) == 2


def test_smart_triplets_outputs_stay_backward_compatible():
    args = (hand_lists(), DIST, LABELS, 1.0)
    plain = smart_triplets(*args, torch.Generator().manual_seed(0))
    *with_stats, stats = smart_triplets(*args, torch.Generator().manual_seed(0), return_stats=True)
    *both, mask, stats2 = smart_triplets(*args, torch.Generator().manual_seed(0), return_mined_mask=True,
                                         return_stats=True)
    assert len(plain) == 3 and all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(plain, with_stats, both))
    assert torch.equal(stats["is_mined"], ~stats["is_random"]) and torch.equal(mask, stats2["is_mined"])
    assert stats["num_mined"] == int(mask.sum()) == 3


# ---------------------------------------------------------------- the sampler's mined share
@pytest.mark.parametrize("kappa", sorted(EXPECTED))
def test_sampler_mines_only_really_mined_triplets_and_records_both_shares(kappa):
    sampler, miner, trip = hand_sampler(kappa)  # 5 batches of 2 triplets, all asked to be mined
    assert miner.triplet_is_mined.shape == miner.triplets[0].shape
    mined = trip[sampler.epoch_mined_mask.flatten()]
    assert set(pairs(mined)) == EXPECTED[kappa] and len(mined) == len(EXPECTED[kappa])
    expected_mined = len(EXPECTED[kappa])
    assert sampler.num_mined_in_epoch == expected_mined and sampler.num_random_in_epoch == 10 - expected_mined
    assert sampler.num_shortfall_in_epoch == 10 - expected_mined
    assert sampler.mined_share_in_epoch == pytest.approx(expected_mined / 10)
    assert sampler.random_share_in_epoch == pytest.approx(1 - expected_mined / 10)
    names = {"num_mined_in_epoch", "num_random_in_epoch", "num_shortfall_in_epoch", "mined_share_in_epoch",
             "random_share_in_epoch"}
    assert names <= set(sampler._record_these)
    assert all(type(getattr(sampler, name)) is float for name in names)


def test_mined_fraction_asks_for_a_share_and_gets_at_most_the_pool():
    # 0.5 of 2 per batch = 1 mined per batch, 5 asked, 3 really mined exist at kappa 1.
    sampler, _, trip = hand_sampler(1.0, mined_fraction=0.5)
    assert sampler.num_mined_in_epoch == 3 and sampler.num_shortfall_in_epoch == 2
    # Spread evenly, at the head of their batches.
    assert sampler.epoch_mined_mask.sum(dim=1).tolist() in ([0, 1, 0, 1, 1], [1, 1, 0, 1, 0], [0, 1, 1, 0, 1])
    assert not bool(sampler.epoch_mined_mask[:, 1].any())
    sampler, _, _ = hand_sampler(2.5, mined_fraction=0.0)
    assert sampler.num_mined_in_epoch == 0 and sampler.random_share_in_epoch == 1.0


def test_shortfall_is_filled_with_random_triplets_not_repeats():
    sampler, _, trip = hand_sampler(1.0, triplets_per_epoch=20)  # 20 asked, 3 mined
    keys = pairs(trip)
    assert len(set(keys)) == len(keys) == 20  # no (anchor, negative) twice, mined or random
    fill = trip[~sampler.epoch_mined_mask.flatten()]
    assert len(fill) == 17 and not set(pairs(fill)) & EXPECTED[1.0]
    assert bool((LABELS[fill[:, 0]] == LABELS[fill[:, 1]]).all() and (fill[:, 0] != fill[:, 1]).all())
    assert bool((LABELS[fill[:, 0]] != LABELS[fill[:, 2]]).all())


def test_dense_epochs_enumerate_free_pairs_and_impossible_ones_raise():
    # 10 anchors x 5 negatives = 50 distinct pairs; 40 needs the exact (enumerated) draw.
    sampler, _, trip = hand_sampler(1.0, triplets_per_epoch=40)
    assert len(set(pairs(trip))) == 40 and set(pairs(trip[sampler.epoch_mined_mask.flatten()])) == EXPECTED[1.0]
    with pytest.raises(ValueError, match="triplets_per_epoch"):
        hand_sampler(1.0, triplets_per_epoch=52)


def test_no_repeated_anchor_negative_in_a_real_epoch_with_a_shortfall():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (150,), generator=gen)
    emb = torch.randn(150, 8, generator=gen) + 2 * torch.nn.functional.one_hot(labels, 8).float()
    for kappa, per_epoch in ((1.0, 120), (16.0, 400)):
        miner = SmartMiner(kappa=kappa, k=32, index_method="exact", seed=0)
        sampler = SmartBatchSampler(miner, 30, mined_fraction=0.75, warmup_epochs=0, triplets_per_epoch=per_epoch)
        sampler.update(emb, labels)
        trip = torch.tensor(list(sampler)).view(-1, 3)
        keys = trip[:, 0] * 150 + trip[:, 2]
        assert keys.unique().numel() == keys.numel() == trip.shape[0]
        pool = torch.stack(miner.triplets, 1)[miner.triplet_is_mined]
        mined = trip[sampler.epoch_mined_mask.flatten()]
        assert set(map(tuple, mined.tolist())) <= set(map(tuple, pool.tolist()))
        wanted = len(sampler) // 30 * round(0.75 * 10)
        assert sampler.num_mined_in_epoch == min(wanted, pool.shape[0])
        assert sampler.num_shortfall_in_epoch == wanted - sampler.num_mined_in_epoch
    assert sampler.num_shortfall_in_epoch > 0  # kappa 16 mines fewer than the 300 asked


def test_warmup_epochs_are_all_random_and_recorded_so():
    sampler = SmartBatchSampler(SmartMiner(), 6, warmup_epochs=1, labels=LABELS, triplets_per_epoch=10)
    trip = torch.tensor(list(sampler)).view(-1, 3)
    assert sampler.random_share_in_epoch == 1.0 and sampler.mined_share_in_epoch == 0.0
    assert sampler.num_shortfall_in_epoch == 0.0 and len(set(pairs(trip))) == 10


# ---------------------------------------------------------------- the controller's kappa floor
def run_epochs(ctrl, error, epochs):
    for _ in range(epochs):
        for _ in range(3):
            ctrl.observe(error)
        ctrl.step()


def test_controller_keeps_smartminer_kappa_at_least_one_by_default():
    miner = SmartMiner(kappa=4.0)
    # Error 0 < target: a decreasing plant asks for a smaller kappa, epoch after epoch.
    ctrl = AdaptiveController(miner, "kappa", 0.5, start_epoch=1)
    assert ctrl.bounds is None and ctrl.limits == (1.0, None)
    kappas = []
    for _ in range(6):
        run_epochs(ctrl, 0.0, 1)
        kappas.append(miner.kappa)
        assert miner.kappa >= 1.0
    assert kappas == [2.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    log = ctrl.step_log
    assert all(entry["clipped_by_step"] == 1.0 for entry in log)  # 0.47x proposed, x0.5 allowed
    assert [entry["clipped_by_bounds"] for entry in log] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert all(entry["used_fallback"] == 1.0 for entry in log)  # equal errors: no line to fit
    assert log[2]["proposal"] < 1.0 and log[2]["new_setting"] == 1.0
    assert ctrl.clipped_by_bounds == 1.0 and ctrl.used_fallback == 1.0 and ctrl.proposal < 1.0
    assert {"proposal", "used_fallback", "clipped_by_step", "clipped_by_bounds"} <= set(ctrl._record_these)


def test_explicit_bounds_win_and_dotted_paths_find_the_range():
    miner = SmartMiner(kappa=1.0)
    ctrl = AdaptiveController(miner, "kappa", 0.5, start_epoch=1, bounds=(0.25, 10.0))
    run_epochs(ctrl, 0.0, 3)
    assert miner.kappa == 0.25 and ctrl.limits == (0.25, 10.0)
    sampler = SmartBatchSampler(SmartMiner(kappa=0.5), 6)  # starts below the floor: the first step lifts it
    ctrl = AdaptiveController(sampler, "miner.kappa", 0.5, measure="miner.fraction_active", start_epoch=1)
    run_epochs(ctrl, 0.0, 1)
    assert sampler.miner.kappa == 1.0 and ctrl.clipped_by_bounds == 1.0
    # SmartBatchSampler.mined_fraction is kept in (0, 1] the same way.
    ctrl = AdaptiveController(SmartBatchSampler(SmartMiner(), 6, mined_fraction=0.8), "mined_fraction", 0.5,
                              measure=lambda: 0.0, direction="increasing", start_epoch=1)
    assert ctrl.limits == (0.0, 1.0)
    run_epochs(ctrl, 0.0, 2)
    assert ctrl.setting == 1.0


def test_epochs_without_a_step_record_no_clip_or_fallback():
    ctrl = AdaptiveController(SmartMiner(kappa=1.0), "kappa", 0.5, start_epoch=3)
    run_epochs(ctrl, 0.0, 3)
    ctrl.step()  # no readings
    flags = [(e["used_fallback"], e["clipped_by_bounds"]) for e in ctrl.step_log]
    assert flags == [(0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0)]
    assert math.isnan(ctrl.step_log[0]["proposal"]) and math.isnan(ctrl.step_log[3]["error"])


def test_state_dict_carries_the_step_log_and_loads_version_1(tmp_path):
    miner = SmartMiner(kappa=2.0)
    ctrl = AdaptiveController(miner, "kappa", 0.5, start_epoch=1)
    run_epochs(ctrl, 0.0, 3)
    torch.save(ctrl.state_dict(), tmp_path / "ctrl.pt")
    fresh = AdaptiveController(SmartMiner(kappa=2.0), "kappa", 0.5, start_epoch=1)
    fresh.load_state_dict(torch.load(tmp_path / "ctrl.pt", weights_only=True))
    same = {k: v for k, v in ctrl.state_dict().items() if k not in ("slope", "intercept")}  # NaN: no fit
    assert {k: fresh.state_dict()[k] for k in same} == same and fresh.controlled.kappa == 1.0
    assert fresh.clipped_by_bounds == 1.0 and len(fresh.step_log) == 3
    old = {k: v for k, v in ctrl.state_dict().items()
           if k not in ("proposal", "clipped_by_step", "clipped_by_bounds", "step_log")} | {"version": 1}
    fresh.load_state_dict(old)
    assert fresh.step_log == [] and fresh.clipped_by_bounds == 0.0 and fresh.controlled.kappa == 1.0


@pytest.mark.parametrize("ranges, match", [({"kappa": (2.0, 1.0)}, "lo < hi"), ({"kappa": "x"}, "pair")])
def test_malformed_effective_range_raises_naming_it(ranges, match):
    class Odd(SmartMiner):
        effective_ranges = ranges

    with pytest.raises(ValueError, match=f"effective_ranges.*{match}"):
        AdaptiveController(Odd(), "kappa", 0.5)
