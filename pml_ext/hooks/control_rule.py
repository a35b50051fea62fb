"""The interface of AdaptiveController's update rules, and the log-space proportional step they share."""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["ControlRule"]


class ControlRule:
    """Base of the rules that turn a controller's history into the next setting.

    A rule sees the last ``window`` epochs only, as two equally long sequences, oldest
    first: ``settings[W]`` (the value the attribute had during each epoch) and
    ``errors[W]`` (the epoch's mean measured error). It proposes the next setting; the
    controller then limits the step size, clamps to bounds and rounds integer attributes,
    so a rule may return any finite number.

    ``sign`` is how the setting moves the error: ``+1`` (a larger setting gives a larger
    error), ``-1`` (a smaller error), or ``0`` (not known yet). A rule that needs it and
    gets ``0`` returns ``None`` for the setting; the controller then probes.

    A new rule is a subclass that implements :meth:`propose`.
    """

    #: Registry name, used in ``state_dict`` to check a resumed controller has the same rule.
    name = "base"

    def __init__(self, gain: float = 1.5):
        """``gain``: the proportional step's gain, in log-setting units per unit of error."""
        try:
            gain = float(gain)
        except (TypeError, ValueError):
            raise TypeError(f"gain must be a number, got {type(gain).__name__}") from None
        if not (math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be a finite number > 0, got {gain}")
        self.gain = gain

    def propose(self, settings: Sequence[float], errors: Sequence[float], target: float,
                sign: int) -> tuple[float | None, float, float, bool]:
        """Return ``(next_setting or None, slope, intercept, used_fallback)``.

        ``slope`` and ``intercept`` describe the fitted ``setting = slope * error +
        intercept`` (``nan`` when the rule fits nothing); ``used_fallback`` says whether
        the rule's own method was replaced by the proportional step.
        """
        raise NotImplementedError

    def proportional_step(self, setting: float, error: float, target: float, sign: int) -> float | None:
        """``setting * exp(sign * gain * (target - error))``: a step in log-setting.

        Multiplicative because the steered hyper-parameters (kappa, margins, pool sizes)
        are positive scale parameters whose useful values span decades; a step of
        constant relative size keeps them positive and treats 0.1 -> 0.2 like 1 -> 2.
        ``None`` when ``sign`` is unknown.
        """
        if sign == 0:
            return None
        return setting * math.exp(sign * self.gain * (target - error))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gain={self.gain})"
