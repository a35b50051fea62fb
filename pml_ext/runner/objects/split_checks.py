"""Start-up checks of the split schemes against what will be evaluated.

- A query or reference set with fewer than 2 classes is an error: retrieval on one class
  scores P@1 = MAP@R = NMI = 1 whatever the model, so early stopping and "best" models
  would be chosen on a constant.
- PB's cross-validation (``num_training_partitions > 1``) on a small data set gets a
  warning when a validation partition has fewer than :data:`FEW_CLASSES` classes: its
  accuracy is then measured on a handful of classes and is noisy.
"""
from __future__ import annotations

import logging

import numpy as np

from ..config.config_error import ConfigError

__all__ = ["FEW_CLASSES", "REFERENCE_SETS", "check_batches", "check_split_classes", "map_splits_to_eval"]

LOGGER = logging.getLogger("pml_ext.runner")
REFERENCE_SETS = ("compared_to_self", "compared_to_sets_combined", "compared_to_training_set")
FEW_CLASSES = 10


def check_split_classes(schemes: dict[str, dict[str, np.ndarray]], labels: np.ndarray, splits_to_eval: list,
                        source: str, num_training_partitions: int | None = None) -> None:
    """Raise for a < 2-class query or reference set; warn for few-class validation partitions.

    Args:
        schemes: ``{scheme: {split: sample indices}}`` from the split manager.
        labels: ``[N]`` split-level labels of the data set.
        splits_to_eval: PML's ``[(query, [references])]``.
        source: where ``splits_to_eval`` comes from, for the error.
        num_training_partitions: the split manager's, when it has one.
    """
    labels = np.asarray(labels)
    few = []
    for scheme, indices in schemes.items():
        for query, refs in splits_to_eval:
            sets = [(f"query set '{query}'", indices[query]),
                    (f"reference set {'+'.join(refs)}", np.concatenate([indices[r] for r in refs]))]
            for what, idx in sets:
                n = len(np.unique(labels[idx]))
                if n < 2:
                    raise ConfigError(source, "splits_to_eval",
                                      f"split scheme {scheme}: the {what} has {n} class(es); retrieval accuracy on "
                                      f"fewer than 2 classes is 1 for any model. Use a larger data set, fewer "
                                      f"num_training_partitions, or other splits_to_eval")
        if "val" in indices:
            n = len(np.unique(labels[indices["val"]]))
            if n < FEW_CLASSES:
                few.append(f"{scheme}: {n}")
    if few and (num_training_partitions or 0) > 1:
        LOGGER.warning("PB's split scheme on a small data set: %d classes in all; the validation partitions have "
                       "few classes (%s), so validation accuracy, early stopping and model selection are noisy. "
                       "Consider num_training_partitions: 2 or a larger data set.",
                       len(np.unique(labels)), ", ".join(few))


def check_batches(sampler, num_train: int, batch_size: int, source: str) -> None:
    """PML's training loader drops the last partial batch: fewer samples per epoch than
    ``batch_size`` would give no batch at all (a bare ``StopIteration`` mid-training)."""
    import torch

    if sampler is None or isinstance(sampler, torch.utils.data.BatchSampler):
        available = num_train if sampler is None else None
    else:
        try:
            available = len(sampler)
        except TypeError:
            available = None
    if available is not None and available < batch_size:
        what = "the training split" if sampler is None else f"the {type(sampler).__name__}'s epoch"
        raise ConfigError(source, "trainer.batch_size", f"batch_size {batch_size} exceeds the {available} samples of "
                                                        f"{what}, so no batch would be drawn: use a smaller "
                                                        f"batch_size or a larger data set")


def map_splits_to_eval(splits: list, reference_set: str, available: list[str], source: str) -> list:
    """PB's ``splits_to_eval`` + tester ``reference_set`` -> PML 2.x's ``[(query, [references])]``.

    - ``compared_to_self``: each split is its own reference set;
    - ``compared_to_sets_combined``: every listed split is compared with all of them;
    - ``compared_to_training_set``: each split is compared with ``train``.

    Entries already in PML 2.x's form (``[query, [references]]``) pass through.
    """
    if reference_set not in REFERENCE_SETS:
        raise ConfigError(source, "tester.reference_set", f"must be one of {', '.join(REFERENCE_SETS)}, "
                                                          f"got {reference_set!r}")
    names = [s for s in splits if isinstance(s, str)]
    out = []
    for s in splits:
        if isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[1], (list, tuple)):
            query, refs = str(s[0]), [str(r) for r in s[1]]
        elif isinstance(s, str):
            query = s
            refs = {"compared_to_self": [s], "compared_to_sets_combined": list(names),
                    "compared_to_training_set": ["train"]}[reference_set]
        else:
            raise ConfigError(source, "splits_to_eval", f"entries must be split names or [query, [references]], "
                                                        f"got {s!r}")
        for name in [query] + refs:
            if name not in available:
                raise ConfigError(source, "splits_to_eval", f"split '{name}' does not exist; the split "
                                                            f"manager makes {', '.join(available)}")
        out.append((query, refs))
    return out
