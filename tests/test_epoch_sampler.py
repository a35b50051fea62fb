"""EpochSampler, the base of HardNeighborSampler, SmartBatchSampler and DistributedShardSampler:
1-based epochs, per-epoch seeding from one base seed, rank slices, state.

Oracles: a generator seeded by hand from the documented formula, the single-process epoch
(the ranks' slices must partition it), and a fresh sampler fed the saved state."""
import pytest
import torch

from pml_ext import DistributedShardSampler, HardNeighborSampler, SmartBatchSampler, SmartMiner
from pml_ext.samplers.epoch_sampler import EPOCH_STRIDE, EpochSampler


class Perm(EpochSampler):
    """The smallest subclass: a random permutation of 0..n-1, cut into batches."""

    def __init__(self, n, batch_size, **kwargs):
        super().__init__(batch_size, **kwargs)
        self.n = n

    def num_batches(self):
        return self.n // self.batch_size

    def epoch_batches(self, epoch):
        perm = torch.randperm(self.n, generator=self.epoch_generator(epoch))
        return perm[: self.num_batches() * self.batch_size].view(-1, self.batch_size)


def data(n=240, classes=12, dim=8):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=gen), torch.arange(n) % classes


def samplers(rank=0, world_size=1, drop_uneven=False):
    """One of each subclass, refreshed, with the same seed."""
    x, labels = data()
    hard = HardNeighborSampler(labels, 24, seed=5, rank=rank, world_size=world_size,
                               drop_uneven=drop_uneven).update(x)
    miner = SmartMiner(k=8, seed=1)
    smart = SmartBatchSampler(miner, 24, warmup_epochs=0, seed=5, labels=labels, rank=rank,
                              world_size=world_size, drop_uneven=drop_uneven)
    smart.update(x, labels)
    shard = DistributedShardSampler(Perm(240, 24, seed=5), 24, rank=rank, world_size=world_size,
                                    drop_uneven=drop_uneven)
    return {"hard": hard, "smart": smart, "shard": shard, "perm": Perm(230, 24, seed=5, rank=rank,
                                                                       world_size=world_size,
                                                                       drop_uneven=drop_uneven)}


def chunks(stream, size):
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def test_epochs_count_from_one_and_set_epoch_numbers_the_next():
    sampler = Perm(40, 8, seed=3)
    assert (sampler.epoch, sampler.next_epoch) == (0, 1)
    first = list(sampler)
    assert (sampler.epoch, sampler.next_epoch) == (1, 2)
    list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == first and sampler.epoch == 1
    with pytest.raises(ValueError, match="epoch must be >= 1"):
        sampler.set_epoch(0)


def test_epoch_e_draws_from_the_generator_seeded_seed_times_stride_plus_e():
    sampler = Perm(40, 8, seed=3)
    for epoch in (1, 2, 7):
        expected = torch.randperm(40, generator=torch.Generator().manual_seed(3 * EPOCH_STRIDE + epoch))
        assert sampler.epoch_batches(epoch).flatten().tolist() == expected.tolist()
    # every subclass takes its randomness from that generator: the same (seed, epoch), the same epoch
    for name, s in samplers().items():
        again = samplers()[name]
        assert list(s) == list(again), name
        assert list(s) != list(samplers()[name]), name  # epoch 2 differs from epoch 1


@pytest.mark.parametrize("name", ["hard", "smart", "shard", "perm"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_are_disjoint_whole_batches_whose_union_is_the_single_process_epoch(name, world_size):
    for epoch in (1, 2):
        full = samplers()[name]
        full.set_epoch(epoch)
        whole = chunks(list(full), 24)
        shards = []
        for rank in range(world_size):
            s = samplers(rank, world_size)[name]
            s.set_epoch(epoch)
            mine = list(s)
            assert len(mine) == len(s)
            shards.append(chunks(mine, 24))
            assert shards[-1] == whole[rank::world_size]
        union = sorted(tuple(b) for shard in shards for b in shard)
        assert union == sorted(tuple(b) for b in whole)  # a partition: nothing lost, nothing twice
        dropped = [list(samplers(rank, world_size, drop_uneven=True)[name]) for rank in range(world_size)]
        assert len({len(d) for d in dropped}) == 1  # every rank runs as many steps


@pytest.mark.parametrize("name", ["hard", "smart", "shard", "perm"])
def test_a_fresh_sampler_given_the_state_continues_with_the_same_epochs(name):
    original = samplers()[name]
    list(original)
    state = original.state_dict()
    expected = [list(original), list(original)]
    fresh = samplers()[name]
    if name == "smart":  # the triplets live in the miner, which saves its own state
        fresh.miner.load_state_dict(original.miner.state_dict())
    fresh.load_state_dict(state)
    assert [list(fresh), list(fresh)] == expected


def test_bad_arguments_and_states_name_the_argument():
    with pytest.raises(ValueError, match="rank must be in"):
        Perm(40, 8, rank=2, world_size=2)
    with pytest.raises(TypeError, match="seed must be an int"):
        Perm(40, 8, seed=1.5)
    with pytest.raises(ValueError, match="state is missing 'next_epoch'"):
        Perm(40, 8).load_state_dict({"epoch": 1})
    x, labels = data()
    with pytest.raises(ValueError, match=r"state\['hard_negatives'\]"):
        HardNeighborSampler(labels, 24).load_state_dict({"epoch": 1, "next_epoch": 2,
                                                         "hard_negatives": torch.zeros(3, 2)})
