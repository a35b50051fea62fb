"""The look-alike rule: characters that render the same become one class.

Latin A, Greek Alpha and Cyrillic A share their outlines in most fonts. Kept as three
classes they would be contradictory labels: the same image, three answers. The rule,
measured on the clean (un-augmented) 32x32 renders:

- in one font, two characters are *the same render* when the L2 distance of their images
  is below ``LOOKALIKE_DISTANCE`` times the larger image's norm;
- two characters are *look-alikes* when they are the same render in at least
  ``LOOKALIKE_SHARE`` of the fonts that draw both;
- look-alikes are grouped transitively (union-find), and each group is merged into one
  class: its member drawn by the most fonts (ties: the lowest code point) keeps its
  renders, and the others are removed, since their renders are the same images.

With the defaults and ``min_fonts=12`` this removes 165 of 2,321 candidate characters in
131 groups (largest: 4, e.g. I / Iota / Cyrillic I / Palochka); distances and groups
are in docs/glyphs.md.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["LOOKALIKE_DISTANCE", "LOOKALIKE_SHARE", "lookalike_groups", "representatives"]

LOOKALIKE_DISTANCE = 0.1
LOOKALIKE_SHARE = 0.5


def _same_render_counts(images: torch.Tensor, classes: np.ndarray, fonts: np.ndarray, num_classes: int):
    """``(same, shared)``, both ``[C, C]``: fonts where two classes render the same, and fonts drawing both."""
    same = torch.zeros(num_classes, num_classes)
    shared = torch.zeros(num_classes, num_classes)
    flat = images.flatten(1).float()
    for font in np.unique(fonts):
        rows = np.flatnonzero(fonts == font)
        x = flat[rows]
        norms = x.norm(dim=1)
        scale = torch.maximum(norms[:, None], norms[None, :]).clamp_min(1e-6)
        close = (torch.cdist(x, x) < LOOKALIKE_DISTANCE * scale).float()
        idx = torch.from_numpy(classes[rows])
        same.index_put_((idx[:, None], idx[None, :]), close, accumulate=True)
        shared.index_put_((idx[:, None], idx[None, :]), torch.ones_like(close), accumulate=True)
    return same, shared


def lookalike_groups(images: torch.Tensor, classes: np.ndarray, fonts: np.ndarray,
                     num_classes: int) -> list[list[int]]:
    """Groups (of >= 2 class indices, ascending) that the rule merges.

    Args:
        images: clean renders ``[M, 32, 32]`` (any float or integer scale).
        classes: class index of each render ``int[M]`` in ``[0, num_classes)``.
        fonts: font index of each render ``int[M]``; a class has at most one render per font.
        num_classes: ``C``.
    """
    same, shared = _same_render_counts(images, classes, fonts, num_classes)
    lookalike = (same >= LOOKALIKE_SHARE * shared) & (shared > 0)
    lookalike.fill_diagonal_(False)
    parent = list(range(num_classes))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in torch.nonzero(torch.triu(lookalike, 1)).tolist():
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for c in range(num_classes):
        groups.setdefault(root(c), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def representatives(groups: list[list[int]], fonts_per_class: np.ndarray, code_points) -> set[int]:
    """The class indices the rule removes: every group member but the one drawn by most fonts."""
    removed: set[int] = set()
    for group in groups:
        keep = min(group, key=lambda c: (-int(fonts_per_class[c]), int(code_points[c])))
        removed.update(c for c in group if c != keep)
    return removed
