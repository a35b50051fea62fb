"""Seeded, vectorised augmentation of the clean 64x64 glyph renders into 32x32 samples.

Every parameter of every sample is drawn up front from one ``torch.Generator``, in a
fixed order, so the same seed gives the same images. The output is quantised to uint8:
the cache stores exactly what the data set serves.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTATION", "augment", "downsample"]

# Ranges, all on the 64-px canvas (twice the output size).
AUGMENTATION = {
    "rotation_degrees": 10.0,     # uniform in [-10, 10]
    "scale": (0.85, 1.1),         # uniform
    "shear": 0.15,                # horizontal slant, uniform in [-0.15, 0.15]
    "translation_pixels": 3.0,    # uniform in [-3, 3] on each axis (1.5 px at 32x32)
    "stroke": 0.6,                # uniform in [-0.6, 0.6]: blend towards a 3x3 erosion (< 0, thinner)
                                  # or dilation (> 0, bolder); a full erosion erases thin faces
    "blur_probability": 0.3,      # 3x3 Gaussian blur, sigma 0.7 (at 32x32)
    "noise_sd": 0.06,             # Gaussian pixel noise, sd uniform in [0, 0.06]
}
_CHUNK = 4096


def downsample(base: torch.Tensor) -> torch.Tensor:
    """Clean uint8 ``[M, 64, 64]`` -> uint8 ``[M, 32, 32]`` (2x2 box filter, rounded)."""
    x = F.avg_pool2d(base.unsqueeze(1).float(), 2).squeeze(1)
    return x.round().clamp(0, 255).to(torch.uint8)


def _parameters(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    a = AUGMENTATION

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    return {
        "angle": uniform(-a["rotation_degrees"], a["rotation_degrees"]) * math.pi / 180,
        "scale": uniform(*a["scale"]),
        "shear": uniform(-a["shear"], a["shear"]),
        "shift": (2 * torch.rand(n, 2, generator=generator) - 1) * a["translation_pixels"],
        "stroke": uniform(-a["stroke"], a["stroke"]),
        "blur": torch.rand(n, generator=generator) < a["blur_probability"],
        "noise_sd": uniform(0.0, a["noise_sd"]),
        "noise_seed": torch.randint(0, 2**62, (1,), generator=generator),
    }


def _affine(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rotate, scale, slant and shift ``x [n, 1, 64, 64]`` about the canvas centre."""
    n, _, h, w = x.shape
    cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
    inv_scale = (1.0 / p["scale"]).view(n, 1, 1)
    # grid_sample maps output to input coordinates: the inverse of the forward transform.
    # Built by broadcasting: torch's affine_grid took 14 of 62 s of the default build.
    ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = ys.view(1, h, 1), xs.view(1, 1, w)
    shift = p["shift"] / (w / 2)
    a00, a01 = (cos * inv_scale[:, 0, 0]).view(n, 1, 1), ((sin + p["shear"]) * inv_scale[:, 0, 0]).view(n, 1, 1)
    a10, a11 = (-sin * inv_scale[:, 0, 0]).view(n, 1, 1), (cos * inv_scale[:, 0, 0]).view(n, 1, 1)
    grid = torch.stack([a00 * gx + a01 * gy - shift[:, 0].view(n, 1, 1),
                        a10 * gx + a11 * gy - shift[:, 1].view(n, 1, 1)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _neighbourhood(base: torch.Tensor, op) -> torch.Tensor:
    """3x3 max (``op=torch.maximum``) or min (``torch.minimum``) of uint8 ``[M, H, W]``, zero-padded.

    Shifted slices: max_pool2d with stride 1 took 20 of 62 s of the default build."""
    padded = F.pad(base, (1, 1, 1, 1))
    h, w = base.shape[-2:]
    rows = op(op(padded[:, :, 0:w], padded[:, :, 1:w + 1]), padded[:, :, 2:w + 2])
    return op(op(rows[:, 0:h], rows[:, 1:h + 1]), rows[:, 2:h + 2])


def _stroke(base: torch.Tensor, bold: torch.Tensor, thin: torch.Tensor, source: torch.Tensor,
            stroke: torch.Tensor) -> torch.Tensor:
    """Blend each sample's render towards its dilation (``stroke > 0``) or erosion (``< 0``) by ``|stroke|``.

    Returns float ``[n, 1, H, W]`` in [0, 1]."""
    s = stroke.view(-1, 1, 1)
    target = torch.where(s > 0, bold[source], thin[source]).float()
    return torch.lerp(base[source].float(), target, s.abs()).div_(255.0).unsqueeze(1)


def _blur(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    g = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * 0.7**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, 3, 3)
    blurred = F.conv2d(x, kernel, padding=1)
    return torch.where(mask.view(-1, 1, 1, 1), blurred, x)


def augment(base: torch.Tensor, source: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One augmented sample per entry of ``source``.

    Args:
        base: clean renders, uint8 ``[M, 64, 64]``.
        source: for each sample, the base render it is drawn from, ``LongTensor[n]``.
        generator: the seeded generator every parameter is drawn from.

    Returns:
        uint8 ``[n, 32, 32]``.
    """
    n = int(source.shape[0])
    out = torch.empty(n, 32, 32, dtype=torch.uint8)
    if n == 0:
        return out
    params = _parameters(n, generator)
    noise_gen = torch.Generator().manual_seed(int(params["noise_seed"]))
    bold_base = _neighbourhood(base, torch.maximum)
    thin_base = _neighbourhood(base, torch.minimum)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        p = {k: v[sl] for k, v in params.items() if k != "noise_seed"}
        x = _affine(_stroke(base, bold_base, thin_base, source[sl], p["stroke"]), p)
        x = _blur(F.avg_pool2d(x, 2), p["blur"])
        noise = torch.randn(x.shape, generator=noise_gen) * p["noise_sd"].view(-1, 1, 1, 1)
        out[sl] = ((x + noise).clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1)
    return out
