from __future__ import annotations

from typing import Sequence

from .glyph_cnn import GlyphCNN

__all__ = ["GlyphPoolCNN"]


class GlyphPoolCNN(GlyphCNN):
    """A conv trunk for 32x32 glyphs that keeps full resolution in its first layer.

    Where :class:`GlyphCNN` halves the resolution inside each convolution (stride 2, so its
    first layer sees every other pixel), this trunk convolves at full resolution and
    downsamples by a 2x2 max-pool after each block marked in ``pools``: thin strokes survive
    the first layer. The default (32, 64, 128, 128 channels, pooled after the first three
    blocks: 32 -> 16 -> 8 -> 4 px) is the usual small VGG-style stack; it costs several times
    GlyphCNN per image (``benchmarks/results/trunks.md`` has the measured accuracy/time
    frontier). Global average pooling then gives ``Tensor[B, channels[-1]]``.

    Args:
        channels: output channels of each conv3x3-BatchNorm-ReLU block.
        pools: whether each block is followed by a 2x2 max-pool, same length as ``channels``.
        in_channels: channels of the input images.

    Shapes: input ``[B, in_channels, H, W]``, output ``[B, channels[-1]]``.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 128),
                 pools: Sequence[bool] = (True, True, True, False), in_channels: int = 1):
        super().__init__(channels=channels, strides=[1] * len(list(channels)), in_channels=in_channels,
                         pools=pools)
