"""``UnsupervisedEmbeddingsUsingAugmentations``: PML 0.9's trainer, gone from PML 2.x.

Each batch item is augmented by every transform; the augmented copies of one image share a
pseudo-label (its position in the batch) and the metric loss pulls them together. The data
set's own labels are never read. PB's ``with_unsupervised`` config uses it, with the
augmentations given as ``transforms: augmentation1: ..., augmentation2: ...``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from pytorch_metric_learning.trainers import MetricLossOnly

__all__ = ["UnsupervisedEmbeddingsUsingAugmentations"]


class UnsupervisedEmbeddingsUsingAugmentations(MetricLossOnly):
    """MetricLossOnly on augmented copies, labelled by source image.

    Args:
        transforms: the augmentations; each maps one raw item's data (e.g. a PIL image) to
            a tensor ``[C, H, W]``. A batch of ``B`` items gives ``B * len(transforms)`` rows.
        data_and_label_setter: packs ``(data [B*T, ...], labels LongTensor[B*T])`` into what
            ``data_and_label_getter`` reads (PB: ``{"data": ..., "label": ...}``);
            default: the tuple itself.
        *args, **kwargs: PML's ``MetricLossOnly`` arguments.
    """

    def __init__(self, transforms: Sequence[Callable], data_and_label_setter: Callable | None = None,
                 *args, **kwargs):
        if not transforms:
            raise ValueError("transforms: give at least one augmentation (PB: transforms.augmentation1, ...)")
        self.transforms = list(transforms)
        self.data_and_label_setter = data_and_label_setter or (lambda batch: batch)
        kwargs.setdefault("set_min_label_to_zero", False)
        super().__init__(*args, collate_fn=self.augmented_batch, **kwargs)

    def augmented_batch(self, items: list) -> object:
        """The collate function: every item through every transform, labelled by item."""
        data, labels = [], []
        for i, item in enumerate(items):
            raw, _ = self.data_and_label_getter(item)
            for transform in self.transforms:
                data.append(transform(raw))
                labels.append(i)
        return self.data_and_label_setter((torch.stack(data), torch.tensor(labels, dtype=torch.long)))
