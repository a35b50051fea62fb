"""The settings AdaptiveController steers: finding them, checking numbers and bounds, and what is
known about them, their direction and effective range.

* **Direction**: how a larger value moves the measured error, for miners whose answer is
  known (a table keyed by class name, so PML's classes need no change).
* **Effective range**: the interval outside which a setting changes nothing (or is
  invalid). A class declares it next to the attribute, in one place::

      class SmartMiner(BaseMiner):
          effective_ranges = {"kappa": (1.0, None)}   # (lo, hi), None = open

  The controller clamps into it by default; an explicit ``bounds=`` replaces it.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..utils.dotted_path import resolve  # noqa: F401  (re-exported: the one resolver)

__all__ = ["resolve", "as_number", "check_bounds", "known_sign", "declared_range"]


def as_number(value: Any, arg: str) -> float:
    """``value`` (a number or a one-element tensor) as a float; TypeError/ValueError naming ``arg``."""
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{arg} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool):
        raise TypeError(f"{arg} must be a number, got bool")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__}") from None


def check_bounds(bounds: Any) -> tuple[float, float] | None:
    """``bounds`` as a finite ``(lo, hi)`` with ``lo < hi`` and ``hi > 0``, or ``None``; ValueError naming it."""
    if bounds is None:
        return None
    if len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}")
    lo, hi = (as_number(b, "bounds") for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"bounds must be finite, got {bounds!r}")
    if lo >= hi:
        raise ValueError(f"bounds must satisfy lo < hi, got lo={lo}, hi={hi}")
    if hi <= 0:
        raise ValueError(f"bounds must allow a positive setting, got hi={hi}")
    return lo, hi


def _triplet_margin_sign(miner: Any) -> int:
    # "easy" mines triplets *beyond* the margin; "hard" ignores a positive margin.
    kind = getattr(miner, "type_of_triplets", "all")
    return {"easy": -1, "hard": 0}.get(kind, 1)


def _pair_margin_sign(miner: Any, positive: bool) -> int:
    # Distances mine positives above pos_margin and negatives below neg_margin;
    # similarities flip both comparisons.
    inverted = bool(getattr(getattr(miner, "distance", None), "is_inverted", False))
    sign = -1 if positive else 1
    return -sign if inverted else sign


# (class name anywhere in the MRO, attribute) -> how a larger value moves the measured error.
KNOWN_SIGNS: dict[tuple[str, str], Callable[[Any], int]] = {
    ("TripletMarginMiner", "margin"): _triplet_margin_sign,
    ("MultiSimilarityMiner", "epsilon"): lambda m: 1,
    ("PairMarginMiner", "pos_margin"): lambda m: _pair_margin_sign(m, True),
    ("PairMarginMiner", "neg_margin"): lambda m: _pair_margin_sign(m, False),
    # Eq. 6: a larger kappa excludes more of the closest negatives -> easier triplets.
    ("SmartMiner", "kappa"): lambda m: -1,
    # A larger candidate pool lets the miner find harder negatives.
    ("IsometricHardMiner", "max_negatives"): lambda m: 1,
    # More random classes, or near classes drawn from a wider neighbourhood, put classes that
    # lie farther apart in one batch: easier batches, a lower training error.
    ("ClassHardBatchSampler", "random_share"): lambda s: -1,
    ("ClassHardBatchSampler", "neighbours"): lambda s: -1,
}


def known_sign(owner: Any, name: str) -> int:
    """+1 / -1 when a larger ``owner.<name>`` is known to raise / lower the error, else 0."""
    for cls in type(owner).__mro__:
        rule = KNOWN_SIGNS.get((cls.__name__, name))
        if rule is not None:
            return rule(owner)
    return 0


def declared_range(owner: Any, name: str) -> tuple[float | None, float | None] | None:
    """``owner.effective_ranges[name]`` as ``(lo, hi)`` (``None`` = open end), or ``None``.

    Raises ValueError naming ``effective_ranges`` when the declaration is malformed.
    """
    ranges = getattr(owner, "effective_ranges", None)
    if not isinstance(ranges, dict) or name not in ranges:
        return None
    where = f"{type(owner).__name__}.effective_ranges['{name}']"
    try:
        lo, hi = ranges[name]
        lo, hi = (None if b is None else float(b) for b in (lo, hi))
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a pair (lo, hi) of numbers or None, got {ranges[name]!r}") from None
    if any(b is not None and math.isnan(b) for b in (lo, hi)) or (lo is not None and hi is not None and lo >= hi):
        raise ValueError(f"{where} must satisfy lo < hi, got {ranges[name]!r}")
    if hi is not None and hi <= 0:
        raise ValueError(f"{where} must allow a positive setting, got hi={hi}")
    return lo, hi
