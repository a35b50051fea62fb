"""scikit-learn's digits as a PML-style dataset: the embedded default data of pml_ext.

The images ship inside scikit-learn, so nothing is downloaded.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["Digits", "digits_split"]


class Digits(Dataset):
    """The 8x8 digits as flat 64-d float vectors scaled to [0, 1].

    ``dataset[i]`` returns ``(features: Tensor[64], label: int)`` as PML's trainers
    and testers expect. ``.data`` (``Tensor[N, 64]``) and ``.labels`` (``LongTensor[N]``)
    give the whole set for vectorised use.

    Args:
        classes: digit classes to keep (default all ten).
    """

    def __init__(self, classes: Sequence[int] | None = None):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data = np.asarray(bunch.data, dtype=np.float32) / 16.0
        labels = np.asarray(bunch.target, dtype=np.int64)
        if classes is not None:
            classes = [int(c) for c in classes]
            unknown = sorted(set(classes) - set(range(10)))
            if unknown:
                raise ValueError(f"classes must be digits 0-9, got {unknown}")
            keep = np.isin(labels, classes)
            data, labels = data[keep], labels[keep]
        self.data = torch.from_numpy(data)
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, idx):
        return self.data[idx], int(self.labels[idx])


def digits_split(train_classes: Sequence[int] = (0, 1, 2, 3, 4),
                 test_classes: Sequence[int] = (5, 6, 7, 8, 9)) -> tuple[Digits, Digits]:
    """The class-disjoint split used throughout pml_ext's experiments: train 0-4, test 5-9."""
    return Digits(train_classes), Digits(test_classes)
