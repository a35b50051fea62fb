"""SmartBatchSampler: warm-up, mixing, the layout that carries Algorithm 1's triplets to the loss,
rank slices, determinism and errors."""
import pytest
import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from torch.utils.data import DataLoader, TensorDataset

from pml_ext import MLP, SmartBatchSampler, SmartMiner, digits_split


def labelled(num=120, num_classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num,), generator=gen)
    return torch.randn(num, 8, generator=gen) + 2 * torch.nn.functional.one_hot(labels, 8).float(), labels


def triplets_of(flat, batch_size):
    rows = torch.as_tensor(list(flat)).view(-1, batch_size)
    return rows.view(rows.shape[0], -1, 3)  # [batches, triplets per batch, (a, p, n)]


def test_warmup_epochs_are_random_and_skip_mining():
    emb, labels = labelled()
    miner = SmartMiner(index_method="exact")
    sampler = SmartBatchSampler(miner, 30, warmup_epochs=2, labels=labels)
    for epoch in (1, 2):
        sampler.update(emb, labels)
        trip = triplets_of(sampler, 30)
        assert sampler.epoch == epoch and sampler.num_mined_in_epoch == 0.0
        assert bool((labels[trip[..., 0]] == labels[trip[..., 1]]).all())
        assert bool((trip[..., 0] != trip[..., 1]).all())
        assert bool((labels[trip[..., 0]] != labels[trip[..., 2]]).all())
    assert miner.num_updates == 0  # the index is not built for warm-up epochs
    sampler.update(emb, labels)
    assert miner.num_updates == 1


@pytest.mark.parametrize("mined_fraction, mined_per_batch", [(1.0, 10), (0.5, 5), (0.0, 0)])
def test_batches_mix_mined_and_random_triplets(mined_fraction, mined_per_batch):
    emb, labels = labelled()
    miner = SmartMiner(kappa=1.0, index_method="exact")
    sampler = SmartBatchSampler(miner, 30, mined_fraction=mined_fraction, warmup_epochs=0)
    sampler.update(emb, labels)
    pool = set(zip(*(t.tolist() for t in miner.triplets)))
    trip = triplets_of(sampler, 30)
    assert len(list(sampler)) == len(sampler) == 4 * 30  # ceil(120 / 30) batches
    assert sampler.num_mined_in_epoch == 4 * mined_per_batch
    head = trip[:, :mined_per_batch].reshape(-1, 3).tolist()
    assert all(tuple(t) in pool for t in head)
    # Within one pass over the pool, a mined triplet is not repeated.
    assert len(set(map(tuple, head))) == len(head)
    assert bool((labels[trip[..., 0]] == labels[trip[..., 1]]).all())
    assert bool((labels[trip[..., 0]] != labels[trip[..., 2]]).all())


def test_algorithm1_triplets_reach_the_loss_through_a_dataloader():
    train, _ = digits_split()
    torch.manual_seed(0)
    model = MLP([64, 32, 8])
    with torch.no_grad():
        emb = model(train.data)
    miner = SmartMiner(kappa=1.0, seed=0, index_method="exact")
    sampler = SmartBatchSampler(miner, 48, warmup_epochs=0, seed=0, triplets_per_epoch=128)
    sampler.update(emb, train.labels)
    selected = set(zip(*(t.tolist() for t in miner.triplets)))
    dataset = TensorDataset(train.data, train.labels, torch.arange(len(train)))
    loader = DataLoader(dataset, batch_size=48, sampler=sampler)
    layout_miner = SmartMiner(batch_layout=True)
    loss_fn = TripletMarginLoss(margin=0.2)
    reached, re_mined = [], []
    for data, labels, idx in loader:
        embeddings = model(data)
        a, p, n = layout_miner(embeddings, labels)
        loss_fn(embeddings, labels, (a, p, n)).backward()
        reached += list(zip(idx[a].tolist(), idx[p].tolist(), idx[n].tolist()))
        ra, rp, rn = SmartMiner(kappa=1.0)(embeddings.detach(), labels)
        re_mined += list(zip(idx[ra].tolist(), idx[rp].tolist(), idx[rn].tolist()))
    assert len(loader) == 8 and len(reached) == 8 * 16
    assert set(reached) <= selected  # exactly Algorithm 1's triplets reach the loss
    # Mining again inside the batch would have trained on other triplets.
    assert sum(t in selected for t in re_mined) < 0.5 * len(re_mined)


def test_iterating_after_warmup_without_an_update_raises():
    _, labels = labelled()
    sampler = SmartBatchSampler(SmartMiner(), 30, warmup_epochs=1, labels=labels)
    list(sampler)
    with pytest.raises(RuntimeError, match="update"):
        list(sampler)
    with pytest.raises(RuntimeError, match="update"):
        list(SmartBatchSampler(SmartMiner(), 30, warmup_epochs=0, labels=labels))


def test_same_seed_same_epoch_and_set_epoch_replays_it():
    emb, labels = labelled()
    epochs = []
    for _ in range(2):
        sampler = SmartBatchSampler(SmartMiner(seed=4, index_method="exact"), 30, 0.5, warmup_epochs=1, seed=7)
        sampler.update(emb, labels)
        first = list(sampler)
        sampler.update(emb, labels)
        epochs.append((first, list(sampler)))
        sampler.set_epoch(2)
        assert list(sampler) == epochs[-1][1]
    assert epochs[0] == epochs[1]
    assert epochs[0][0] != epochs[0][1]


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_are_whole_disjoint_batches_whose_union_is_the_epoch(world_size):
    emb, labels = labelled(num=150)
    miner = SmartMiner(index_method="exact")
    miner.update(emb, labels)
    whole = SmartBatchSampler(miner, 30, warmup_epochs=0, seed=1)
    epoch = list(whole)
    batches = [epoch[i:i + 30] for i in range(0, len(epoch), 30)]
    for rank in range(world_size):
        part = SmartBatchSampler(miner, 30, warmup_epochs=0, seed=1, rank=rank, world_size=world_size)
        mine = list(part)
        assert len(mine) == len(part)
        assert [mine[i:i + 30] for i in range(0, len(mine), 30)] == batches[rank::world_size]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"mined_fraction": 1.5}, ValueError, "mined_fraction"),
    ({"mined_fraction": -0.1}, ValueError, "mined_fraction"),
    ({"mined_fraction": "half"}, TypeError, "mined_fraction"),
    ({"batch_size": 32}, ValueError, "batch_size"),
    ({"warmup_epochs": -1}, ValueError, "warmup_epochs"),
    ({"rank": 2, "world_size": 2}, ValueError, "rank"),
    ({"miner": object()}, TypeError, "miner"),
])
def test_bad_arguments_raise(kwargs, error, match):
    args = {"miner": SmartMiner(), "batch_size": 30}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        SmartBatchSampler(**args)


def test_mined_fraction_is_validated_on_assignment_and_recordable():
    sampler = SmartBatchSampler(SmartMiner(), 30)
    sampler.mined_fraction = 0.75
    assert sampler.mined_fraction == 0.75 and "mined_fraction" in sampler._record_these
    with pytest.raises(ValueError, match="mined_fraction"):
        sampler.mined_fraction = 2.0
