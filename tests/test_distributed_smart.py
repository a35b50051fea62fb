"""Smart mining under torch.distributed (gloo, world size 2): identical global triplets from sharded
embeddings, sampler slices that rebuild the single-process epoch, PML's distributed wrappers."""
import torch
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

from dist_utils import run_world
from pml_ext import SmartBatchSampler, SmartMiner

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
    batch_emb = emb[mine[:20]].clone().requires_grad_(True)
    batch_labels = labels[mine[:20]]
    triplets = DistributedMinerWrapper(SmartMiner(kappa=1.0, seed=0))(batch_emb, batch_labels)
    loss = DistributedLossWrapper(TripletMarginLoss(margin=0.2))(batch_emb, batch_labels, triplets)
    loss.backward()
    torch.save({"triplets": miner.triplets, "shard": shard, "len": len(sampler), "wrapper": triplets,
                "loss": float(loss), "grad": float(batch_emb.grad.abs().sum())}, f"{out_dir}/rank{rank}.pt")


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

    # The in-batch miner ran on the gathered 40-row batch under PML's wrappers.
    for rank, r in enumerate(ranks):
        a, p, n = r["wrapper"]
        # PML gathers this rank's rows first, then the other rank's.
        gathered = labels[torch.cat([shard_indices(rank, 2)[:20], shard_indices(1 - rank, 2)[:20]])]
        assert a.numel() > 0 and int(torch.cat([a, p, n]).max()) < 40
        assert bool((gathered[a] == gathered[p]).all()) and bool((gathered[a] != gathered[n]).all())
        assert r["loss"] >= 0.0 and r["grad"] > 0.0
