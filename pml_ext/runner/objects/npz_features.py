"""Precomputed features and labels from an ``.npz`` file, as a PML-style dataset."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["NpzFeatures"]


class NpzFeatures(Dataset):
    """Features ``[N, d]`` and integer labels ``[N]`` stored in one ``.npz`` file.

    Use it to run metric learning on embeddings computed elsewhere (e.g. a frozen
    backbone): the trunk is then usually ``Identity`` or a small ``MLP``.

    ``dataset[i]`` returns ``(features: Tensor[d], label: int)``; ``.data``
    (``Tensor[N, d]``, float32) and ``.labels`` (``LongTensor[N]``) hold the whole set.

    Args:
        path: the ``.npz`` file. A relative path is looked up in the working directory,
            then under ``dataset_root``.
        features_key: the array holding the features.
        labels_key: the array holding the labels.
        dataset_root: where relative paths may also live (the runner passes its
            ``--dataset_root``).
    """

    def __init__(self, path: str, features_key: str = "features", labels_key: str = "labels",
                 dataset_root: str | None = None):
        resolved = path
        if not os.path.isabs(path) and not os.path.isfile(path) and dataset_root is not None:
            resolved = os.path.join(dataset_root, path)
        if not os.path.isfile(resolved):
            raise ValueError(f"path does not exist: {path!r}"
                             + (f" (also looked in dataset_root {dataset_root!r})" if dataset_root else ""))
        with np.load(resolved, allow_pickle=False) as arrays:
            for key, arg in ((features_key, "features_key"), (labels_key, "labels_key")):
                if key not in arrays:
                    raise ValueError(f"{arg} {key!r} is not in {resolved}; its arrays are {sorted(arrays.files)}")
            features, labels = arrays[features_key], arrays[labels_key]
        if features.ndim != 2:
            raise ValueError(f"features_key {features_key!r} must hold a 2-D [N, d] array, got shape {features.shape}")
        if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels_key {labels_key!r} must hold a 1-D array of length {features.shape[0]}, "
                             f"got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels_key {labels_key!r} must hold integers, got dtype {labels.dtype}")
        if not np.isfinite(features).all():
            raise ValueError(f"features_key {features_key!r} contains NaN or inf values")
        self.path = resolved
        self.data = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, idx):
        return self.data[idx], int(self.labels[idx])
