"""powerful-benchmarker's model names and model-building rules, for PML 2.x's trainers.

Registered as a ``model`` namespace: ``bninception``, ``LayerExtractor``, ``ListOfModels``.
The rules below say how PB sized each named model (docs/runner.md, "Models"):

- ``embedder``: an ``MLP``'s ``layer_sizes`` list output sizes; the trunk's output size is
  prepended.
- ``generator`` (DAML): an ``MLP``'s ``layer_sizes`` are *multiples* of the trunk's output
  size (PB's ``[3, 1, 1]``: anchor, positive and negative features in, one feature out).
- ``classifier*`` (TrainWithClassifier, DAML): the embedder's output size is prepended and
  the number of training classes appended.
- ``CascadedEmbeddings``: the trunk is wrapped in :class:`LayerExtractor` over
  ``layers_to_extract``, and the embedder becomes one copy per extracted layer
  (:class:`ListOfModels`); ``embedding_sizes`` follows.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .trunks import bninception

__all__ = ["LayerExtractor", "ListOfModels", "bninception"]


def mlp_layer_sizes(role: str, sizes: Sequence[int], in_dim: int, num_classes: int | None) -> list[int]:
    """The full ``MLP`` sizes for a model of ``role`` given its config's ``layer_sizes``."""
    sizes = [int(s) for s in sizes]
    if role == "generator":
        return [s * in_dim for s in sizes]
    full = [in_dim] + sizes
    if role.startswith("classifier"):
        if num_classes is None:
            raise ValueError("a classifier's size needs the number of training classes")
        full.append(int(num_classes))
    return full


class LayerExtractor(torch.nn.Module):
    """Run ``model`` and return its named layers' outputs, each average-pooled to ``[B, C]``,
    concatenated (``[B, sum(output_sizes)]``). PB's trunk for cascaded embeddings.

    Args:
        model: the network; its normal forward pass is run, the layers are read by hooks.
        layers_to_extract: names from ``model.named_modules()`` (``layer3``, ``fc``, ``Mixed_6e``).
    """

    def __init__(self, model: torch.nn.Module, layers_to_extract: Sequence[str]):
        super().__init__()
        names = [str(n) for n in layers_to_extract]
        known = dict(model.named_modules())
        missing = [n for n in names if n not in known]
        if not names or missing:
            top = [n for n, _ in model.named_children()]
            raise ValueError(f"layers_to_extract: {missing or 'no layer'} not in {type(model).__name__}; "
                             f"its top-level layers are {', '.join(top)}")
        self.model = model
        self.layers_to_extract = names
        self.output_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o))
                   for n in self.layers_to_extract]
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        pooled = [_pool(outputs[n]) for n in self.layers_to_extract]
        self.output_sizes = [p.shape[1] for p in pooled]
        return torch.cat(pooled, dim=1)


def _pool(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1)
    return x.flatten(1)


class ListOfModels(torch.nn.Module):
    """Split the input ``[B, sum(input_sizes)]`` into slices, one model per slice; concatenate
    their outputs. PB's embedder for cascaded embeddings.

    Args:
        models: one model per slice.
        input_sizes: the width of each slice.
    """

    def __init__(self, models: Sequence[torch.nn.Module], input_sizes: Sequence[int]):
        super().__init__()
        if len(models) != len(input_sizes):
            raise ValueError(f"input_sizes: {len(input_sizes)} sizes for {len(models)} models")
        self.list_of_models = torch.nn.ModuleList(models)
        self.input_sizes = [int(s) for s in input_sizes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.input_sizes, dim=1)
        return torch.cat([m(p) for m, p in zip(self.list_of_models, parts)], dim=1)
