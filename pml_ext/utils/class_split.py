"""The class-disjoint split rule (powerful-benchmarker's), shared by data sets and the runner."""
from __future__ import annotations

import numpy as np

__all__ = ["class_disjoint_splits"]


def class_disjoint_splits(classes: np.ndarray, test_size: float, test_start_idx: float,
                          num_training_partitions: int, num_training_sets: int) -> list[dict[str, np.ndarray]]:
    """The classes of each split of each scheme, for the sorted unique ``classes [C]``.

    - **test**: ``round(test_size * C)`` classes (at least 1, at most ``C - 1``) starting at
      position ``round(test_start_idx * C)``, wrapping around to the start;
    - **trainval**: the other classes, in order, cut into ``num_training_partitions``
      contiguous partitions (``numpy.array_split``);
    - scheme ``i < num_training_sets``: val = partition ``i``, train = the other
      partitions; with one partition, one scheme of train = trainval and no val.

    Returns ``[{"train": classes, ("val": classes,) "test": classes}, ...]``; the arguments
    are checked by the caller, but for more partitions than trainval classes (``ValueError``).
    """
    num_classes = len(classes)
    num_test = min(max(int(round(test_size * num_classes)), 1), num_classes - 1)
    start = int(round(test_start_idx * num_classes)) % num_classes
    test_pos = (start + np.arange(num_test)) % num_classes
    is_test = np.zeros(num_classes, dtype=bool)
    is_test[test_pos] = True
    trainval = classes[~is_test]
    if num_training_partitions > len(trainval):
        raise ValueError(f"num_training_partitions={num_training_partitions} exceeds the "
                         f"{len(trainval)} trainval classes")
    test = classes[np.sort(test_pos)]
    if num_training_partitions == 1:
        return [{"train": trainval, "test": test}]
    partitions = np.array_split(trainval, num_training_partitions)
    schemes = []
    for i in range(num_training_sets):
        train = np.concatenate([p for j, p in enumerate(partitions) if j != i])
        schemes.append({"train": train, "val": partitions[i], "test": test})
    return schemes
