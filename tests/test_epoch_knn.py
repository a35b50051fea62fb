"""The refresh wired into SmartMiner, SmartBatchSampler and HardNeighborSampler (EpochKnn).

Oracle: the same objects with ``incremental=False`` (a cold build every epoch).
"""
import math

import pytest
import torch

from knn_oracles import relative_distance_error
from pml_ext import HardNeighborSampler, SmartBatchSampler, SmartMiner

N, D = 400, 8


def epochs(seed=0):
    """Two epochs' embeddings of N points: the second a small drift of the first."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % 20
    first = torch.randn(20, D, generator=gen)[labels] + 0.6 * torch.randn(N, D, generator=gen)
    return labels, first, first + 0.01 * torch.randn(N, D, generator=gen)


def test_smart_miner_refreshes_from_its_second_update_and_records_quality():
    labels, first, second = epochs()
    miner = SmartMiner(k=10, index_method="exact", seed=3)
    cold = SmartMiner(k=10, index_method="exact", seed=3, incremental=False)
    for name in ("ann_recall", "ann_relative_distance_error", "ann_incremental"):
        assert name in miner._record_these
    assert math.isnan(miner.ann_recall)
    miner.update(first, labels)
    assert miner.ann_incremental == 0.0 and miner.ann_recall == 1.0  # the exact cold build
    lists, epoch_knn = [], miner._epoch_knn
    knn_all = epoch_knn.knn_all

    def recording_knn_all(*args, **kwargs):  # keeps the refreshed lists for the recount below
        lists.append(knn_all(*args, **kwargs))
        return lists[-1]

    epoch_knn.knn_all = recording_knn_all
    cold.update(first, labels)
    for m in (miner, cold):
        m.update(second, labels)
    assert miner.ann_incremental == 1.0
    assert epoch_knn.index.last_refresh["mode"] == "incremental"
    assert miner.ann_recall == epoch_knn.index.last_refresh["recall"] > 0.95
    # The recorded error, recounted by brute force on the same sampled rows (seed 3 + 1 refresh).
    assert miner.ann_relative_distance_error == pytest.approx(
        relative_distance_error(second, lists[0][1], 10, 3 + 1, miner.distance), rel=1e-3, abs=1e-7)
    # The oracle: the triplets mined from the refreshed lists are the cold build's.
    assert all(torch.equal(w, c) for w, c in zip(miner.triplets, cold.triplets))


def test_smart_miner_without_refresh_builds_every_epoch():
    labels, first, second = epochs()
    miner = SmartMiner(k=10, index_method="exact", incremental=False)
    miner.update(first, labels)
    miner.update(second, labels)
    assert miner.ann_incremental == 0.0 and math.isnan(miner.ann_recall)


def test_smart_batch_sampler_copies_the_miners_records_and_gives_the_cold_build_epoch():
    labels, first, second = epochs()
    samplers = [SmartBatchSampler(SmartMiner(k=10, index_method="exact", batch_layout=True, incremental=incremental),
                                  batch_size=30, warmup_epochs=0, labels=labels, seed=4)
                for incremental in (True, False)]
    warm, cold = samplers
    assert "ann_recall" in warm._record_these
    for embeddings in (first, second):
        for sampler in samplers:
            sampler.update(embeddings, labels)
    assert warm.ann_incremental == 1.0 and warm.ann_recall == warm.miner.ann_recall
    assert cold.ann_incremental == 0.0
    # The oracle: the refreshed epoch is the cold build's, batch for batch.
    assert list(warm) == list(cold)


def test_hard_neighbor_sampler_refresh_gives_the_cold_build_negatives():
    labels, first, second = epochs(seed=1)
    warm = HardNeighborSampler(labels, batch_size=20, method="exact", seed=2)
    cold = HardNeighborSampler(labels, batch_size=20, method="exact", seed=2, incremental=False)
    for embeddings in (first, second):
        warm.update(embeddings)
        cold.update(embeddings)
    assert warm.ann_incremental == 1.0 and cold.ann_incremental == 0.0
    assert "ann_recall" in warm._record_these
    # The sampled recall is 1 and, the oracle, the negatives drawn from the refreshed lists
    # are the cold build's.
    assert warm.ann_recall == 1.0
    assert torch.equal(warm.hard_negatives, cold.hard_negatives)
    assert list(warm) == list(cold)


@pytest.mark.parametrize("make", [
    lambda: SmartMiner(refresh_params={"fan": -1}),
    lambda: HardNeighborSampler(torch.arange(40) % 4, batch_size=8, refresh_params={"fan": -1}),
])
def test_bad_refresh_params_fail_at_construction(make):
    with pytest.raises(ValueError, match="fan"):
        make()


def test_the_kept_graph_survives_state_dict_so_a_resumed_refresh_equals_the_uninterrupted_one():
    from pml_ext.index.epoch_knn import EpochKnn

    labels, first, second = epochs(1)
    third = second + 0.01 * torch.randn(N, D, generator=torch.Generator().manual_seed(9))
    through = EpochKnn("exact", seed=5)
    through.knn_all(first, 10, labels), through.knn_all(second, 10, labels)
    resumed = EpochKnn("exact", seed=5)
    resumed.load_state_dict(through.state_dict())
    assert resumed.ann_incremental == through.ann_incremental == 1.0
    ours, theirs = resumed.knn_all(third, 10, labels), through.knn_all(third, 10, labels)
    assert resumed.index.last_refresh["mode"] == "incremental"
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    with pytest.raises(ValueError, match="graph"):
        resumed.load_state_dict({"graph": torch.zeros(3, 2), "count": 0})
    with pytest.raises(ValueError, match="count"):
        resumed.load_state_dict({"graph": None, "count": -1})
    # The drift rule's memory of a poor full build travels with the state.
    state = {**through.state_dict(), "full_recall": 0.25}
    resumed.load_state_dict(state)
    assert resumed.state_dict()["full_recall"] == 0.25 == resumed.index.last_refresh["full_recall"]
    for bad in (1.5, "high", True):
        with pytest.raises(ValueError, match="full_recall"):
            resumed.load_state_dict({**state, "full_recall": bad})
