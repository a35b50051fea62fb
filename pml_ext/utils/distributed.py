"""torch.distributed helpers for pml_ext's epoch-level parts (global index, samplers, controller).

PML's ``DistributedLossWrapper`` / ``DistributedMinerWrapper`` cover per-batch losses and
miners. What they do not cover is everything that looks at the *whole training set*:
each rank embeds only its shard, yet every rank must mine from the same global picture
and set the same hyper-parameters. These helpers give every rank identical copies.

All functions are no-ops (return their input) when torch.distributed is not initialised,
so the same code runs single-process.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from pytorch_metric_learning.utils.distributed import is_distributed

__all__ = [
    "is_distributed",
    "rank_and_world_size",
    "all_gather_uneven",
    "gather_training_set",
    "first_copies",
    "mean_across_ranks",
    "broadcast_object",
    "init_from_env",
    "run_device",
]


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when not distributed."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_gather_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor: Tensor[n_r, ...]`` of every rank, in rank order.

    Unlike ``torch.distributed.all_gather``, the first dimension may differ between ranks
    (the last shard of a dataset is usually shorter). No gradient flows through the result.
    """
    if not is_distributed():
        return tensor
    world_size = dist.get_world_size()
    local_size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size)
    sizes = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    buffers = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(buffers, padded.contiguous())
    return torch.cat([buf[:n] for buf, n in zip(buffers, sizes)], dim=0)


def gather_training_set(embeddings: torch.Tensor, labels: torch.Tensor,
                        dataset_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Assemble the whole training set's embeddings from every rank's shard.

    Args:
        embeddings: ``Tensor[n_r, d]``, this rank's shard.
        labels: ``LongTensor[n_r]``.
        dataset_indices: ``LongTensor[n_r]``, the dataset index of each row. Shards may
            overlap (``DistributedSampler`` pads by repeating samples): the first copy wins.

    Returns:
        ``(embeddings: Tensor[N, d], labels: LongTensor[N])`` in dataset order, identical on
        every rank, so every rank builds the same index and mines the same triplets.
    """
    if not (embeddings.shape[0] == labels.shape[0] == dataset_indices.shape[0]):
        raise ValueError(
            "embeddings, labels and dataset_indices must have the same length, got "
            f"{embeddings.shape[0]}, {labels.shape[0]}, {dataset_indices.shape[0]}"
        )
    all_emb = all_gather_uneven(embeddings)
    all_labels = all_gather_uneven(labels)
    all_idx = all_gather_uneven(dataset_indices.long())
    num_samples = int(all_idx.max()) + 1 if all_idx.numel() else 0
    keep = first_copies(all_idx)
    if keep.numel() != num_samples:
        raise ValueError(
            f"dataset_indices gathered from all ranks cover {keep.numel()} of {num_samples} samples: "
            "every sample of the training set must be embedded by some rank"
        )
    return all_emb[keep], all_labels[keep]


def first_copies(dataset_indices: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of every distinct value of ``dataset_indices: LongTensor[M]``,
    in ascending order of the values: ``LongTensor[U]``. Rows gathered from the ranks come in rank
    order, so the first copy is the lowest rank's."""
    # A stable sort keeps the copies of a value in their original order.
    order = torch.sort(dataset_indices, stable=True).indices
    sorted_idx = dataset_indices[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return order[first]


def mean_across_ranks(value: float) -> float:
    """The mean of a Python number over all ranks (the value itself when not distributed)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item() / dist.get_world_size())


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_device(configured: str | torch.device | None = None) -> torch.device:
    """The device a run (one rank of it) computes on: the configured one, else
    ``cuda:LOCAL_RANK`` when CUDA is available (each torchrun rank its own GPU), else ``cpu``."""
    if configured is not None:
        return torch.device(configured)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_from_env(backend: str | None = None, timeout_seconds: float = 300.0,
                  device: str | torch.device | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Returns False (and does nothing) when ``WORLD_SIZE`` is absent or 1. The backend follows
    the run's device (:func:`run_device` of ``device``): NCCL for a cuda device, gloo otherwise.
    The timeout is bounded so that a rank that dies makes the others fail with an error
    instead of waiting forever in a collective.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or is_distributed():
        return is_distributed()
    backend = backend or ("nccl" if run_device(device).type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return True
