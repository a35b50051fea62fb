"""The glyph augmentation's ranges and geometry, by value.

Oracles: the ranges as docs/glyphs.md states them (rotation up to ±10°, scale 0.85-1.1, slant
up to ±0.15, shift up to ±1.5 px at 32x32, stroke blend up to 60 %, blur with probability 0.3,
noise sd up to 0.06), checked on 20,000 draws (a uniform draw's extreme lies within 0.1 % of its
range's end except with probability e^-20); and hand-placed blocks whose moved centroids are
worked out from the transform's definition.
"""
import math

import pytest
import torch

from pml_ext.datasets import glyph_augment as ga

N = 20_000


@pytest.fixture(scope="module")
def drawn():
    return ga._parameters(N, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, low, high", [
    ("angle", -10 * math.pi / 180, 10 * math.pi / 180),
    ("scale", 0.85, 1.1),
    ("shear", -0.15, 0.15),
    ("shift", -3.0, 3.0),          # on the 64-px canvas: ±1.5 px at 32x32
    ("stroke", -0.6, 0.6),
    ("noise_sd", 0.0, 0.06),
], ids=["angle", "scale", "shear", "shift", "stroke", "noise_sd"])
def test_each_parameter_fills_its_documented_range(drawn, name, low, high):
    values = drawn[name].flatten()
    slack = 1e-3 * (high - low)
    assert low - 1e-7 <= values.min() < low + slack and high - slack < values.max() <= high + 1e-7
    # uniform: the mean is the midpoint (s.e. of 20,000 draws: 0.002 of the range)
    assert abs(float(values.mean()) - (low + high) / 2) < 0.01 * (high - low)


def test_blur_probability(drawn):
    # binomial(20000, 0.3): s.d. of the share 0.0032
    assert abs(float(drawn["blur"].float().mean()) - 0.3) < 0.015


def block(x0: int, y0: int, size: int = 8) -> torch.Tensor:
    """One 64x64 canvas, float [1, 1, 64, 64], with a filled square at columns/rows x0.., y0..."""
    canvas = torch.zeros(1, 1, 64, 64)
    canvas[..., y0:y0 + size, x0:x0 + size] = 1.0
    return canvas


def centroid(x: torch.Tensor) -> tuple[float, float]:
    """(x, y) of the mass of [..., H, W], in pixels from the canvas centre."""
    h, w = x.shape[-2:]
    img = x.reshape(h, w)
    ys, xs = torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2
    mass = img.sum()
    return float((img.sum(0) * xs).sum() / mass), float((img.sum(1) * ys).sum() / mass)


def params(angle=0.0, scale=1.0, shear=0.0, shift=(0.0, 0.0)) -> dict:
    return {"angle": torch.tensor([angle]), "scale": torch.tensor([scale]), "shear": torch.tensor([shear]),
            "shift": torch.tensor([list(shift)])}


@pytest.mark.parametrize("p, expected", [
    (params(), (12.0, -12.0)),                          # neutral: the block stays at (12, -12)
    (params(shift=(3.0, -2.0)), (15.0, -14.0)),         # moved by the shift
    (params(scale=1.1), (13.2, -13.2)),                 # offsets from the centre times the scale
    (params(angle=math.pi / 2), (12.0, 12.0)),          # out(x, y) = in(y, -x): (12, -12) -> (12, 12)
    (params(shear=0.15), (13.8, -12.0)),                # x gains -shear * y: 12 + 0.15 * 12
], ids=["neutral", "shift", "scale", "rotation", "shear"])
def test_the_affine_moves_a_block_as_its_parameters_say(p, expected):
    # an 8-px block whose centre sits 12 px right of and above the canvas centre
    x = ga._affine(block(32 + 8, 32 - 16), p)
    cx, cy = centroid(x)
    assert (cx, cy) == pytest.approx(expected, abs=0.05)


def test_stroke_blends_towards_dilation_or_erosion():
    base = (block(20, 20) * 255).to(torch.uint8).reshape(1, 64, 64)
    bold, thin = ga._neighbourhood(base, torch.maximum), ga._neighbourhood(base, torch.minimum)
    source = torch.tensor([0, 0, 0])
    out = ga._stroke(base, bold, thin, source, torch.tensor([0.0, 0.6, -0.6]))
    # an 8x8 block: its 3x3 dilation is 10x10 (36 more pixels), its erosion 6x6 (28 fewer);
    # a blend of 0.6 adds or removes 0.6 of each
    assert [float(o.sum()) for o in out] == pytest.approx([64.0, 64 + 0.6 * 36, 64 - 0.6 * 28], abs=1e-4)
