"""run_state: every stateful object of a run round-trips through torch.save / torch.load(weights_only=True)
(what PML's HookContainer uses to load checkpoints). Oracle: the draws of the object that was not saved."""
import io
import random

import numpy as np
import pytest
import torch
from pytorch_metric_learning.samplers import MPerClassSampler

from pml_ext.runner.state.run_state import RngStates, SamplerState, seed_epoch, stateful_objects
from pml_ext.samplers.distributed_shard_sampler import DistributedShardSampler
from pml_ext.samplers.whole_batches import WholeBatches


def reload(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_states_round_trip_and_the_snapshot_survives_draws_in_between():
    rng = RngStates()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    rng.snapshot()
    expected = draws()
    state = reload(rng.state_dict())  # the snapshot, not the state after the draws
    draws()
    RngStates().load_state_dict(state)
    assert draws() == expected
    rng.restore()
    assert draws() == expected
    with pytest.raises(ValueError, match="state is missing"):
        RngStates().load_state_dict({"torch": torch.get_rng_state()})


def test_a_wrapped_pml_sampler_resumes_with_its_shuffled_label_order():
    labels = np.repeat(np.arange(6), 10)

    def make():
        inner = MPerClassSampler(labels, m=4, length_before_new_iter=48)
        return DistributedShardSampler(WholeBatches(inner, 12), 12, rank=0, world_size=2, drop_uneven=True)

    np.random.seed(0)
    sampler = make()
    list(sampler)  # MPerClassSampler shuffles its label list in place
    state = reload(SamplerState(sampler).state_dict())
    rng = np.random.get_state()
    expected = list(sampler)
    fresh = make()
    SamplerState(fresh).load_state_dict(state)
    np.random.set_state(rng)
    assert list(fresh) == expected and fresh.epoch == 2
    with pytest.raises(ValueError, match="must list 3 sampler states"):
        SamplerState(fresh).load_state_dict({"layers": [None]})


def test_stateful_objects_names_every_part():
    from pml_ext import SmartMiner

    objects = stateful_objects(sampler=torch.utils.data.SequentialSampler(range(4)),
                               mining_funcs={"tuple_miner": SmartMiner()}, controllers={"controller_k": object()},
                               rng=RngStates())
    assert list(objects) == ["sampler", "miner_tuple_miner", "controller_k", "rng_states"]


def test_epoch_zero_seeds_like_the_seed_itself_and_each_epoch_draws_its_own_stream():
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    plain = draws()
    seed_epoch(5)
    assert draws() == plain
    seed_epoch(5, 2)
    epoch2 = draws()
    seed_epoch(5, 2)
    assert draws() == epoch2
    for other in ((5, 1), (5, 3), (6, 2)):
        seed_epoch(*other)
        assert draws() != epoch2
