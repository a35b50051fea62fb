"""Import torchvision for its models and transforms, even when its C++ operators cannot load.

torchvision's wheel carries compiled detection operators (``nms``, ``roi_align``, ...)
built against one torch build. Beside another build (the CUDA wheel of torchvision 0.28.0
next to the CPU build of torch 2.13.0: its ``_C.so`` needs ``libc10_cuda.so``) those
operators do not load, and ``import torchvision`` then fails on registering a fake kernel
for the missing ``torchvision::nms``. The models and transforms pml_ext uses are pure
Python and do not touch those operators, so :func:`import_torchvision` declares the two
schemas torchvision's import needs (``nms``, ``qnms``; without kernels: calling them still
fails, loudly) and imports it again.
"""
from __future__ import annotations

import logging
import sys

from ..config.config_error import ConfigError

__all__ = ["import_torchvision"]

LOGGER = logging.getLogger("pml_ext.runner")
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_declared: list = []  # keeps the torch.library.Library alive


def import_torchvision():
    """The ``torchvision`` module; a ``ConfigError`` saying how to install it when absent."""
    try:
        import torchvision
        return torchvision
    except ImportError:
        raise ConfigError("torchvision", "", 'not installed: image data sets, torchvision trunks and transforms '
                                            'need it: pip install "pml-ext[vision]"') from None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _declared:
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            library.define(schema)
        _declared.append(library)
        LOGGER.info("torchvision's compiled operators do not load with this torch build (%s); its models and "
                    "transforms work, its detection operators do not", exc)
        import torchvision
        return torchvision
