"""LinearSchedule: a setting fixed by the epoch (constant, then a linear ramp), the baseline a controller must beat."""
from __future__ import annotations

import math
from typing import Any, Sequence

from pytorch_metric_learning.utils import common_functions as c_f

from ..utils.checks import check_int, check_state_version
from .known_settings import as_number, declared_range, resolve
from .trainer_hooks import PMLTrainerHooks

__all__ = ["LinearSchedule"]

_STATE_VERSION = 1


class LinearSchedule(PMLTrainerHooks):
    """Set ``module.<attribute>`` once per epoch to a value that depends on the epoch alone.

    Epoch ``e`` (1-based) trains with ``start`` while ``e <= start_epoch``, with ``end``
    from ``end_epoch`` on, and in between with the straight line
    ``start + (end - start) * (e - start_epoch) / (end_epoch - start_epoch)``. Int
    attributes get the value rounded to the nearest int (halves up, so a ramp steps evenly).
    Nothing is measured: this is the fixed schedule that an :class:`AdaptiveController`,
    which follows the training error, has to beat. E.g. ``ClassHardBatchSampler``'s
    ``random_share`` from 1.0 (random classes) to 0.0 (all near classes).

    The constructor writes epoch 1's value; :meth:`step`, called at the end of each epoch
    (the runner's ``controllers:`` do, like :meth:`wrap_hook_container`), writes the next
    epoch's. :meth:`observe` does nothing; it is there for the ``Controller`` protocol.

    Args:
        module: the object that owns the attribute (a sampler, a miner, ...).
        attribute: name of an int or float attribute; dotted paths reach into sub-objects.
        start: the value up to and including ``start_epoch``.
        end: the value from ``end_epoch`` on.
        start_epoch: the last epoch at ``start`` (>= 0; 0: the ramp begins at epoch 1).
        end_epoch: the first epoch at ``end`` (> ``start_epoch``).

    Both values must lie in the attribute's declared effective range, when its class
    declares one (``ClassHardBatchSampler.random_share``: [0, 1]). Recorded by
    record-keeper (``_record_these``): ``setting``, the value of the coming epoch.
    """

    def __init__(self, module: Any, attribute: str, start: float, end: float, end_epoch: int,
                 start_epoch: int = 1):
        if not isinstance(attribute, str):
            raise TypeError(f"attribute must be a str, got {type(attribute).__name__}")
        self.controlled = module  # not ``module``: record-keeper would unwrap it (see AdaptiveController)
        self.attribute = attribute
        self._owner, self._name = resolve(module, attribute, "attribute")
        initial = getattr(self._owner, self._name)
        if isinstance(initial, bool) or not isinstance(initial, (int, float)):
            raise TypeError(f"attribute '{attribute}' must hold an int or float, got {type(initial).__name__}")
        self._is_int = isinstance(initial, int)
        self.start, self.end = (_finite(value, arg) for value, arg in ((start, "start"), (end, "end")))
        limits = declared_range(self._owner, self._name)
        for value, arg in ((self.start, "start"), (self.end, "end")):
            _check_in_range(value, limits, arg, attribute)
        self.start_epoch = check_int(start_epoch, "start_epoch", 0)
        self.end_epoch = check_int(end_epoch, "end_epoch", 1)
        if self.end_epoch <= self.start_epoch:
            raise ValueError(f"end_epoch must be > start_epoch, got end_epoch={end_epoch}, start_epoch={start_epoch}")
        self.epoch = 0  # epochs completed (steps taken)
        self._write(self.epoch + 1)
        c_f.add_to_recordable_attributes(self, list_of_names=["setting"])

    def value(self, epoch: int) -> float | int:
        """The value epoch ``epoch`` (>= 1) trains with; an int for an int attribute."""
        epoch = check_int(epoch, "epoch", 1)
        if epoch <= self.start_epoch:
            value = self.start
        elif epoch >= self.end_epoch:
            value = self.end
        else:
            done = (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
            value = self.start + (self.end - self.start) * done
        return math.floor(value + 0.5) if self._is_int else float(value)

    @property
    def setting(self) -> float:
        """The attribute's current value, as a plain float."""
        return float(getattr(self._owner, self._name))

    def observe(self) -> None:
        """Nothing to measure (the ``Controller`` protocol's per-iteration call)."""

    def step(self) -> float:
        """End an epoch: write the next epoch's value and return it."""
        self.epoch += 1
        self._write(self.epoch + 1)
        return self.setting

    def _write(self, epoch: int) -> None:
        setattr(self._owner, self._name, self.value(epoch))

    def state_dict(self) -> dict:
        """The epochs completed, the attribute (checked on load) and the schedule they were counted
        under (kept for the record: a resumed run may use another schedule)."""
        return {"version": _STATE_VERSION, "attribute": self.attribute, "epoch": self.epoch, "start": self.start,
                "end": self.end, "start_epoch": self.start_epoch, "end_epoch": self.end_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output and write the value of the epoch after it.

        The schedule may change between runs (a longer ramp on resume); the attribute may not."""
        check_state_version(state, "LinearSchedule", _STATE_VERSION, required=True)
        if state.get("attribute") != self.attribute:
            raise ValueError(f"state['attribute'] is {state.get('attribute')!r}, this schedule sets "
                             f"'{self.attribute}'")
        self.epoch = check_int(state.get("epoch"), "state['epoch']", 0)
        self._write(self.epoch + 1)


def _finite(value: Any, arg: str) -> float:
    number = as_number(value, arg)
    if not math.isfinite(number):
        raise ValueError(f"{arg} must be finite, got {value}")
    return number


def _check_in_range(value: float, limits: Sequence[float | None] | None, arg: str, attribute: str) -> None:
    lo, hi = limits if limits is not None else (None, None)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{arg} must lie in the range of '{attribute}', [{lo}, {hi}], got {value}")
