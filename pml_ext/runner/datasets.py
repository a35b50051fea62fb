"""The data sets a config can name under ``dataset:``.

``Digits`` (scikit-learn's, embedded, the default), ``Glyphs`` (the embedded glyph
benchmark, rendered from matplotlib's fonts) and ``NpzFeatures`` are in-memory data sets:
config transforms do not apply to them. ``CUB200``, ``Cars196`` and
``StanfordOnlineProducts`` are image data sets read from a local folder with PML's own
dataset classes; pml_ext never downloads them, and they need torchvision for transforms.
"""
from __future__ import annotations

import os

from ..datasets.digits import Digits
from ..datasets.glyphs import Glyphs
from .npz_features import NpzFeatures

__all__ = ["Digits", "Glyphs", "NpzFeatures", "CUB200", "Cars196", "StanfordOnlineProducts"]


def _local_image_dataset(pml_name: str, default_folder: str, expected: str, dataset_root: str | None,
                         root: str | None, download: bool, split: str, transform):
    if download:
        raise ValueError(f"download: pml_ext never downloads data sets; put {expected} under root "
                         f"and set download: False")
    root = root or os.path.join(dataset_root or "datasets", default_folder)
    if not os.path.isdir(root):
        raise ValueError(f"root {root!r} does not exist: it must hold {expected} "
                         f"(give root: or --dataset_root)")
    from pytorch_metric_learning import datasets as pml_datasets

    return getattr(pml_datasets, pml_name)(root=root, split=split, transform=transform, download=False)


def CUB200(dataset_root: str | None = None, root: str | None = None, download: bool = False,
           split: str = "train+test", transform=None):
    """CUB-200-2011 with PML's ``CUB``; ``root`` (default ``<dataset_root>/cub2011``) holds ``CUB_200_2011/``."""
    return _local_image_dataset("CUB", "cub2011", "CUB_200_2011/", dataset_root, root, download, split, transform)


def Cars196(dataset_root: str | None = None, root: str | None = None, download: bool = False,
            split: str = "train+test", transform=None):
    """Cars196 with PML's ``Cars196``; ``root`` (default ``<dataset_root>/cars196``) holds its csv files and images."""
    return _local_image_dataset("Cars196", "cars196", "names.csv, anno_*.csv and the images",
                                dataset_root, root, download, split, transform)


def StanfordOnlineProducts(dataset_root: str | None = None, root: str | None = None, download: bool = False,
                           split: str = "train+test", transform=None):
    """SOP with PML's ``StanfordOnlineProducts``; ``root`` (default ``<dataset_root>/online_products``)
    holds ``Stanford_Online_Products/``."""
    return _local_image_dataset("StanfordOnlineProducts", "online_products", "Stanford_Online_Products/",
                                dataset_root, root, download, split, transform)


for _factory in (CUB200, Cars196, StanfordOnlineProducts):
    _factory.needs_image_transforms = True
