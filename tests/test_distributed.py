"""pml_ext under torch.distributed: gloo on CPU, world size 2, spawned processes."""
import re

import pytest
import torch
import torch.multiprocessing as mp

from dist_utils import run_world
from dist_workers import failing_worker, gather_worker
from pml_ext.samplers.distributed_shard_sampler import DistributedShardSampler


def test_ranks_gather_identical_training_set_in_dataset_order(tmp_path):
    run_world(gather_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    gen = torch.Generator().manual_seed(0)
    expected_emb = torch.randn(37, 4, generator=gen)
    expected_labels = torch.randint(0, 5, (37,), generator=gen)
    for r in (r0, r1):
        assert torch.equal(r["emb"], expected_emb)
        assert torch.equal(r["labels"], expected_labels)
        assert r["mean"] == pytest.approx(0.5)


def test_a_failing_rank_makes_the_others_exit_with_an_error(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 failed on purpose"):
        run_world(failing_worker, str(tmp_path), timeout_seconds=5)
    # Rank 0 was not killed in its collective nor left hanging there: it got gloo's error
    # about the lost peer and wrote it before exiting.
    error = (tmp_path / "rank0_error.txt").read_text()
    assert re.search(r"closed by peer|timed? ?out", error, re.IGNORECASE), error


@pytest.mark.parametrize("num_samples, batch_size, world_size", [(64, 8, 2), (70, 8, 2), (70, 8, 3), (5, 8, 2)])
def test_shards_are_disjoint_and_their_union_is_the_epoch(num_samples, batch_size, world_size):
    epoch = torch.randperm(num_samples, generator=torch.Generator().manual_seed(1)).tolist()
    shards = [list(DistributedShardSampler(epoch, batch_size, rank=r, world_size=world_size))
              for r in range(world_size)]
    for r, shard in enumerate(shards):
        assert len(shard) == len(DistributedShardSampler(epoch, batch_size, rank=r, world_size=world_size))
    # Whole batches, in round-robin order, reassemble the single-process epoch exactly.
    batches = [[s[i:i + batch_size] for i in range(0, len(s), batch_size)] for s in shards]
    rebuilt = []
    for step in range(max(len(b) for b in batches)):
        for r in range(world_size):
            if step < len(batches[r]):
                rebuilt.extend(batches[r][step])
    assert rebuilt == epoch
    assert sum(len(s) for s in shards) == num_samples


def test_drop_uneven_gives_every_rank_the_same_number_of_batches():
    epoch = list(range(72))  # 9 batches of 8
    shards = [list(DistributedShardSampler(epoch, 8, rank=r, world_size=2, drop_uneven=True)) for r in range(2)]
    assert [len(s) for s in shards] == [32, 32]
    assert set(shards[0]).isdisjoint(shards[1])


def test_shard_sampler_validates_rank():
    with pytest.raises(ValueError, match="rank"):
        DistributedShardSampler(list(range(8)), 4, rank=2, world_size=2)


@pytest.mark.parametrize("drop_uneven", [True, False])
def test_len_equals_the_number_of_indices_yielded(drop_uneven):
    # 66 samples in batches of 8 on 3 ranks: 9 batches, the last one partial, all kept.
    for num_samples in (0, 5, 64, 66, 70, 71):
        for world_size in (1, 2, 3):
            for rank in range(world_size):
                shard = DistributedShardSampler(list(range(num_samples)), 8, rank=rank,
                                                world_size=world_size, drop_uneven=drop_uneven)
                assert len(shard) == len(list(shard))
