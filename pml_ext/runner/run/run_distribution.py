"""Running an experiment under torch.distributed: PML's distributed wrappers around losses and
miners, sharded batches, models under ``DistributedDataParallel``, and the training set embedded
by shards.

BatchNorm: on CUDA the models' BatchNorm layers become ``SyncBatchNorm``, so a world of W ranks
normalises with the statistics of the whole W-rank batch, as one process would. torch's
``SyncBatchNorm`` does not run on CPU: there (gloo) each rank normalises its own batch and the
running statistics are rank 0's, broadcast by DDP before every forward (``broadcast_buffers``),
so every rank evaluates and saves the same model. A trunk with frozen BatchNorm
(``freeze_trunk_batchnorm``, the default) is the same on every rank either way.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...samplers.distributed_shard_sampler import DistributedShardSampler
from ...samplers.epoch_sampler import EpochSampler
from ...samplers.whole_batches import WholeBatches
from .pml_internals import train_with

__all__ = ["distribute", "distributed_loss", "wrap_models_for_ddp", "embed_training_set"]

LOGGER = logging.getLogger("pml_ext.runner")


def distribute(loss_funcs, mining_funcs, sampler, num_train: int, batch_size: int, seed: int, rank: int,
               world_size: int):
    """PML's distributed wrappers around the losses and miners, and a sampler giving this rank its batches."""
    loss_funcs = {k: distributed_loss(v, f"loss_funcs.{k}") for k, v in loss_funcs.items()}
    mining_funcs = {k: distributed_miner(v) for k, v in mining_funcs.items()}
    if sampler is None:
        # Every rank draws the same permutation from the same seed, then keeps its batches.
        sampler = torch.utils.data.RandomSampler(range(num_train), generator=torch.Generator().manual_seed(seed))
    if isinstance(sampler, EpochSampler):
        # pml_ext's samplers already yield only this rank's batches; every rank must still run
        # as many iterations.
        sampler.drop_uneven = True
    else:
        sampler = DistributedShardSampler(WholeBatches(sampler, batch_size), batch_size, drop_uneven=True)
    LOGGER.info("distributed: rank %d of %d; losses and miners wrapped with PML's distributed wrappers",
                rank, world_size)
    return loss_funcs, mining_funcs, sampler


def distributed_loss(loss: Any, name: str = "loss") -> torch.nn.Module:
    """``loss`` computed over the batches of every rank: PML's ``DistributedLossWrapper``; a
    ``MultipleLosses`` gets one wrapper per member loss (and a ``DistributedMinerWrapper`` per
    member miner), which sums the same weighted members as the single process on the concatenated batch."""
    from pytorch_metric_learning.losses import BaseMetricLossFunction, CrossBatchMemory, MultipleLosses
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    if isinstance(loss, MultipleLosses):
        keys = list(loss.losses.keys()) if loss.is_dict else range(len(loss.losses))
        losses = [distributed_loss(loss.losses[k], f"{name}.losses.{k}") for k in keys]
        miners = None
        if loss.miners is not None:
            members = [loss.miners[k] if (not loss.is_dict or k in loss.miners) else None for k in keys]
            miners = [None if m is None else distributed_miner(m) for m in members]
        if loss.is_dict:
            losses, miners = dict(zip(keys, losses)), None if miners is None else {
                k: m for k, m in zip(keys, miners) if m is not None}
        return MultipleLosses(losses, miners=miners, weights=loss.weights)
    if not isinstance(loss, (BaseMetricLossFunction, CrossBatchMemory)):
        raise TypeError(f"{name}: {type(loss).__name__} cannot be computed across ranks: PML's "
                        f"DistributedLossWrapper takes a BaseMetricLossFunction, CrossBatchMemory or MultipleLosses")
    return DistributedLossWrapper(loss)


def distributed_miner(miner: Any) -> torch.nn.Module:
    """PML's ``DistributedMinerWrapper``, mining the gathered batch in rank order.

    PML's wrapper puts this rank's rows first, so each rank mines a differently ordered batch;
    a miner that draws at random (``IsometricHardMiner``, in-batch ``SmartMiner``) would then
    pick different tuples on each rank. Here every rank mines the batch in rank order, as one
    process mines the concatenated batch, and the tuples are mapped back to PML's order (the
    order ``DistributedLossWrapper`` gathers in).
    """
    from pytorch_metric_learning.utils import distributed as pml_dist

    class RankOrderedMinerWrapper(pml_dist.DistributedMinerWrapper):
        def forward(self, emb, labels, ref_emb=None, ref_labels=None):
            world_size = torch.distributed.get_world_size()
            if world_size <= 1 or ref_emb is not None or self.efficient:
                return super().forward(emb, labels, ref_emb, ref_labels)
            all_emb, all_labels, _, _, _ = pml_dist.gather_emb_and_ref(emb, labels)
            rank, size = torch.distributed.get_rank(), emb.shape[0]
            # Block q of the rank order is block 0 (q == rank), q + 1 (q < rank) or q of PML's order.
            blocks = torch.arange(world_size, device=emb.device)
            blocks = torch.where(blocks == rank, 0, torch.where(blocks < rank, blocks + 1, blocks))
            order = (blocks.unsqueeze(1) * size + torch.arange(size, device=emb.device)).flatten()
            tuples = self.miner(all_emb[order], all_labels[order])
            return tuple(order[t] for t in tuples)

    return RankOrderedMinerWrapper(miner)


def _trainable(module: Any) -> bool:
    return isinstance(module, torch.nn.Module) and any(p.requires_grad for p in module.parameters())


def wrap_models_for_ddp(trainer, device: torch.device) -> dict[str, torch.nn.Module]:
    """Put the trainer's models (and losses with parameters) under ``DistributedDataParallel``.

    DDP broadcasts rank 0's parameters and buffers at construction, so call it after any
    checkpoint was loaded. Returns the plain models (for testers, checkpoints and the
    training-set embedding, see :func:`.pml_internals.plain_models`).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    plain = dict(trainer.models)
    ids = [device.index] if device.type == "cuda" else None

    def wrap(module):
        if device.type == "cuda":  # same Parameter objects: the optimizers stay valid
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DDP(module, device_ids=ids)

    train_with(trainer, {k: wrap(m) if _trainable(m) else m for k, m in plain.items()},
               {k: wrap(m) if _trainable(m) else m for k, m in trainer.loss_funcs.items()})
    LOGGER.info("distributed: %s under DistributedDataParallel",
                ", ".join(k for k, m in trainer.models.items() if m is not plain[k]) or "no model")
    return plain


def embed_training_set(models, dataset, labels: torch.Tensor, device, getter, rank: int, world_size: int,
                       distributed: bool, rows: torch.Tensor | None = None, dim: int = 1):
    """``(embeddings [n, d], labels [n])`` of the training set's ``rows: LongTensor[n]`` (default: all N,
    in dataset order); each rank embeds a shard of them when distributed (every rank passes the
    same rows). ``dim``: ``d``, for a rank whose shard is empty."""
    from ...utils.distributed import gather_training_set
    from ...utils.inference import compute_embeddings

    rows = torch.arange(len(dataset)) if rows is None else rows.cpu().long()
    positions = torch.arange(rows.numel())
    if distributed:
        positions = positions[rank::world_size]
    if positions.numel() == 0:
        embeddings = torch.zeros(0, dim, device=device)
    else:
        subset = torch.utils.data.Subset(dataset, rows[positions].tolist())
        embeddings, _ = compute_embeddings(models["trunk"], subset, 256, device, embedder=models["embedder"],
                                           data_and_label_getter=getter)
    if distributed:
        return gather_training_set(embeddings, labels[rows[positions]].to(device), positions.to(device))
    return embeddings, labels[rows].to(device)
