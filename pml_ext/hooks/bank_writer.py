"""Fill an ``EmbeddingBank`` from the embeddings a PML trainer computes for its training batches."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset, default_collate

__all__ = ["BankWriter"]


class BankWriter:
    """Writes every training batch's embeddings into ``bank`` as a side effect of PML's training step.

    PML's trainers do not know which dataset rows a batch holds, so :meth:`attach` makes each
    item carry its index and writes after the trainer's own embedding call:

    - ``trainer.dataset`` yields ``(item, index)`` (the wrapped dataset is ``.dataset`` of it);
    - ``trainer.collate_fn`` collates the items as before (the trainer's own ``collate_fn``
      or PyTorch's default) and the indices into a ``LongTensor[B]``;
    - ``trainer.data_and_label_getter`` keeps those indices aside and passes the items to
      the trainer's getter;
    - ``trainer.compute_embeddings`` calls the trainer's own method, then writes its
      output ``Tensor[B, d]`` (detached) to those rows, stamped with ``trainer.epoch``.

    Nothing else changes: the loss sees the same embeddings, gradients flow as before, and
    the tester and any other embedding pass (they do not use ``trainer.compute_embeddings``)
    leave the bank alone. Indices are positions in ``trainer.dataset`` as it was at
    ``attach`` (the sampler's indices). Works with trainers whose ``calculate_loss`` embeds the
    batch once through ``compute_embeddings`` (``MetricLossOnly``, ``TrainWithClassifier``).
    Under DDP each rank's bank holds its own batches' rows; ``bank.gathered()`` joins them.

    Args:
        bank: the ``EmbeddingBank`` to fill; its ``num_rows`` must be the dataset's length.
    """

    def __init__(self, bank):
        from ..index.embedding_bank import EmbeddingBank

        if not isinstance(bank, EmbeddingBank):
            raise TypeError(f"bank must be a pml_ext.EmbeddingBank, got {type(bank).__name__}")
        self.bank = bank
        self._pending: torch.Tensor | None = None

    def attach(self, trainer: Any) -> "BankWriter":
        """Hook into ``trainer`` (before ``trainer.train()``, which builds its data loader)."""
        if "subset_batch_miner" in getattr(trainer, "mining_funcs", {}):
            raise ValueError("trainer: a subset_batch_miner drops rows of the batch after loading, so the "
                             "embeddings no longer match the batch's dataset indices; BankWriter cannot use it")
        if len(trainer.dataset) != self.bank.num_rows:
            raise ValueError(f"bank has {self.bank.num_rows} rows but trainer.dataset holds {len(trainer.dataset)} "
                             "samples: one bank row per training sample")
        trainer.dataset = _IndexedDataset(trainer.dataset)
        trainer.collate_fn = _IndexedCollate(trainer.collate_fn)
        trainer.data_and_label_getter = self._getter(trainer.data_and_label_getter)
        trainer.compute_embeddings = self._embedder(trainer, trainer.compute_embeddings)
        return self

    def _getter(self, getter: Callable) -> Callable:
        def data_and_label_getter(batch):
            items, self._pending = batch
            return getter(items)

        return data_and_label_getter

    def _embedder(self, trainer: Any, compute_embeddings: Callable) -> Callable:
        def compute_and_write(data):
            embeddings = compute_embeddings(data)
            indices, self._pending = self._pending, None
            if indices is not None:  # one write per loaded batch
                self.bank.write(indices, embeddings, epoch=int(getattr(trainer, "epoch", 0) or 0))
            return embeddings

        return compute_and_write


class _IndexedDataset(Dataset):
    """``dataset[i]`` as ``(dataset[i], i)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index], index


class _IndexedCollate:
    """``[(item, index), ...]`` -> ``(collate([item, ...]), LongTensor[B])``."""

    def __init__(self, collate_fn: Callable | None):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, pairs: list) -> tuple[Any, torch.Tensor]:
        items, indices = zip(*pairs)
        return self.collate_fn(list(items)), torch.as_tensor(indices, dtype=torch.long)
