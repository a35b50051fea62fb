"""Import torchvision for its models and transforms, with a clear error when it cannot load.

torchvision's wheel carries compiled detection operators (``nms``, ``roi_align``, ...)
built against one torch build. Beside another build (a CUDA wheel of torchvision next to
a CPU build of torch: its ``_C.so`` needs ``libc10_cuda.so``) those operators do not load,
and ``import torchvision`` fails on registering a fake kernel for the missing
``torchvision::nms``. That is a broken install, and :func:`import_torchvision` says so
(:class:`TorchvisionMismatch`) with the fix: matching builds of torch and torchvision.

The models and transforms pml_ext uses are pure Python and do not touch those operators.
Only when asked to, with the environment variable ``PML_EXT_TORCHVISION_SCHEMA_WORKAROUND=1``,
:func:`import_torchvision` declares the two operator schemas torchvision's import needs
(``nms``, ``qnms``; without kernels: calling them still fails, loudly) in torch's global
operator registry and imports torchvision again, with a warning. That changes process-wide
state (the ``torchvision`` operator namespace, the ``torchvision*`` entries of
``sys.modules``), which is why it is never done implicitly.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import sys

import torch

from ..config.config_error import ConfigError

__all__ = ["import_torchvision", "TorchvisionMismatch", "SCHEMA_WORKAROUND_ENV"]

LOGGER = logging.getLogger("pml_ext.runner")
SCHEMA_WORKAROUND_ENV = "PML_EXT_TORCHVISION_SCHEMA_WORKAROUND"
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_declared: list = []  # keeps the torch.library.Library alive
_failure: list[str] = []  # the first failed import's message: torchvision is not imported twice


class TorchvisionMismatch(ConfigError):
    """torchvision is installed, but its compiled part does not load with this torch build."""

    def __init__(self, detail: str):
        self.message = _mismatch_message(detail)
        super().__init__("torchvision", "", self.message)


def import_torchvision():
    """The ``torchvision`` module.

    Raises:
        ConfigError: torchvision is not installed (the message says how to install it).
        TorchvisionMismatch: it is installed but built for another torch; the message names
            both versions, how to install matching builds and the
            ``PML_EXT_TORCHVISION_SCHEMA_WORKAROUND`` switch.
    """
    switched_on = os.environ.get(SCHEMA_WORKAROUND_ENV, "") == "1"
    if _failure and not switched_on:
        raise TorchvisionMismatch(_failure[0])
    try:
        import torchvision
        return torchvision
    except ImportError:
        raise ConfigError("torchvision", "", 'not installed: image data sets, torchvision trunks and transforms '
                                            'need it: pip install "pml-ext[vision]"') from None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _declared:
            raise
        if not switched_on:
            _failure.append(str(exc))
            raise TorchvisionMismatch(str(exc)) from None
        return _import_with_declared_schemas(exc)


def _import_with_declared_schemas(exc: RuntimeError):
    """The switched-on workaround: declare ``nms`` / ``qnms`` and import torchvision again."""
    LOGGER.warning("%s=1: torchvision's compiled operators do not load with torch %s (%s); declaring the "
                   "torchvision::nms and torchvision::qnms schemas in torch's operator registry and importing "
                   "torchvision again: its models and transforms work, its detection operators do not",
                   SCHEMA_WORKAROUND_ENV, torch.__version__, exc)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _declared.append(library)
    import torchvision
    return torchvision


def _mismatch_message(detail: str) -> str:
    try:
        vision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision = "(version unknown)"
    return (f"torchvision {vision} was built for another torch (this is torch {torch.__version__}): its compiled "
            f"operators do not load ({detail}). Install matching builds, e.g. on a CPU-only machine: "
            f"pip install --force-reinstall torch torchvision --index-url https://download.pytorch.org/whl/cpu "
            f"(or the torchvision release made for torch {torch.__version__.split('+')[0]}). pml_ext uses only "
            f"torchvision's Python models and transforms; to run with this install anyway, set "
            f"{SCHEMA_WORKAROUND_ENV}=1 (it declares the missing operator schemas; detection operators stay "
            f"unusable; see docs/runner.md)")
