"""Image data sets in powerful-benchmarker's folder layouts, read from ``--dataset_root``.

Nothing is downloaded. Each data set lists its images once, checks that every listed file
exists, and yields PB's items ``{"data": image, "label": int}`` (so PB's split manager key
``data_and_label_getter_keys: [data, label]`` applies). ``labels`` holds every label
(``LongArray[N]``) for the split manager. Layouts, under the dataset root:

- ``CUB200``: ``cub2011/CUB_200_2011/images/<class folder>/<image>``; classes are the
  sorted folder names (torchvision's ``ImageFolder`` rule, which PB used).
- ``Cars196``: ``cars196/cars_annos.mat`` (its ``annotations`` hold ``relative_im_path``
  and ``class``) and the images at ``cars196/<relative_im_path>``.
- ``StanfordOnlineProducts``: ``Stanford_Online_Products/Ebay_train.txt`` and
  ``Ebay_test.txt`` (header ``image_id class_id super_class_id path``), images at
  ``Stanford_Online_Products/<path>``; the label is ``class_id - 1``.
- ``ImageFolder``: ``<folder>/<class folder>/<image>`` for any data set of your own.

A data set smaller than the published one (e.g. a subset) is used as it is, with a log line.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np
import torch

__all__ = ["CUB200", "Cars196", "ImageFolder", "StanfordOnlineProducts"]

LOGGER = logging.getLogger("pml_ext.runner")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class _ImageListDataset(torch.utils.data.Dataset):
    """Images at known paths with integer labels; subclasses list them from their layout."""

    layout = ""
    published = (0, 0)  # (classes, images) of the full data set, for the subset note

    def __init__(self, root: str | None = None, transform: Callable | None = None, download: bool = False,
                 dataset_root: str | None = None):
        if download:
            raise ValueError(f"download: pml_ext never downloads data sets; put {type(self).__name__} under the "
                             f"dataset root as {self.layout} and set download: False")
        self.root = os.path.abspath(root or dataset_root or "datasets")
        self.transform = transform
        paths, labels = self.list_images()
        if not paths:
            self._fail("no images found")
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            self._fail(f"{len(missing)} of {len(paths)} listed images are missing, e.g. {missing[0]}")
        self.img_paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        num_classes = len(np.unique(self.labels))
        if self.published[0] and (num_classes, len(paths)) != self.published:
            LOGGER.info("%s: %d classes, %d images (the published data set has %d and %d)", type(self).__name__,
                        num_classes, len(paths), *self.published)

    def list_images(self) -> tuple[list[str], list[int]]:
        raise NotImplementedError

    def _fail(self, problem: str):
        raise ValueError(f"{type(self).__name__} under {self.root}: {problem}. Expected layout: {self.layout} "
                         f"(set --dataset_root to the folder that holds it)")

    def _require(self, *parts: str, folder: bool = False) -> str:
        path = os.path.join(self.root, *parts)
        if not (os.path.isdir(path) if folder else os.path.isfile(path)):
            self._fail(f"{path} does not exist")
        return path

    def __len__(self) -> int:
        return len(self.img_paths)

    def __getitem__(self, idx: int) -> dict:
        from PIL import Image

        with Image.open(self.img_paths[idx]) as img:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return {"data": img, "label": int(self.labels[idx])}


def _scan_class_folders(folder: str) -> tuple[list[str], list[int]]:
    """``folder/<class>/<image>`` -> (paths, labels), classes numbered in sorted folder order."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(folder, name)) if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(folder, name, f) for f in files]
        labels += [label] * len(files)
    return paths, labels


class CUB200(_ImageListDataset):
    """Caltech-UCSD Birds 200-2011 in PB's layout (see the module docstring)."""

    layout = "<root>/cub2011/CUB_200_2011/images/<class folder>/<image>"
    published = (200, 11788)

    def list_images(self):
        return _scan_class_folders(self._require("cub2011", "CUB_200_2011", "images", folder=True))


class ImageFolder(_ImageListDataset):
    """Any data set laid out as ``<root>/<folder>/<class folder>/<image>``.

    Args:
        folder: the sub-folder of the dataset root that holds the class folders.
    """

    def __init__(self, folder: str = ".", root: str | None = None, transform: Callable | None = None,
                 download: bool = False, dataset_root: str | None = None):
        self.folder = folder
        self.layout = f"<root>/{folder}/<class folder>/<image>"
        super().__init__(root, transform, download, dataset_root)

    def list_images(self):
        return _scan_class_folders(self._require(self.folder, folder=True))


class Cars196(_ImageListDataset):
    """Stanford Cars (196 classes) in PB's layout (see the module docstring)."""

    layout = "<root>/cars196/cars_annos.mat and <root>/cars196/<relative_im_path> (e.g. car_ims/000001.jpg)"
    published = (196, 16185)

    def list_images(self):
        import scipy.io

        path = self._require("cars196", "cars_annos.mat")
        try:
            annotations = scipy.io.loadmat(path)["annotations"]
            rel_paths = [str(np.squeeze(p)) for p in annotations["relative_im_path"][0]]
            labels = [int(np.squeeze(c)) for c in annotations["class"][0]]
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            self._fail(f"{path} has no annotations with relative_im_path and class ({type(exc).__name__}: {exc})")
        folder = os.path.dirname(path)
        return [os.path.join(folder, p) for p in rel_paths], labels


class StanfordOnlineProducts(_ImageListDataset):
    """Stanford Online Products in PB's layout (see the module docstring)."""

    layout = ("<root>/Stanford_Online_Products/Ebay_train.txt and Ebay_test.txt (columns image_id class_id "
              "super_class_id path) and the images at Stanford_Online_Products/<path>")
    published = (22634, 120053)

    def list_images(self):
        import pandas

        paths, labels = [], []
        for name in ("Ebay_train.txt", "Ebay_test.txt"):
            path = self._require("Stanford_Online_Products", name)
            table = pandas.read_csv(path, sep=r"\s+", header=0)
            if not {"class_id", "path"} <= set(table.columns):
                self._fail(f"{path} lacks the columns class_id and path (has {', '.join(map(str, table.columns))})")
            folder = os.path.dirname(path)
            paths += [os.path.join(folder, p) for p in table["path"]]
            labels += [int(c) - 1 for c in table["class_id"]]
        return paths, labels


for _cls in (CUB200, Cars196, StanfordOnlineProducts, ImageFolder):
    _cls.needs_image_transforms = True
