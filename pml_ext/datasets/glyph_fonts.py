"""The fonts inside matplotlib and the clean renders of characters in them.

Only the text faces are used: DejaVu Sans, Serif and Sans Mono and STIX General in four
styles each, and the Computer Modern text faces (cmr10, cmb10, cmss10, cmti10, cmtt10).
The math-only faces (cmex, cmmi, cmsy, STIX size variants, STIXNonUni) and the DejaVu
"Display" subsets are left out: their code points are not the characters they draw.
"""
from __future__ import annotations

import functools
import hashlib
import os
import unicodedata
from typing import Sequence

import numpy as np

__all__ = ["TEXT_FONTS", "font_folder", "available_fonts", "font_hashes", "font_coverage",
           "candidate_code_points", "render_base"]

TEXT_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
# Unicode general categories kept: letters, numbers, symbols, punctuation. Marks (combining),
# separators (spaces) and "other" (control, format, private use) are dropped.
KEPT_CATEGORIES = ("L", "N", "S", "P")
CANVAS = 64           # base renders are drawn at twice the output size, then downsampled
FONT_SIZE = 36        # pixels on the 64-px canvas: cap height ~26 px, room for descenders
BASELINE = 46         # y of the baseline on the canvas: keeps ',' and "'" apart by position
MARGIN = 2            # a glyph larger than the canvas minus this margin is shrunk to fit


def font_folder() -> str:
    """matplotlib's own TrueType folder (``mpl-data/fonts/ttf``)."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def available_fonts(folder: str | None = None) -> list[str]:
    """The paths of the :data:`TEXT_FONTS` present in ``folder`` (default: matplotlib's)."""
    folder = folder or font_folder()
    return [os.path.join(folder, name) for name in TEXT_FONTS if os.path.isfile(os.path.join(folder, name))]


def _identity(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return path, stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _file_hash(identity: tuple[str, int, int]) -> str:
    with open(identity[0], "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@functools.lru_cache(maxsize=64)
def _file_coverage(identity: tuple[str, int, int]) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    font = TTFont(identity[0], lazy=True)
    try:
        return frozenset(font.getBestCmap() or {})
    finally:
        font.close()


def font_hashes(paths: Sequence[str]) -> list[str]:
    """SHA-256 of each font file: part of the cache key, so new fonts never serve stale data.

    Memoised per process on (path, size, mtime): reading 21 fonts took 1-2 s per data set."""
    return [_file_hash(_identity(p)) for p in paths]


def font_coverage(paths: Sequence[str]) -> list[frozenset[int]]:
    """The code points each font maps to a glyph (its best Unicode cmap), memoised like :func:`font_hashes`."""
    return [_file_coverage(_identity(p)) for p in paths]


def candidate_code_points(coverage: Sequence[frozenset[int]], min_fonts: int) -> list[int]:
    """Sorted letters, numbers, symbols and punctuation covered by at least ``min_fonts`` fonts."""
    counts: dict[int, int] = {}
    for covered in coverage:
        for cp in covered:
            counts[cp] = counts.get(cp, 0) + 1
    return sorted(cp for cp, n in counts.items()
                  if n >= min_fonts and unicodedata.category(chr(cp))[0] in KEPT_CATEGORIES)


def _draw(font, char: str) -> np.ndarray:
    """One character on the canvas, horizontally centred on its ink, on a fixed baseline.

    Returns ``uint8[CANVAS, CANVAS]``. Ink larger than the canvas is shrunk to fit,
    keeping its centre, so wide symbols are not clipped.
    """
    from PIL import Image, ImageDraw

    big = 2 * CANVAS
    image = Image.new("L", (big, big), 0)
    ImageDraw.Draw(image).text((big // 2, BASELINE + CANVAS // 2), char, fill=255, font=font, anchor="ms")
    box = image.getbbox()
    if box is None:
        return np.zeros((CANVAS, CANVAS), np.uint8)
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    limit = CANVAS - 2 * MARGIN
    out = Image.new("L", (CANVAS, CANVAS), 0)
    if width <= limit and height <= limit:
        # keep the vertical position (baseline) unless the ink would leave the canvas
        y0 = min(max(top - CANVAS // 2, MARGIN), CANVAS - MARGIN - height)
        x0 = (CANVAS - width) // 2
        out.paste(image.crop(box), (x0, y0))
    else:
        scale = limit / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        glyph = image.crop(box).resize(size, Image.Resampling.LANCZOS)
        out.paste(glyph, ((CANVAS - size[0]) // 2, (CANVAS - size[1]) // 2))
    return np.asarray(out, dtype=np.uint8)


def render_base(paths: Sequence[str], coverage: Sequence[frozenset[int]], code_points: Sequence[int]):
    """Every (code point, covering font) drawn once, clean.

    Returns ``(images uint8[M, 64, 64], class_index int64[M], font_index int64[M])`` where
    ``class_index`` points into ``code_points`` and ``font_index`` into ``paths``.
    """
    from PIL import ImageFont

    images, classes, fonts = [], [], []
    for f, (path, covered) in enumerate(zip(paths, coverage)):
        font = ImageFont.truetype(path, FONT_SIZE)
        for c, cp in enumerate(code_points):
            if cp in covered:
                images.append(_draw(font, chr(cp)))
                classes.append(c)
                fonts.append(f)
    if not images:
        return np.zeros((0, CANVAS, CANVAS), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.stack(images), np.asarray(classes, np.int64), np.asarray(fonts, np.int64)
