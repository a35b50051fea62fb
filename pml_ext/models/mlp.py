from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["MLP"]


class MLP(torch.nn.Sequential):
    """Linear layers with ReLU between them: ``MLP([64, 256, 2])`` is 64 -> 256 -> 2.

    Same constructor as PML's ``utils.common_functions`` examples and powerful-benchmarker's
    ``MLP(layer_sizes, final_relu=False)``.
    """

    def __init__(self, layer_sizes: Sequence[int], final_relu: bool = False):
        sizes = [int(s) for s in layer_sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"layer_sizes needs at least two positive sizes, got {list(layer_sizes)}")
        layers: list[torch.nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2 or final_relu:
                layers.append(torch.nn.ReLU())
        super().__init__(*layers)
        self.layer_sizes = sizes
