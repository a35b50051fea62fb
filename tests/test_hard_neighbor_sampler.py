"""HardNeighborSampler: lifted-structure batch construction from a global index.

Oracle for the hard negatives: PML's LpDistance matrix, sorted by a Python loop per
pair member, labels filtered by hand.
"""
import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.trainers import MetricLossOnly

import pml_ext
from pml_ext import EmbeddingIndex, HardNeighborSampler
from pml_ext.utils.inference import compute_embeddings


def data(n=240, classes=12, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=gen)
    return centres[labels] + 0.8 * torch.randn(n, d, generator=gen), labels


def chunks(stream, size):
    return [stream[i:i + size] for i in range(0, len(stream), size)]


def test_every_batch_holds_its_pairs_and_their_nearest_negatives_from_the_exact_index():
    x, labels = data()
    bsz, pairs, m = 24, 2, 3
    sampler = HardNeighborSampler(labels, bsz, pairs_per_batch=pairs, negatives_per_sample=m,
                                  num_neighbors=239, method="exact", seed=1)
    sampler.update(x)
    mat = LpDistance()(x.double(), x.double())
    stream = list(sampler)
    assert len(stream) == len(sampler) == (240 // bsz) * bsz
    for batch in chunks(stream, bsz):
        assert len(set(batch)) == bsz
        members = batch[:2 * pairs]
        pair_labels = [int(labels[members[2 * j]]) for j in range(pairs)]
        for j in range(pairs):  # each pair: two distinct samples of one class
            a, p = members[2 * j], members[2 * j + 1]
            assert a != p and labels[a] == labels[p]
        assert len(set(pair_labels)) == pairs  # pairs from distinct classes
        for member in members:
            others = sorted((o for o in range(240) if o != member), key=lambda o: float(mat[member, o]))
            hardest = [o for o in others if labels[o] != labels[member]][:m]
            assert set(hardest) <= set(batch), (member, hardest)


def test_update_from_a_built_index_equals_update_from_embeddings():
    x, labels = data()
    a = HardNeighborSampler(labels, 24, method="exact", seed=2).update(x)
    b = HardNeighborSampler(labels, 24, seed=2).update(EmbeddingIndex("exact").build(x))
    assert torch.equal(a.hard_negatives, b.hard_negatives)
    assert list(a) == list(b)
    # hard_negatives rows: only other-label samples (or -1 padding), nearest first.
    negs = a.hard_negatives
    valid = negs >= 0
    assert bool((labels[negs.clamp(min=0)] != labels.unsqueeze(1))[valid].all())


def test_before_update_batches_are_class_balanced_random():
    # Class 0 holds 90 % of the data; a class-balanced sampler gives it about 1/10 of
    # each batch (uniform class, then uniform member), not 90 %.
    labels = torch.cat([torch.zeros(900, dtype=torch.long), torch.arange(1, 10).repeat_interleave(10)])
    sampler = HardNeighborSampler(labels, 32, pairs_per_batch=3, seed=0)
    stream = torch.tensor(list(sampler))
    share = (labels[stream] == 0).float().mean().item()
    assert 0.05 < share < 0.25
    for batch in chunks(stream.tolist(), 32):
        assert len(set(batch)) == 32


def test_same_seed_same_batches_and_epochs_differ():
    x, labels = data()
    s1 = HardNeighborSampler(labels, 24, seed=7).update(x)
    s2 = HardNeighborSampler(labels, 24, seed=7).update(x)
    e1, e2 = list(s1), list(s2)
    assert e1 == e2
    assert list(s1) != e1  # the next epoch is a new draw
    assert (s1.epoch, s2.epoch) == (2, 1)  # epochs count from 1
    s2.set_epoch(1)
    assert list(s2) == e1
    assert list(HardNeighborSampler(labels, 24, seed=8).update(x)) != e1


def test_batch_sampler_mode_feeds_a_plain_dataloader():
    x, labels = data()
    dataset = torch.utils.data.TensorDataset(x, labels)
    sampler = HardNeighborSampler(labels, 20, pairs_per_batch=3, return_batches=True).update(x)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler) == len(loader) == 240 // 20
    assert all(xb.shape == (20, 8) and yb.shape == (20,) for xb, yb in batches)


def test_rank_slices_are_disjoint_whole_batches_that_rebuild_the_epoch():
    x, labels = data()
    full = HardNeighborSampler(labels, 24, seed=3).update(x)
    epoch = chunks(list(full), 24)  # 10 batches
    shards = [HardNeighborSampler(labels, 24, seed=3, rank=r, world_size=3).update(x) for r in range(3)]
    for r, shard in enumerate(shards):
        mine = list(shard)
        assert len(mine) == len(shard)
        assert chunks(mine, 24) == epoch[r::3]
    drop = HardNeighborSampler(labels, 24, seed=3, rank=2, world_size=3, drop_uneven=True,
                               return_batches=True).update(x)
    assert len(list(drop)) == len(drop) == 3


def test_pml_metric_loss_only_trains_one_epoch_with_the_sampler():
    train, _ = pml_ext.digits_split()
    torch.manual_seed(0)
    model = pml_ext.MLP([64, 64, 16])
    bsz = 32
    sampler = HardNeighborSampler(train.labels, bsz, pairs_per_batch=2, seed=0)
    sampler.update(compute_embeddings(model, train, 256)[0])  # hard negatives for epoch 1
    epochs_seen = []

    def end_of_epoch(trainer):
        embeddings, _ = compute_embeddings(trainer.models["trunk"], train, 256)
        sampler.update(embeddings)  # refresh for the next epoch
        epochs_seen.append(trainer.epoch)

    trainer = MetricLossOnly(
        models={"trunk": model},
        optimizers={"trunk_optimizer": torch.optim.Adam(model.parameters(), lr=1e-3)},
        batch_size=bsz, loss_funcs={"metric_loss": TripletMarginLoss(margin=0.2)},
        dataset=train, sampler=sampler, dataloader_num_workers=0, data_device=torch.device("cpu"),
        end_of_epoch_hook=end_of_epoch,
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train(num_epochs=1)
    assert epochs_seen == [1] and sampler.num_updates == 2
    assert trainer.iterations_per_epoch == len(train) // bsz
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert sampler.epoch == 1  # exactly one epoch drawn


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": 300}, ValueError, "exceeds the dataset size"),
    ({"batch_size": 6, "pairs_per_batch": 4}, ValueError, "cannot hold"),
    ({"batch_size": 12, "pairs_per_batch": 2, "negatives_per_sample": 3}, ValueError, "does not fit"),
    ({"batch_size": 24, "pairs_per_batch": 13}, ValueError, "cannot hold|classes with >= 2"),
    ({"batch_size": 24.0}, TypeError, "batch_size must be an int"),
    ({"batch_size": 24, "length_before_new_iter": 10}, ValueError, "shorter than one batch"),
    ({"batch_size": 24, "rank": 2, "world_size": 2}, ValueError, "rank"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    _, labels = data()
    with pytest.raises(error, match=match):
        HardNeighborSampler(labels, **kwargs)


def test_too_few_pair_classes_and_bad_labels_or_updates_raise():
    with pytest.raises(ValueError, match="classes with >= 2 samples"):
        HardNeighborSampler(torch.tensor([0, 0, 1, 2, 3, 4]), 6, pairs_per_batch=2)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        HardNeighborSampler(torch.zeros(4, 2, dtype=torch.long), 2)
    x, labels = data()
    sampler = HardNeighborSampler(labels, 24)
    with pytest.raises(ValueError, match="239 rows"):
        sampler.update(x[:-1])
    with pytest.raises(ValueError, match="contains NaN"):
        sampler.update(torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="index holds 100 points"):
        sampler.update(EmbeddingIndex("exact").build(x[:100]))
    with pytest.raises(TypeError, match="Tensor"):
        sampler.update(x.numpy())
