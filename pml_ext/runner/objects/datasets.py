"""The data sets a config can name under ``dataset:``.

``Digits`` (scikit-learn's, embedded, the default), ``Glyphs`` (the embedded glyph
benchmark, rendered from matplotlib's fonts) and ``NpzFeatures`` are in-memory data sets:
config transforms do not apply to them. ``CUB200``, ``Cars196``,
``StanfordOnlineProducts`` and ``ImageFolder`` are image data sets in powerful-benchmarker's
folder layouts, read from ``--dataset_root`` (see :mod:`pml_ext.runner.objects.image_folders`);
pml_ext never downloads them, and their transforms need torchvision (``pml-ext[vision]``).
"""
from __future__ import annotations

from ...datasets.digits import Digits
from ...datasets.glyphs import Glyphs
from .image_folders import CUB200, Cars196, ImageFolder, StanfordOnlineProducts
from .npz_features import NpzFeatures

__all__ = ["Digits", "Glyphs", "NpzFeatures", "CUB200", "Cars196", "StanfordOnlineProducts", "ImageFolder"]
