"""Build the glyph arrays once and cache them as ``.npz``; never trust a damaged cache file."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile

import numpy as np
import torch

from . import glyph_fonts
from .glyph_augment import AUGMENTATION, augment, downsample
from .glyph_lookalikes import LOOKALIKE_DISTANCE, LOOKALIKE_SHARE, lookalike_groups, representatives

__all__ = ["cache_folder", "cache_key", "load_or_build", "build"]

LOGGER = logging.getLogger("pml_ext.datasets")
FORMAT_VERSION = 1
MIN_INK_PIXELS = 16   # renders with fewer pixels >= 128 on the 64-px canvas are "nearly empty"
# The Computer Modern faces use TeX's own encoding: only their ASCII letters and digits are
# the characters their code points name (0xA1 draws Gamma, "<" draws an inverted "!").
_CM_TRUSTED = {ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"}
_ARRAYS = ("images", "labels", "fonts", "code_points", "font_names", "removed_code_points")


def cache_folder(cache_dir: str | None = None) -> str:
    """``cache_dir``, else ``$PML_EXT_CACHE``, else ``$XDG_CACHE_HOME/pml_ext`` (``~/.cache/pml_ext``), + ``/glyphs``."""
    if cache_dir is None:
        root = os.environ.get("PML_EXT_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pml_ext")
        cache_dir = os.path.join(root, "glyphs")
    return cache_dir


def _check_args(min_fonts, samples_per_font, augment, seed, split_seed, characters, max_classes) -> dict:
    for name, value, low in (("min_fonts", min_fonts, 1), ("samples_per_font", samples_per_font, 1),
                             ("seed", seed, 0), ("split_seed", split_seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be True or False, got {augment!r}")
    if not augment and samples_per_font != 1:
        raise ValueError(f"samples_per_font must be 1 when augment is False (clean renders are identical), "
                         f"got {samples_per_font}")
    if characters is not None and (not isinstance(characters, str) or not characters):
        raise ValueError(f"characters must be a non-empty string, got {characters!r}")
    if max_classes is not None and (isinstance(max_classes, bool) or not isinstance(max_classes, int)
                                    or max_classes < 2):
        raise ValueError(f"max_classes must be an integer >= 2 or None, got {max_classes!r}")
    return {"min_fonts": int(min_fonts), "samples_per_font": int(samples_per_font), "augment": augment,
            "seed": int(seed), "split_seed": int(split_seed), "characters": characters, "max_classes": max_classes}


def cache_key(args: dict, font_paths: list[str]) -> str:
    """Hash of the arguments, the font files, the rules and the renderer's versions."""
    import PIL
    from PIL import features

    payload = {"format": FORMAT_VERSION, "args": args, "fonts": glyph_fonts.font_hashes(font_paths),
               "font_names": [os.path.basename(p) for p in font_paths], "augmentation": AUGMENTATION,
               "lookalike": [LOOKALIKE_DISTANCE, LOOKALIKE_SHARE], "min_ink": MIN_INK_PIXELS,
               "pillow": PIL.__version__, "freetype": features.version("freetype2"), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _clean_renders(args: dict, paths: list[str]):
    coverage = glyph_fonts.font_coverage(paths)
    coverage = [cov & _CM_TRUSTED if os.path.basename(p).startswith("cm") else cov
                for p, cov in zip(paths, coverage)]
    if args["characters"] is not None:
        wanted = {ord(c) for c in args["characters"]}
        coverage = [cov & wanted for cov in coverage]
    code_points = np.asarray(glyph_fonts.candidate_code_points(coverage, args["min_fonts"]), np.int64)
    base, classes, fonts = glyph_fonts.render_base(paths, coverage, code_points.tolist())
    inked = (base >= 128).reshape(len(base), -1).sum(1) >= MIN_INK_PIXELS
    base, classes, fonts = base[inked], classes[inked], fonts[inked]
    per_class = np.bincount(classes, minlength=len(code_points))
    keep_class = per_class >= args["min_fonts"]  # nearly-empty renders may drop a class below min_fonts
    groups = lookalike_groups(downsample(torch.from_numpy(base)), classes, fonts, len(code_points))
    removed = representatives(groups, per_class, code_points)
    keep_class[list(removed)] = False
    LOGGER.info("glyphs: %d candidate characters, %d look-alike groups, %d removed by the look-alike rule",
                len(code_points), len(groups), len(removed))
    return base, classes, fonts, code_points, keep_class, np.asarray(sorted(code_points[list(removed)]), np.int64)


def build(args: dict, paths: list[str]) -> dict[str, np.ndarray]:
    """Render, apply the rules, permute the classes and augment: the arrays the cache stores."""
    base, classes, fonts, code_points, keep_class, removed = _clean_renders(args, paths)
    kept = np.flatnonzero(keep_class)
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(args["split_seed"])).numpy()
    if args["max_classes"] is not None:
        order = order[: args["max_classes"]]
    if len(order) < 2:
        raise ValueError(f"characters / min_fonts leave {len(order)} class(es); at least 2 are needed")
    label_of = np.full(len(code_points), -1, np.int64)
    label_of[kept[order]] = np.arange(len(order))
    rows = np.flatnonzero(label_of[classes] >= 0)
    # samples in (label, font, repeat) order: deterministic and independent of the render order
    rows = rows[np.lexsort((fonts[rows], label_of[classes[rows]]))]
    source = torch.from_numpy(np.repeat(rows, args["samples_per_font"]))
    base_t = torch.from_numpy(base)
    if args["augment"]:
        images = augment(base_t, source, torch.Generator().manual_seed(args["seed"]))
    else:
        images = downsample(base_t[source])
    return {"images": images.numpy(), "labels": label_of[classes[source.numpy()]].astype(np.int32),
            "fonts": fonts[source.numpy()].astype(np.int16), "code_points": code_points[kept[order]],
            "font_names": np.asarray([os.path.basename(p) for p in paths]), "removed_code_points": removed}


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in _ARRAYS:
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def _load(path: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or ``None`` when the file is missing, unreadable or fails its checksum."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in _ARRAYS}
            stored = str(f["checksum"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        LOGGER.warning("glyphs: cache file %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if stored != _checksum(arrays) or arrays["images"].shape[1:] != (32, 32) or \
            not len(arrays["images"]) == len(arrays["labels"]) == len(arrays["fonts"]):
        LOGGER.warning("glyphs: cache file %s fails its checksum; rebuilding it", path)
        return None
    return arrays


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary file in the same folder, then rename: a kill never leaves half a file."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".glyphs-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, checksum=np.asarray(_checksum(arrays)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_or_build(cache_dir: str | None = None, **kwargs) -> dict[str, np.ndarray]:
    """The glyph arrays for ``kwargs`` (see :class:`~pml_ext.datasets.glyphs.Glyphs`), from the
    cache when a valid entry exists, else rendered and cached."""
    args = _check_args(**kwargs)
    paths = glyph_fonts.available_fonts()
    if len(paths) < args["min_fonts"]:
        raise ValueError(f"min_fonts={args['min_fonts']} but matplotlib ships only {len(paths)} of the "
                         f"{len(glyph_fonts.TEXT_FONTS)} text fonts in {glyph_fonts.font_folder()}")
    path = os.path.join(cache_folder(cache_dir), f"glyphs-{cache_key(args, paths)}.npz")
    arrays = _load(path)
    if arrays is None:
        arrays = build(args, paths)
        try:
            _save(path, arrays)
        except OSError as exc:  # a read-only cache folder costs a re-render next time, nothing else
            LOGGER.warning("glyphs: could not write the cache file %s (%s)", path, exc)
    return arrays
