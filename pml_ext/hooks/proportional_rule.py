"""A bounded proportional controller in log-setting."""
from __future__ import annotations

from typing import Sequence

from .control_rule import ControlRule

__all__ = ["ProportionalRule"]


class ProportionalRule(ControlRule):
    """``next = setting * exp(sign * gain * (target - error))`` from the latest epoch only.

    It needs ``sign`` (the controller infers it or probes when unknown). The controller
    bounds each step to a factor ``max_step``. With a plant whose error changes by
    ``k`` per unit of ``log(setting)`` near the target, the error gap shrinks by
    ``|1 - gain * k|`` per epoch: the default ``gain=1.5`` converges without
    oscillating for ``k < 0.67`` and converges for ``k < 1.33`` (smart mining's kappa on
    digits: ``k`` about 0.6-1; a saturated error gap of 0.5 still moves the setting by
    ``exp(0.75) = 2.1``, i.e. the full default ``max_step``).
    """

    name = "proportional"

    def propose(self, settings: Sequence[float], errors: Sequence[float], target: float,
                sign: int) -> tuple[float | None, float, float, bool]:
        nan = float("nan")
        return self.proportional_step(settings[-1], errors[-1], target, sign), nan, nan, False
