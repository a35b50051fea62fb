"""Validation of an ``AdaptiveController`` state dict, all of it, before anything is changed.

``AdaptiveController.load_state_dict`` calls ``parse_state`` and assigns only when every
field passed, so a rejected state leaves the controller (and the steered module) as it
was. A setting of NaN, inf, 0 or -5 would otherwise be written to the miner, and a target
of 7 for a fraction measure would steer towards an error that cannot happen.
"""
from __future__ import annotations

import math
from typing import Any

from .known_settings import as_number

__all__ = ["parse_state"]


def _num(value: Any, name: str, nan: bool = False, positive: bool = False,
         fraction: bool = False) -> float:
    """A float that is finite (or NaN when ``nan``), > 0 when ``positive``, in [0, 1] when ``fraction``."""
    if isinstance(value, (str, bytes)):  # float("0.2") would accept it
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = as_number(value, name)
    if math.isnan(v):
        if nan:
            return v
        raise ValueError(f"{name} must be a finite number, got {v}")
    if math.isinf(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if fraction and not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] for a fraction measure, got {v}")
    return v


def _count(value: Any, name: str, minimum: int = 0) -> int:
    """A whole number >= ``minimum`` (``3.0`` is accepted, ``2.5`` and bools are not)."""
    whole = (not isinstance(value, bool) and isinstance(value, (int, float))
             and math.isfinite(value) and value == int(value))
    if not whole:
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _flag(value: Any, name: str) -> float:
    v = as_number(value, name)
    if v not in (0.0, 1.0):
        raise ValueError(f"{name} must be 0.0 or 1.0, got {v}")
    return v


def _rows(value: Any, name: str, width: int) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list, got {type(value).__name__}")
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple)) or len(row) != width:
            raise ValueError(f"{name}[{i}] must be a list of {width} values, got {row!r}")
    return list(value)


def parse_state(state: dict, fraction: bool, step_log_keys: tuple[str, ...]) -> dict:
    """Every field of a (version-2) controller state, checked and converted.

    Args:
        state: the dict ``state_dict`` returned (its keys already checked).
        fraction: whether errors and the target are fractions in [0, 1].
        step_log_keys: the column names of a ``step_log`` row.

    Returns:
        The converted fields, ready to assign. Raises ``TypeError``/``ValueError`` naming
        the field as ``state['key']``.
    """
    def n(key: str) -> str:
        return f"state['{key}']"

    out: dict[str, Any] = {
        "setting": _num(state["setting"], n("setting"), positive=True),
        "target": _num(state["target"], n("target"), fraction=fraction),
        "epoch": _count(state["epoch"], n("epoch")),
        "last_error": _num(state["last_error"], n("last_error"), nan=True, fraction=fraction),
        "slope": _num(state["slope"], n("slope"), nan=True),
        "intercept": _num(state["intercept"], n("intercept"), nan=True),
        "proposal": _num(state["proposal"], n("proposal"), nan=True),
        "num_skipped": _count(state["num_skipped"], n("num_skipped")),
        "obs_count": _count(state["obs_count"], n("obs_count")),
        "obs_sum": _num(state["obs_sum"], n("obs_sum")),
    }
    for key in ("used_fallback", "clipped_by_step", "clipped_by_bounds"):
        out[key] = _flag(state[key], n(key))
    sign = state["inferred_sign"]
    if isinstance(sign, bool) or sign not in (-1, 0, 1):
        raise ValueError(f"{n('inferred_sign')} must be -1, 0 or 1, got {sign!r}")
    out["inferred_sign"] = int(sign)
    if fraction and not 0.0 <= out["obs_sum"] <= out["obs_count"]:
        raise ValueError(f"{n('obs_sum')} must lie in [0, obs_count] for a fraction measure, got {out['obs_sum']}")
    history = []
    for i, (e, s, err) in enumerate(_rows(state["history"], n("history"), 3)):
        where = f"{n('history')}[{i}]"
        history.append((_count(e, where + "[0] (epoch)", 1), _num(s, where + "[1] (setting)", positive=True),
                        _num(err, where + "[2] (error)", fraction=fraction)))
    out["history"] = history
    log = []
    for i, row in enumerate(_rows(state["step_log"], n("step_log"), len(step_log_keys))):
        entry = {k: math.nan if v is None else _num(v, f"{n('step_log')}[{i}]['{k}']", nan=True)
                 for k, v in zip(step_log_keys, row)}
        log.append(entry)
    out["step_log"] = log
    return out
