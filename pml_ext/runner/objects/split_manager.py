"""Class-disjoint train/val/test splits, equivalent to powerful-benchmarker's ``ClassDisjointSplitManager``."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...utils.class_split import class_disjoint_splits

__all__ = ["ClassDisjointSplitManager"]


def _percent(x: float) -> str:
    return f"{x * 100:g}"


class ClassDisjointSplitManager:
    """Split a data set by class: no class is shared between test, train and val.

    The rule (PB's, on the sorted list of the ``C`` classes; ``utils.class_split``):

    - **test**: ``round(test_size * C)`` classes starting at position
      ``round(test_start_idx * C)``, wrapping around to the start of the list;
    - **trainval**: the other classes, in order, cut into ``num_training_partitions``
      contiguous partitions (``numpy.array_split``);
    - **split scheme i** (``i < num_training_sets``): val = partition ``i``, train = the
      other partitions. PB trains one sub-experiment per scheme (cross-validation).

    ``num_training_partitions: 1`` (pml_ext's addition) means no class-disjoint val split:
    train on all trainval classes and evaluate on test (the main job on digits: train 0-4,
    test 5-9). With ``val_fraction: f`` (pml_ext's addition, only with one partition), a
    seeded ``f`` of each training class's samples is held out as the ``val`` split, on which
    models are chosen; the test classes are never looked at until the end.

    Scheme names follow PB: ``Test50_50_Partitions4_0`` (start %, size %, partitions, index).

    Args:
        test_size: fraction of the classes in the test split, in (0, 1).
        test_start_idx: where the test classes start, as a fraction in [0, 1).
        num_training_partitions: partitions of the trainval classes (>= 1).
        num_training_sets: how many schemes to produce (1 <= sets <= partitions).
        hierarchy_level: the label column to split on when labels are 2-D.
        data_and_label_getter_keys: for data sets whose items are dicts, the keys of the
            data and the label (PB's ``[data, label]``); ``None`` for ``(data, label)`` tuples.
        labels_attr_name: the data set attribute holding every label.
        val_fraction: with ``num_training_partitions: 1``, the share of each training class's
            samples held out as ``val`` (at least 1 sample, at most all but 1), in [0, 1); 0 = none.
        val_seed: the seed of that hold-out.
    """

    def __init__(self, test_size: float = 0.5, test_start_idx: float = 0.5, num_training_partitions: int = 4,
                 num_training_sets: int = 4, hierarchy_level: int = 0,
                 data_and_label_getter_keys: Sequence[str] | None = None, labels_attr_name: str = "labels",
                 val_fraction: float = 0.0, val_seed: int = 0):
        if not 0 < float(test_size) < 1:
            raise ValueError(f"test_size must be in (0, 1), got {test_size}")
        if not 0 <= float(test_start_idx) < 1:
            raise ValueError(f"test_start_idx must be in [0, 1), got {test_start_idx}")
        if int(num_training_partitions) < 1:
            raise ValueError(f"num_training_partitions must be >= 1, got {num_training_partitions}")
        if not 1 <= int(num_training_sets) <= int(num_training_partitions):
            raise ValueError(f"num_training_sets must be in [1, num_training_partitions={num_training_partitions}], "
                             f"got {num_training_sets}")
        if data_and_label_getter_keys is not None and len(data_and_label_getter_keys) != 2:
            raise ValueError(f"data_and_label_getter_keys must be two keys [data, label], got {data_and_label_getter_keys}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        if val_fraction and int(num_training_partitions) != 1:
            raise ValueError("val_fraction needs num_training_partitions: 1 (more partitions already give "
                             "class-disjoint val splits)")
        self.val_fraction = float(val_fraction)
        self.val_seed = int(val_seed)
        self.test_size = float(test_size)
        self.test_start_idx = float(test_start_idx)
        self.num_training_partitions = int(num_training_partitions)
        self.num_training_sets = int(num_training_sets)
        self.hierarchy_level = int(hierarchy_level)
        self.data_and_label_getter_keys = list(data_and_label_getter_keys) if data_and_label_getter_keys else None
        self.labels_attr_name = labels_attr_name

    def labels_of(self, dataset) -> np.ndarray:
        """The split-level labels ``[N]`` of ``dataset``, read from its labels attribute."""
        labels = getattr(dataset, self.labels_attr_name, None)
        if labels is None:
            raise ValueError(f"labels_attr_name: the data set {type(dataset).__name__} has no "
                             f"'{self.labels_attr_name}' attribute listing every label")
        labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
        if labels.ndim == 2:
            labels = labels[:, self.hierarchy_level]
        if labels.ndim != 1:
            raise ValueError(f"labels_attr_name: '{self.labels_attr_name}' must be 1-D or 2-D, got shape {labels.shape}")
        return labels

    def class_splits(self, classes: np.ndarray) -> list[dict[str, np.ndarray]]:
        """For the sorted unique ``classes``, the classes of each split of each scheme."""
        return class_disjoint_splits(classes, self.test_size, self.test_start_idx, self.num_training_partitions,
                                     self.num_training_sets)

    def scheme_name(self, i: int) -> str:
        return (f"Test{_percent(self.test_start_idx)}_{_percent(self.test_size)}_"
                f"Partitions{self.num_training_partitions}_{i}")

    def split_schemes(self, dataset) -> dict[str, dict[str, np.ndarray]]:
        """``{scheme name: {"train" | "val" | "test": sample indices LongArray[n]}}``."""
        labels = self.labels_of(dataset)
        classes = np.unique(labels)
        if len(classes) < 2:
            raise ValueError(f"the data set has {len(classes)} class(es); a class-disjoint split needs >= 2")
        schemes = {self.scheme_name(i): {split: np.flatnonzero(np.isin(labels, cls)) for split, cls in scheme.items()}
                   for i, scheme in enumerate(self.class_splits(classes))}
        if self.val_fraction:
            for splits in schemes.values():
                splits["train"], splits["val"] = self.hold_out(splits["train"], labels[splits["train"]])
        return schemes

    def hold_out(self, indices: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(train, val)`` sample indices: a seeded ``val_fraction`` of each class of ``labels [n]``."""
        rng = np.random.default_rng(self.val_seed)
        order = rng.permutation(len(indices))
        order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, random within class
        classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        rank = np.arange(len(order)) - np.repeat(starts, counts)  # position within its class
        held = np.clip(np.round(self.val_fraction * counts), 1, np.maximum(counts - 1, 1)).astype(int)
        is_val = rank < np.repeat(held, counts)
        return np.sort(indices[order[~is_val]]), np.sort(indices[order[is_val]])
