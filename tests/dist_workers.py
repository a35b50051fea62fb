"""Worker functions for tests/test_distributed.py (module level, so spawn can pickle them)."""
import time

import torch
import torch.distributed as dist

from pml_ext.utils.distributed import gather_training_set, mean_across_ranks


def gather_worker(rank, world_size, out_dir):
    gen = torch.Generator().manual_seed(0)
    num_samples = 37
    emb = torch.randn(num_samples, 4, generator=gen)
    labels = torch.randint(0, 5, (num_samples,), generator=gen)
    # DistributedSampler-style strided shards, padded by repeating the first samples.
    idx = torch.arange(num_samples)
    per_rank = -(-num_samples // world_size)
    padded = torch.cat([idx, idx[: per_rank * world_size - num_samples]])
    mine = padded[rank::world_size]
    full_emb, full_labels = gather_training_set(emb[mine], labels[mine], mine)
    torch.save({"emb": full_emb, "labels": full_labels, "mean": mean_across_ranks(float(rank))},
               f"{out_dir}/rank{rank}.pt")


def failing_worker(rank, world_size, out_dir):
    if rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    time.sleep(0.5)
    try:
        mean_across_ranks(1.0)  # the peer is gone: gloo must time out, not hang
    except RuntimeError as exc:
        with open(f"{out_dir}/rank0_error.txt", "w") as f:
            f.write(str(exc))
        raise
