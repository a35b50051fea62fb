"""Worker functions for tests/test_distributed_lifted.py (module level, so spawn can pickle them)."""
import torch
from pytorch_metric_learning.utils import distributed as pml_dist

from pml_ext import LiftedStructureLoss


def full_batch(world_size, per_rank=12, dim=6, num_classes=4):
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(world_size * per_rank, dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (world_size * per_rank,), generator=gen)
    return emb, labels


def lifted_worker(rank, world_size, out_dir, efficient):
    emb, labels = full_batch(world_size)
    per_rank = len(emb) // world_size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    local = emb[mine].clone().requires_grad_()
    wrapped = pml_dist.DistributedLossWrapper(LiftedStructureLoss(), efficient=efficient)
    loss = wrapped(local, labels[mine])
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": local.grad}, f"{out_dir}/rank{rank}.pt")
