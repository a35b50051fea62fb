"""The smart-mining paper's controller rule: a least-squares line through (error, setting)."""
from __future__ import annotations

import math
from typing import Sequence

from .control_rule import ControlRule

__all__ = ["LeastSquaresRule"]


class LeastSquaresRule(ControlRule):
    """Fit ``setting = a * error + b`` over the window and propose ``a * target + b``.

    This is Harwood et al.'s rule (docs/smart_mining.md). The setting is regressed on the
    error, not the other way round: once the settings have converged, noise in the
    errors flattens the fitted slope, and the proposal tends to the mean recent setting
    instead of amplifying the noise.

    **Fallback** (the paper does not say what to do when the line is undefined): the
    fit is *degenerate* when

    - the window holds fewer than two epochs;
    - the settings are not distinct (spread below ``rel_tol`` times their magnitude):
      nothing says how the setting moves the error;
    - the errors are all equal (e.g. saturated at 0 or 1): the slope is undefined;
    - the slope has the wrong sign for the known direction (``a * sign <= 0``): noise or
      a drifting plant, and following it would move away from the target;
    - the line explains less than ``min_r2`` of the variance (``r^2 = corr(setting,
      error)^2``): typical when the settings have converged but training keeps moving
      the error (the plant drifts). The centroid proposal ``a * target + b`` then sits
      at the mean recent setting and would ignore a persistent error gap.

    Then the rule takes the proportional step of :class:`ControlRule` from the latest
    epoch, ``setting * exp(sign * gain * (target - error))``; the controller bounds it.

    Args:
        gain: the fallback's gain (log-setting per unit error).
        rel_tol: relative spread below which settings count as equal.
        min_r2: the smallest ``r^2`` a usable fit must reach; 0 gives the paper's rule
            with only the undefined-line fallbacks.
        log_space: fit ``log(setting) = a * error + b`` instead (and propose
            ``exp(a * target + b)``). Hyper-parameters that act on a log scale (kappa,
            pool sizes) give curves closer to a line there; the paper fits linearly.
        anchored: propose ``s_last + a * (target - e_last)`` (a Newton step from the
            latest epoch with the fitted slope) instead of ``a * target + b``. It
            follows a plant that drifts during training; the centroid lags behind it.
    """

    name = "least_squares"

    def __init__(self, gain: float = 1.5, rel_tol: float = 1e-6, min_r2: float = 0.5, log_space: bool = False,
                 anchored: bool = False):
        super().__init__(gain)
        rel_tol, min_r2 = float(rel_tol), float(min_r2)
        if not (math.isfinite(rel_tol) and rel_tol >= 0):
            raise ValueError(f"rel_tol must be a finite number >= 0, got {rel_tol}")
        if not 0.0 <= min_r2 <= 1.0:
            raise ValueError(f"min_r2 must lie in [0, 1], got {min_r2}")
        self.rel_tol = rel_tol
        self.min_r2 = min_r2
        self.log_space = bool(log_space)
        self.anchored = bool(anchored)

    def fit(self, settings: Sequence[float], errors: Sequence[float]) -> tuple[float, float, float] | None:
        """``(slope, intercept, r2)`` of ``setting = slope * error + intercept``, or None if undefined."""
        n = len(settings)
        if n < 2:
            return None
        scale = max(abs(s) for s in settings)
        if max(settings) - min(settings) <= self.rel_tol * scale:
            return None
        mean_e = math.fsum(errors) / n
        mean_s = math.fsum(settings) / n
        var_e = math.fsum((e - mean_e) ** 2 for e in errors)
        var_s = math.fsum((s - mean_s) ** 2 for s in settings)
        if var_e <= 1e-24 or var_s <= 0:
            return None
        cov = math.fsum((e - mean_e) * (s - mean_s) for e, s in zip(errors, settings))
        slope = cov / var_e
        return slope, mean_s - slope * mean_e, cov * cov / (var_e * var_s)

    def propose(self, settings: Sequence[float], errors: Sequence[float], target: float,
                sign: int) -> tuple[float | None, float, float, bool]:
        xs = [math.log(s) for s in settings] if self.log_space else list(settings)
        fitted = self.fit(xs, errors)
        slope = intercept = float("nan")
        if fitted is not None:
            slope, intercept, r2 = fitted
            if (sign == 0 or slope * sign > 0) and r2 >= self.min_r2:
                if self.anchored:
                    proposal = xs[-1] + slope * (target - errors[-1])
                else:
                    proposal = slope * target + intercept
                if self.log_space:
                    proposal = math.exp(min(proposal, 700.0))
                return proposal, slope, intercept, False
        return self.proportional_step(settings[-1], errors[-1], target, sign), slope, intercept, True

    def __repr__(self) -> str:
        return (f"LeastSquaresRule(gain={self.gain}, rel_tol={self.rel_tol}, min_r2={self.min_r2}, "
                f"log_space={self.log_space}, anchored={self.anchored})")
