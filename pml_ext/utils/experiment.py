"""A small, deterministic training loop and evaluation for pml_ext's experiments and tests.

PML's trainers run the full hook/record-keeper machinery; the experiments in tests and
benchmarks need only "train this model with this loss/miner/sampler, then measure it",
fast and seeded. Evaluation uses PML's own ``AccuracyCalculator``.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

__all__ = ["seed_everything", "train_metric_model", "embed_dataset", "evaluate_embeddings"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model init) and return a generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _batches(num_samples: int, batch_size: int, generator: torch.Generator,
             sampler: Iterable[int] | None) -> list[torch.Tensor]:
    if sampler is not None:
        flat = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
    else:
        flat = torch.randperm(num_samples, generator=generator)
    return [flat[i:i + batch_size] for i in range(0, len(flat), batch_size) if len(flat[i:i + batch_size]) > 1]


def train_metric_model(model: torch.nn.Module, data: torch.Tensor, labels: torch.Tensor,
                       loss_fn: Callable, miner: Callable | None = None, *,
                       batch_size: int = 32, epochs: int = 10, lr: float = 1e-3, seed: int = 0,
                       sampler: Iterable[int] | None = None,
                       on_iteration: Callable[[dict], None] | None = None,
                       on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train ``model`` on ``(data: Tensor[N, ...], labels: LongTensor[N])`` with Adam.

    Batches are consecutive ``batch_size`` chunks of ``sampler``'s flat index stream
    (re-iterated every epoch, like PML's ``MPerClassSampler``) or of a seeded permutation.
    ``miner(embeddings, labels)`` gives the ``indices_tuple`` passed to ``loss_fn``.

    Returns one dict per epoch: ``{"epoch", "mean_loss", "iterations"}``.
    """
    generator = seed_everything(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        for batch_idx in _batches(len(data), batch_size, generator, sampler):
            embeddings = model(data[batch_idx])
            batch_labels = labels[batch_idx]
            indices_tuple = miner(embeddings, batch_labels) if miner is not None else None
            loss = loss_fn(embeddings, batch_labels, indices_tuple)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
            if on_iteration is not None:
                on_iteration({"epoch": epoch, "loss": float(loss.detach()), "batch_indices": batch_idx})
        record = {"epoch": epoch, "mean_loss": total / max(count, 1), "iterations": count}
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    return history


@torch.no_grad()
def embed_dataset(model: torch.nn.Module, data: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings ``Tensor[N, d]`` of ``data`` in eval mode; restores the model's mode."""
    from .inference import compute_embeddings

    dataset = torch.utils.data.TensorDataset(data, torch.zeros(len(data), dtype=torch.long))
    return compute_embeddings(model, dataset, batch_size, device=data.device)[0]


def evaluate_embeddings(embeddings: torch.Tensor, labels: torch.Tensor,
                        include: Sequence[str] = ("precision_at_1", "mean_average_precision_at_r", "NMI"),
                        accuracy_calculator=None, distance=None) -> dict:
    """PML's retrieval metrics (query set = reference set) plus ``mean_distance``.

    ``mean_distance`` is the mean off-diagonal pairwise distance under ``distance``
    (a PML distance; default ``LpDistance()``, i.e. L2 on normalised embeddings, the
    default of PML's triplet losses). Near 0 means the network collapsed every input
    to one point.
    """
    from pytorch_metric_learning.distances import LpDistance

    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = accuracy_calculator or AccuracyCalculator(include=tuple(include), k="max_bin_count",
                                                     device=torch.device("cpu"))
    emb = embeddings.detach().float().cpu()
    lab = labels.detach().cpu()
    metrics = {k: float(v) for k, v in calc.get_accuracy(emb, lab, emb, lab, ref_includes_query=True).items()}
    n = len(emb)
    dist = (distance or LpDistance())(emb)
    metrics["mean_distance"] = float(dist.sum() / max(n * (n - 1), 1))
    return metrics
