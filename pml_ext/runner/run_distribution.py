"""Running an experiment under torch.distributed: wrapped losses and miners, sharded batches,
gradient averaging, and the training set embedded by shards."""
from __future__ import annotations

import logging

import torch

__all__ = ["distribute", "average_gradients_after_backward", "embed_training_set"]

LOGGER = logging.getLogger("pml_ext.runner")


class _WholeBatches(torch.utils.data.Sampler):
    """The inner sampler's stream cut to whole batches, so that every rank's shard holds only
    full batches and every rank runs the same number of iterations (a trailing partial
    batch would be dropped by the DataLoader on one rank only)."""

    wraps_sampler = True  # EpochUpdater looks through it

    def __init__(self, sampler, batch_size: int):
        self.sampler, self.batch_size = sampler, int(batch_size)

    def __iter__(self):
        flat = list(iter(self.sampler))
        return iter(flat[: len(flat) - len(flat) % self.batch_size])

    def __len__(self) -> int:
        return len(self.sampler) - len(self.sampler) % self.batch_size

    def update(self, *args, **kwargs):
        return self.sampler.update(*args, **kwargs)


def distribute(loss_funcs, mining_funcs, sampler, num_train: int, batch_size: int, seed: int, rank: int,
               world_size: int):
    """PML's distributed wrappers around the losses and miners, and a sampler giving this rank its batches."""
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

    from ..samplers.distributed_shard_sampler import DistributedShardSampler

    loss_funcs = {k: DistributedLossWrapper(v) for k, v in loss_funcs.items()}
    mining_funcs = {k: DistributedMinerWrapper(v) for k, v in mining_funcs.items()}
    if sampler is None:
        # Every rank draws the same permutation from the same seed, then keeps its batches.
        sampler = torch.utils.data.RandomSampler(range(num_train), generator=torch.Generator().manual_seed(seed))
    if hasattr(sampler, "rank") and hasattr(sampler, "world_size"):
        # Samplers with rank/world_size (SmartBatchSampler, HardNeighborSampler) already yield
        # only this rank's batches; every rank must still run as many iterations.
        if getattr(sampler, "drop_uneven", True) is False:
            sampler.drop_uneven = True
    else:
        sampler = DistributedShardSampler(_WholeBatches(sampler, batch_size), batch_size, drop_uneven=True)
    LOGGER.info("distributed: rank %d of %d; losses and miners wrapped with PML's distributed wrappers",
                rank, world_size)
    return loss_funcs, mining_funcs, sampler


def average_gradients_after_backward(trainer) -> None:
    """What DDP does, without wrapping the models (the tester and HookContainer see plain modules)."""
    import torch.distributed as dist

    original_backward = trainer.backward
    params = [p for m in trainer.models.values() for p in m.parameters()]
    params += [p for m in trainer.loss_funcs.values() if isinstance(m, torch.nn.Module) for p in m.parameters()]
    world = dist.get_world_size()
    for p in params:
        dist.broadcast(p.data, src=0)

    def backward():
        original_backward()
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= world

    trainer.backward = backward


def embed_training_set(models, dataset, labels: torch.Tensor, device, getter, rank: int, world_size: int,
                       distributed: bool):
    """``(embeddings [N, d], labels [N])`` of the training set; each rank embeds a shard when distributed."""
    import tqdm

    from ..utils.distributed import gather_training_set

    positions = torch.arange(len(dataset))
    if distributed:
        positions = positions[rank::world_size]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, positions.tolist()),
                                         batch_size=256, shuffle=False, num_workers=0)
    was_training = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    chunks = []
    with torch.no_grad():
        for batch in tqdm.tqdm(loader, desc="embedding the training set", leave=False):
            data, _ = getter(batch)
            chunks.append(models["embedder"](models["trunk"](data.to(device))).detach())
    for k, m in models.items():
        m.train(was_training[k])
    embeddings = torch.cat(chunks) if chunks else torch.zeros(0, 1, device=device)
    if distributed:
        return gather_training_set(embeddings, labels[positions].to(device), positions.to(device))
    return embeddings, labels.to(device)
