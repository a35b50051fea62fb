"""powerful-benchmarker's trunks: torchvision architectures by name, and ``bninception``.

Rules (docs/runner.md, "Trunks"):

- A trunk is built with random weights, then loads ``weights_path`` (a local ``state_dict``
  file) when the config gives one. Nothing is downloaded, ever.
- ``pretrained: imagenet`` / ``pretrained: True`` without ``weights_path`` is an error: a
  random trunk where the config asked for a pretrained one would change the results silently.
- ``pretrained: null`` / ``False`` (or absent) means random initialisation.
- As in PB, the trunk's last linear layer (``fc``, ``last_linear`` or ``classifier``)
  becomes ``Identity``, so the trunk outputs its pooled features.
- ``bninception`` comes from the ``pretrainedmodels`` package (``pip install
  "pml-ext[pretrainedmodels]"``); its input convention (BGR, 0-255, its own mean and std)
  is given by :func:`input_convention` and applied by the image transforms, as PB did.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..config.config_error import ConfigError

__all__ = ["ToSpaceAndRange", "bninception", "build_trunk", "input_convention", "is_trunk_factory"]

IMAGENET_CONVENTION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "input_space": "RGB", "input_range": [0, 1]}
_LAST_LINEAR_NAMES = ("fc", "last_linear", "classifier")


def bninception(num_classes: int = 1000, **kwargs) -> torch.nn.Module:
    """BN-Inception (PB's default trunk), randomly initialised, from ``pretrainedmodels``."""
    try:
        import pretrainedmodels
    except ImportError:
        raise ImportError('bninception comes from the pretrainedmodels package, which is not installed: '
                          'pip install "pml-ext[pretrainedmodels]" (or use a torchvision trunk such as '
                          'resnet50)') from None
    return pretrainedmodels.bninception(num_classes=num_classes, pretrained=None, **kwargs)


bninception.pml_ext_trunk = True


def is_trunk_factory(fn: Any) -> bool:
    """Whether ``fn`` builds a PB trunk (a torchvision architecture or :func:`bninception`)."""
    return getattr(fn, "pml_ext_trunk", False) or getattr(fn, "__module__", "").startswith("torchvision.models")


def build_trunk(name: str, fn: Callable, kwargs: dict, source: str, key: str, is_trunk: bool) -> torch.nn.Module:
    """``fn(**kwargs)`` with random weights, then ``weights_path`` loaded; never a download.

    Args:
        name: the config's class name (``resnet50``, ``bninception``), for messages.
        fn: the architecture's builder.
        kwargs: the config's kwargs, ``pretrained`` and ``weights_path`` included.
        source, key: where the spec is, for errors.
        is_trunk: replace the last linear layer with ``Identity`` (PB's trunk rule).
    """
    kwargs = dict(kwargs)
    pretrained = kwargs.pop("pretrained", None)
    weights_path = kwargs.pop("weights_path", None)
    if kwargs.pop("weights", None) is not None:
        raise ConfigError(source, f"{key}.weights", "torchvision's weights enums download; give weights_path "
                                                   "(a local state_dict file) instead")
    if pretrained and not weights_path:
        raise ConfigError(source, f"{key}.pretrained",
                          f"pretrained: {pretrained} asks for pretrained weights, but pml_ext never downloads "
                          f"them: give weights_path: <local state_dict file> with them, or pretrained: null for "
                          f"a randomly initialised {name}")
    if getattr(fn, "__module__", "").startswith("torchvision.models"):
        kwargs["weights"] = None
        if name == "inception_v3":
            kwargs.setdefault("aux_logits", False)  # PB skipped AuxLogits; a random net has no use for it
            kwargs.setdefault("init_weights", True)
    try:
        model = fn(**kwargs)
    except ImportError as exc:
        raise ConfigError(source, key, str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, key, f"{name}(...) failed: {type(exc).__name__}: {exc}") from None
    if weights_path:
        _load_weights(model, weights_path, source, f"{key}.weights_path")
    if is_trunk:
        for attr in _LAST_LINEAR_NAMES:
            if isinstance(getattr(model, attr, None), torch.nn.Module):
                setattr(model, attr, torch.nn.Identity())
                break
    return model


def _load_weights(model: torch.nn.Module, path: str, source: str, key: str) -> None:
    import os

    if not os.path.isfile(path):
        raise ConfigError(source, key, f"{path!r} is not a file (a state_dict saved with torch.save)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(source, key, f"the weights in {path!r} do not fit the architecture: {first}") from None


def input_convention(trunk_name: str | None) -> dict:
    """The input a trunk expects: ``{"mean", "std", "input_space", "input_range"}``.

    BN-Inception's comes from ``pretrainedmodels`` (BGR, 0-255, its own mean); every other
    trunk gets ImageNet's RGB, 0-1 convention. PB's transform factory made the same choice.
    """
    if trunk_name == "bninception":
        try:
            import pretrainedmodels
        except ImportError:
            return dict(IMAGENET_CONVENTION)  # building the trunk then says how to install it
        settings = pretrainedmodels.pretrained_settings["bninception"]["imagenet"]
        return {k: settings[k] for k in IMAGENET_CONVENTION}
    return dict(IMAGENET_CONVENTION)


class ToSpaceAndRange(torch.nn.Module):
    """After ``ToTensor``: reorder channels to BGR and scale to ``input_range`` when the trunk wants it."""

    def __init__(self, input_space: str, input_range):
        super().__init__()
        self.bgr = str(input_space).upper() == "BGR"
        self.scale = float(max(input_range))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[3, H, W]`` in [0, 1], RGB."""
        if self.bgr:
            x = x[[2, 1, 0]]
        return x * self.scale if self.scale != 1 else x
