"""Smart mining under torch.distributed (gloo, world size 2): identical global triplets from sharded
embeddings, sampler slices that rebuild the single-process epoch, and in-batch mining under the
distributed wrappers against one process on the gathered batch (triplets, loss, gradient)."""
import pytest
import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.utils.distributed import DistributedMinerWrapper

from dist_utils import run_world
from pml_ext import SmartBatchSampler, SmartMiner
from pml_ext.runner.run.run_distribution import distributed_loss, distributed_miner

NUM, BATCH = 91, 30


def training_set():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (NUM,), generator=gen)
    return torch.randn(NUM, 6, generator=gen) + 2 * torch.nn.functional.one_hot(labels, 6).float(), labels


def make_miner():
    return SmartMiner(kappa=1.5, k=12, seed=3, index_method="exact")


def shard_indices(rank, world_size):
    """DistributedSampler-style strided shards, padded by repeating the first samples."""
    idx = torch.arange(NUM)
    per_rank = -(-NUM // world_size)
    return torch.cat([idx, idx[: per_rank * world_size - NUM]])[rank::world_size]


def smart_worker(rank, world_size, out_dir):
    emb, labels = training_set()
    # DistributedSampler-style strided shards, padded by repeating the first samples.
    mine = shard_indices(rank, world_size)
    miner = make_miner()
    sampler = SmartBatchSampler(miner, BATCH, warmup_epochs=0, seed=1)  # rank, world size from torch.distributed
    sampler.update(emb[mine], labels[mine], dataset_indices=mine)
    shard = list(sampler)

    # In-batch mining of the gathered batch, then PML's distributed loss on those triplets.
    batch_emb = emb[mine[:20]].double().requires_grad_(True)
    batch_labels = labels[mine[:20]]
    triplets = DistributedMinerWrapper(SmartMiner(kappa=1.0, seed=0))(batch_emb, batch_labels)
    loss = distributed_loss(TripletMarginLoss(margin=0.2))(batch_emb, batch_labels, triplets)  # the runner's
    loss.backward()
    rank_ordered = distributed_miner(SmartMiner(kappa=1.0, seed=0))(batch_emb, batch_labels)
    torch.save({"triplets": miner.triplets, "shard": shard, "len": len(sampler), "wrapper": triplets,
                "rank_ordered": rank_ordered, "loss": float(loss.detach()), "grad": batch_emb.grad},
               f"{out_dir}/rank{rank}.pt")


def test_smart_mining_across_two_ranks(tmp_path):
    run_world(smart_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # Both ranks mined exactly the single-process triplets of the whole training set.
    emb, labels = training_set()
    single = make_miner()
    expected = single.update(emb, labels)
    for r in ranks:
        assert all(torch.equal(x, y) for x, y in zip(r["triplets"], expected))

    # The rank slices are whole, disjoint batches that rebuild the single-process epoch.
    epoch = list(SmartBatchSampler(single, BATCH, warmup_epochs=0, seed=1))
    batches = [epoch[i:i + BATCH] for i in range(0, len(epoch), BATCH)]
    for rank, r in enumerate(ranks):
        assert len(r["shard"]) == r["len"]
        assert [r["shard"][i:i + BATCH] for i in range(0, len(r["shard"]), BATCH)] == batches[rank::2]
    assert len(ranks[0]["shard"]) + len(ranks[1]["shard"]) == len(epoch)

    # The in-batch miner ran on the gathered 40-row batch under PML's wrappers: the triplets,
    # loss and gradient of one process on that batch, PML's order (this rank's rows first).
    for rank, r in enumerate(ranks):
        rows = torch.cat([shard_indices(rank, 2)[:20], shard_indices(1 - rank, 2)[:20]])
        batch_emb, batch_labels = emb[rows].double().requires_grad_(True), labels[rows]
        expected = SmartMiner(kappa=1.0, seed=0)(batch_emb, batch_labels)
        assert expected[0].numel() > 0
        assert all(torch.equal(x, y) for x, y in zip(r["wrapper"], expected))
        loss = TripletMarginLoss(margin=0.2)(batch_emb, batch_labels, expected)
        loss.backward()
        # PML's wrapper multiplies by the world size: DDP's mean of the two ranks' gradients is
        # then the one-process gradient (each rank's gradient reaches only its own rows).
        assert r["loss"] == pytest.approx(2 * float(loss.detach()), rel=1e-12)
        torch.testing.assert_close(r["grad"], 2 * batch_emb.grad[:20], rtol=1e-9, atol=1e-12)
        # pml_ext's wrapper mines the batch in rank order on every rank (the same tuples as one
        # process on the concatenated batch), then maps them to PML's order.
        in_rank_order = torch.cat([shard_indices(0, 2)[:20], shard_indices(1, 2)[:20]])
        one_process = SmartMiner(kappa=1.0, seed=0)(emb[in_rank_order].double(), labels[in_rank_order])
        assert all(torch.equal(rows[x], in_rank_order[y]) for x, y in zip(r["rank_ordered"], one_process))
