"""Embed a whole dataset with PML's tester machinery, for the per-epoch index refresh."""
from __future__ import annotations

import torch
from pytorch_metric_learning.testers import BaseTester

__all__ = ["compute_embeddings"]


def compute_embeddings(model: torch.nn.Module, dataset: torch.utils.data.Dataset, batch_size: int,
                       device: torch.device | str | None = None, num_workers: int = 0,
                       embedder: torch.nn.Module | None = None,
                       data_and_label_getter=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of every item of ``dataset``, in dataset order.

    Runs PML's ``BaseTester.get_all_embeddings`` (eval mode, ``torch.no_grad``, a tqdm
    progress bar, PML's label handling) without its L2 normalisation: the PML distance
    given to the index or loss decides that. The model's train/eval mode is restored, so
    this can run inside a training loop's end-of-epoch hook.

    Args:
        model: maps a batch of inputs to ``Tensor[B, d]``.
        dataset: items ``(input, label)`` as PML's trainers expect.
        batch_size: items per forward pass.
        device: where inputs are sent; default: the model's parameters' device (CPU if
            it has none). The model is not moved.
        num_workers: ``DataLoader`` workers.
        embedder: applied to the model's output (PML's trunk + embedder), or ``None``.
        data_and_label_getter: PML's getter for datasets whose items are not ``(input, label)``.

    Returns:
        ``(embeddings: Tensor[N, d], labels: LongTensor[N])`` on ``device``; labels keep a
        second dimension ``[N, L]`` only when the dataset gives several label levels.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    try:
        size = len(dataset)
    except TypeError:
        raise TypeError(f"dataset must be a map-style Dataset with len(), got {type(dataset).__name__}") from None
    if size == 0:
        raise ValueError("dataset is empty")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    tester = BaseTester(normalize_embeddings=False, batch_size=batch_size, dataloader_num_workers=num_workers,
                        data_device=torch.device(device), data_and_label_getter=data_and_label_getter)
    modules = [m for m in (model, embedder) if m is not None]
    was_training = [[sub.training for sub in m.modules()] for m in modules]
    try:
        embeddings, labels = tester.get_all_embeddings(dataset, model, embedder)
    finally:  # every submodule's own mode (a trunk's frozen BatchNorm stays in eval mode)
        for m, modes in zip(modules, was_training):
            for sub, mode in zip(m.modules(), modes):
                sub.train(mode)
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return embeddings, labels
