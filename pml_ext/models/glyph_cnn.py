from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["GlyphCNN"]


class GlyphCNN(torch.nn.Sequential):
    """A compact conv trunk for 32x32 single-channel images (the glyph benchmark).

    Each entry of ``channels`` is one conv3x3-BatchNorm-ReLU block; the blocks given stride 2
    in ``strides`` halve the resolution, and those marked in ``pools`` are followed by a 2x2
    max-pool (:class:`GlyphPoolCNN` is that variant). Global average pooling then gives ``Tensor[B, channels[-1]]``:
    put PML's usual embedder ``MLP`` on top.

    The default (32, 64, 128 channels, each block halving: 32 -> 16 -> 8 -> 4 px) has 93 k
    parameters. Measured on 2 idle cores (batch 64, 2 threads): 23 ms per training step,
    so about 5 s per epoch of the main job's 14.7k training images and 10 s for the
    default 29k; a fourth 128-channel block at 8 px (0.24 M parameters) learned more per
    step but cost 3x as much per step (71 ms), a worse trade at a fixed time budget.

    Args:
        channels: output channels of each block.
        strides: stride of each block (1 or 2), same length as ``channels``.
        pools: whether each block is followed by a 2x2 max-pool (default: none is).
        in_channels: channels of the input images.

    Shapes: input ``[B, in_channels, H, W]``, output ``[B, channels[-1]]``.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128), strides: Sequence[int] = (2, 2, 2),
                 in_channels: int = 1, pools: Sequence[bool] | None = None):
        channels, strides = [int(c) for c in channels], [int(s) for s in strides]
        pools = [False] * len(channels) if pools is None else list(pools)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive sizes, got {channels}")
        if len(strides) != len(channels) or any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must give 1 or 2 for each of the {len(channels)} blocks, got {strides}")
        if len(pools) != len(channels) or any(not isinstance(p, bool) for p in pools):
            raise ValueError(f"pools must give true or false for each of the {len(channels)} blocks, got {pools}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        layers: list[torch.nn.Module] = []
        previous = int(in_channels)
        for width, stride, pool in zip(channels, strides, pools):
            layers += [torch.nn.Conv2d(previous, width, 3, stride=stride, padding=1, bias=False),
                       torch.nn.BatchNorm2d(width), torch.nn.ReLU(inplace=True)]
            if pool:
                layers.append(torch.nn.MaxPool2d(2))
            previous = width
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
        super().__init__(*layers)
        self.channels, self.strides, self.pools = channels, strides, pools
        self.output_size = channels[-1]
        # channels_last (NHWC) runs oneDNN's faster CPU convolutions: measured by
        # benchmarks/bench_glyphs.py --part cnn, a training step takes 0.8x and an embedding
        # pass 0.7x the time of the default NCHW layout. The outputs agree to float round-off.
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, in_channels, H, W]`` -> ``Tensor[B, channels[-1]]``."""
        return super().forward(images.contiguous(memory_format=torch.channels_last))
