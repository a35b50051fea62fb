"""Glyphs: an embedded many-class retrieval benchmark rendered from matplotlib's fonts.

One class per character; one sample per (character, font) and seeded augmentation. The
papers' benchmarks (CUB-200, Cars196, SOP) have many classes, few images per class, a
class-disjoint split, and invariances that transfer to unseen classes; so do glyphs,
and they need no download. See docs/glyphs.md for the rules and the measured figures.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .glyph_cache import load_or_build

__all__ = ["Glyphs", "glyphs_split", "SPLITS"]

SPLITS = ("all", "train", "val", "test")


def _class_splits(num_classes: int, val_fraction: float) -> dict[str, np.ndarray]:
    """Labels of each split: the runner's class-disjoint rule (test = the second half of the
    seeded class order), and val = the first ``val_fraction`` of the training classes."""
    from ..runner.objects.split_manager import ClassDisjointSplitManager

    scheme = ClassDisjointSplitManager(test_size=0.5, test_start_idx=0.5, num_training_partitions=1,
                                       num_training_sets=1).class_splits(np.arange(num_classes))[0]
    trainval = scheme["train"]
    num_val = int(round(val_fraction * len(trainval)))
    return {"all": np.arange(num_classes), "trainval": trainval, "val": trainval[:num_val],
            "train": trainval[num_val:], "test": scheme["test"]}


class Glyphs(Dataset):
    """Characters drawn in the fonts that ship with matplotlib, as ``Tensor[1, 32, 32]`` in [0, 1].

    ``dataset[i]`` returns ``(image: Tensor[1, 32, 32], label: int)``; ``.data``
    (``Tensor[N, 1, 32, 32]``, float32) and ``.labels`` (``LongTensor[N]``) hold the whole
    split, ``.fonts`` (``LongTensor[N]``) the font of each sample, ``.characters[label]``
    the character of a class and ``.font_names[font]`` a font's file name.

    Labels are positions in a seeded permutation of the characters (``split_seed``), so
    the class-disjoint split "first half train, second half test" is the runner's
    ``ClassDisjointSplitManager`` with ``test_size: 0.5, test_start_idx: 0.5``.

    Rendered once, then cached as ``.npz`` (see :func:`pml_ext.datasets.glyph_cache.cache_folder`);
    the cache key holds the font files' hashes, the arguments and the renderer's versions.

    Args:
        split: ``"all"`` (every class; the runner splits it), ``"train"``, ``"val"``
            (the first ``val_fraction`` of the training classes, for model selection) or
            ``"test"``. ``"train"`` excludes the val classes.
        min_fonts: keep characters drawn by at least this many fonts (default 12: about
            2,150 classes after the look-alike rule).
        samples_per_font: augmented samples per (character, font); default 2 gives about
            29k training images.
        augment: ``False`` gives one clean sample per font (``samples_per_font`` must be 1).
        seed: seed of the augmentation.
        split_seed: seed of the class permutation.
        val_fraction: share of the training classes held out as ``"val"``.
        characters: only these characters (a string), e.g. for quick runs and tests.
        max_classes: keep only the first ``max_classes`` classes of the permutation.
        cache_dir: where the ``.npz`` cache lives.
    """

    def __init__(self, split: str = "all", min_fonts: int = 12, samples_per_font: int = 2, augment: bool = True,
                 seed: int = 0, split_seed: int = 0, val_fraction: float = 0.1, characters: str | None = None,
                 max_classes: int | None = None, cache_dir: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not 0 <= float(val_fraction) < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        arrays = load_or_build(min_fonts=min_fonts, samples_per_font=samples_per_font, augment=augment, seed=seed,
                               split_seed=split_seed, characters=characters, max_classes=max_classes,
                               cache_dir=cache_dir)
        self.characters: list[str] = [chr(int(cp)) for cp in arrays["code_points"]]
        self.font_names: list[str] = [str(n) for n in arrays["font_names"]]
        self.removed_lookalikes: list[str] = [chr(int(cp)) for cp in arrays["removed_code_points"]]
        self.num_classes = len(self.characters)
        self.val_fraction = float(val_fraction)
        self.data = torch.from_numpy(arrays["images"]).unsqueeze(1).float().div_(255.0)
        self.labels = torch.from_numpy(arrays["labels"].astype(np.int64))
        self.fonts = torch.from_numpy(arrays["fonts"].astype(np.int64))
        self.split = "all"
        if split != "all":
            self._keep(self.class_split(split))
            self.split = split

    def class_split(self, split: str) -> np.ndarray:
        """The labels of ``split`` (``"train"``, ``"val"``, ``"test"``, ``"trainval"`` or ``"all"``)."""
        return _class_splits(self.num_classes, self.val_fraction)[split]

    def _keep(self, labels: np.ndarray) -> None:
        mask = torch.from_numpy(np.isin(self.labels.numpy(), labels))
        self.data, self.labels, self.fonts = self.data[mask], self.labels[mask], self.fonts[mask]

    def subset(self, split: str) -> "Glyphs":
        """A view of one split of this (``"all"``) data set, sharing nothing mutable with it."""
        if self.split != "all":
            raise ValueError(f"split: subset() needs the 'all' data set, this one is {self.split!r}")
        view = object.__new__(Glyphs)
        view.__dict__.update(self.__dict__)
        view._keep(self.class_split(split))
        view.split = split
        return view

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, idx):
        return self.data[idx], int(self.labels[idx])


def glyphs_split(val_fraction: float = 0.1, **kwargs) -> tuple[Glyphs, Glyphs, Glyphs]:
    """``(train, val, test)``: class-disjoint; val holds the first ``val_fraction`` of the
    training classes (for model selection) and is empty with ``val_fraction=0``.

    Other keyword arguments go to :class:`Glyphs` (``samples_per_font``, ``seed``, ...).
    """
    full = Glyphs("all", val_fraction=val_fraction, **kwargs)
    return full.subset("train"), full.subset("val"), full.subset("test")
