"""EmbeddingIndex and HardNeighborSampler under torch.distributed (gloo, world size 2).

Each rank embeds only its shard; after gather_training_set both ranks must build the same
index and k-NN lists as a single process, and the sampler's per-rank batches must be
disjoint whole batches whose round-robin union is the single-process epoch.
"""
import torch

from dist_utils import run_world
from pml_ext import EmbeddingIndex, HardNeighborSampler
from pml_ext.utils.distributed import gather_training_set

NUM_SAMPLES, DIM, BATCH = 101, 6, 10


def full_training_set():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(NUM_SAMPLES) % 9
    return torch.randn(NUM_SAMPLES, DIM, generator=gen) + labels.unsqueeze(1).float(), labels


def index_worker(rank, world_size, out_dir):
    emb, labels = full_training_set()
    # DistributedSampler-style strided shards, padded by repeating the first samples.
    idx = torch.arange(NUM_SAMPLES)
    per_rank = -(-NUM_SAMPLES // world_size)
    mine = torch.cat([idx, idx[: per_rank * world_size - NUM_SAMPLES]])[rank::world_size]
    full_emb, full_labels = gather_training_set(emb[mine], labels[mine], mine)
    distances, neighbours = EmbeddingIndex("exact").build(full_emb, full_labels).knn_all(5)
    sampler = HardNeighborSampler(full_labels, BATCH, seed=4)  # rank, world size from torch.distributed
    sampler.update(full_emb)
    torch.save({"distances": distances, "neighbours": neighbours, "stream": list(sampler),
                "rank": sampler.rank, "world_size": sampler.world_size, "len": len(sampler)},
               f"{out_dir}/rank{rank}.pt")


def test_ranks_build_identical_indices_and_split_the_sampler_epoch(tmp_path):
    run_world(index_worker, str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    emb, labels = full_training_set()
    distances, neighbours = EmbeddingIndex("exact").build(emb, labels).knn_all(5)
    for r, res in enumerate(results):
        assert (res["rank"], res["world_size"]) == (r, 2)
        assert torch.equal(res["neighbours"], neighbours)
        assert torch.equal(res["distances"], distances)
        assert len(res["stream"]) == res["len"]

    single = list(HardNeighborSampler(labels, BATCH, seed=4, rank=0, world_size=1).update(emb))
    epoch = [single[i:i + BATCH] for i in range(0, len(single), BATCH)]  # 10 batches
    shards = [[s[i:i + BATCH] for i in range(0, len(s), BATCH)] for s in (res["stream"] for res in results)]
    # Rank r gets batches r, r + 2, ...: a partition of the epoch's batches into whole batches.
    assert shards[0] == epoch[0::2] and shards[1] == epoch[1::2]
    assert sorted(shards[0] + shards[1]) == sorted(epoch)
