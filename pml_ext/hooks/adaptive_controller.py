"""AdaptiveController: steer any numeric attribute of a miner (or any object) to a target error.

Harwood et al. (ICCV 2017, METHODS.md section 2) tune smart mining's ``kappa`` online so
that the fraction of active triplets stays at a target. This class generalises that
controller to any attribute of any module and plugs it into PML's trainers and
``HookContainer``. See docs/adaptive_controller.md.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from ..utils.distributed import mean_across_ranks
from .control_rule import ControlRule
from .least_squares_rule import LeastSquaresRule
from .proportional_rule import ProportionalRule

__all__ = ["AdaptiveController"]

_RULES: dict[str, type[ControlRule]] = {"least_squares": LeastSquaresRule, "proportional": ProportionalRule}
_DIRECTIONS = {"increasing": 1, "decreasing": -1}
_STATE_VERSION = 1


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


# (class name anywhere in the MRO, attribute) -> how a larger value moves the mined fraction.
_KNOWN_SIGNS: dict[tuple[str, str], Callable[[Any], int]] = {
    ("TripletMarginMiner", "margin"): _triplet_margin_sign,
    ("MultiSimilarityMiner", "epsilon"): lambda m: 1,
    ("PairMarginMiner", "pos_margin"): lambda m: _pair_margin_sign(m, True),
    ("PairMarginMiner", "neg_margin"): lambda m: _pair_margin_sign(m, False),
    # Eq. 6: a larger kappa excludes more of the closest negatives -> easier triplets.
    ("SmartMiner", "kappa"): lambda m: -1,
    # A larger candidate pool lets the miner find harder negatives.
    ("IsometricHardMiner", "max_negatives"): lambda m: 1,
}


def _known_sign(owner: Any, name: str) -> int:
    for cls in type(owner).__mro__:
        rule = _KNOWN_SIGNS.get((cls.__name__, name))
        if rule is not None:
            return rule(owner)
    return 0


def _resolve(root: Any, path: str, arg: str) -> tuple[Any, str]:
    """``(owner, last_name)`` for a dotted ``path`` under ``root``; ValueError naming ``arg``."""
    parts = path.split(".")
    owner = root
    for i, part in enumerate(parts):
        if not part or not hasattr(owner, part):
            where = type(owner).__name__ + ("" if i == 0 else f" (at '{'.'.join(parts[:i])}')")
            raise ValueError(f"{arg} '{path}' not found: {where} has no attribute '{part}'")
        if i < len(parts) - 1:
            owner = getattr(owner, part)
    return owner, parts[-1]


def _as_number(value: Any, arg: str) -> float:
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


class AdaptiveController:
    """Set ``module.<attribute>`` once per epoch so that a measured error tracks ``target``.

    Per iteration call :meth:`observe` (it reads ``module.<measure>``); per epoch call
    :meth:`step`, which averages the epoch's observations into one error ``e``, stores the
    pair (setting used, ``e``), asks the rule for the next setting and writes it to the
    module. :meth:`wrap_hook_container` does both inside PML trainers.

    Args:
        module: the object that owns the steered attribute, e.g. a PML miner.
        attribute: name of a positive int or float attribute; dotted paths reach into
            sub-objects (``"miner.margin"``). Int attributes stay ints.
        target: the error to track. For fraction measures it must lie in [0, 1].
        measure: name (dotted allowed) of the attribute of ``module`` holding the latest
            error, or a zero-argument callable returning it. ``None`` or NaN readings
            are skipped (nothing measured this iteration).
        rule: ``"least_squares"`` (the paper's), ``"proportional"``, or a
            :class:`~pml_ext.hooks.control_rule.ControlRule` instance.
        window: the number of most recent epochs the rule sees (>= 2).
        bounds: ``(lo, hi)`` with ``lo < hi``; every new setting is clamped into it.
        start_epoch: the first epoch whose error is used. Earlier epochs (e.g. smart
            mining's random-triplet warm-up) are measured and logged only; the first
            change is made at the end of ``start_epoch``, for the epoch after it.
        direction: ``"increasing"`` if a larger setting gives a larger error,
            ``"decreasing"`` otherwise, ``None`` to infer it: from a table of known
            miners (TripletMarginMiner.margin, MultiSimilarityMiner.epsilon,
            PairMarginMiner margins, SmartMiner.kappa, IsometricHardMiner.max_negatives),
            else from the history (the sign of cov(setting, error), fixed the first time
            it is non-zero), after a probing step of factor ``max_step``.
        max_step: the largest factor by which one step may change the setting (> 1).
            It keeps the setting positive and stops a poorly conditioned fit from
            extrapolating far away.
        fraction: whether the measure is a fraction in [0, 1]; ``None`` infers it from the
            measure's name (it contains "fraction").

    Recorded by record-keeper (``_record_these``; plain floats): ``target``,
    ``setting``, ``last_error``, ``slope`` and ``intercept`` of the last fit (NaN when
    the rule fitted nothing), ``used_fallback`` (1.0 when the last step was the fallback).
    """

    def __init__(self, module: Any, attribute: str, target: float,
                 measure: str | Callable[[], float] = "fraction_active", rule: str | ControlRule = "least_squares",
                 window: int = 5, bounds: tuple[float, float] | None = None, start_epoch: int = 3,
                 direction: str | None = None, max_step: float = 2.0, fraction: bool | None = None):
        if not isinstance(attribute, str):
            raise TypeError(f"attribute must be a str, got {type(attribute).__name__}")
        # Not ``self.module``: record-keeper unwraps any object with a ``.module`` as if it
        # were DataParallel, and would log the miner instead of the controller.
        self.controlled = module
        self.attribute = attribute
        self._owner, self._name = _resolve(module, attribute, "attribute")
        initial = getattr(self._owner, self._name)
        if isinstance(initial, bool) or not isinstance(initial, (int, float)):
            raise TypeError(f"attribute '{attribute}' must hold an int or float, got {type(initial).__name__}")
        if not (math.isfinite(initial) and initial > 0):
            raise ValueError(f"attribute '{attribute}' must be a finite number > 0 (steps are "
                             f"multiplicative), got {initial}")
        self._is_int = isinstance(initial, int)

        if isinstance(measure, str):
            _resolve(module, measure, "measure")
            measure_name = measure
        elif callable(measure):
            measure_name = getattr(measure, "__name__", "")
        else:
            raise TypeError(f"measure must be an attribute name or a callable, got {type(measure).__name__}")
        self.measure = measure
        self.fraction = ("fraction" in measure_name.lower()) if fraction is None else bool(fraction)

        target = _as_number(target, "target")
        if not math.isfinite(target):
            raise ValueError(f"target must be finite, got {target}")
        if self.fraction and not 0.0 <= target <= 1.0:
            raise ValueError(f"target must lie in [0, 1] for the fraction measure '{measure_name}', got {target}")
        self.target = target

        if isinstance(rule, str):
            if rule not in _RULES:
                raise ValueError(f"rule must be one of {sorted(_RULES)} or a ControlRule, got '{rule}'")
            rule = _RULES[rule]()
        elif not isinstance(rule, ControlRule):
            raise TypeError(f"rule must be a str or a ControlRule, got {type(rule).__name__}")
        self.rule = rule

        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window must be an int, got {type(window).__name__}")
        if window < 2:
            raise ValueError(f"window must be >= 2 (a line needs two epochs), got {window}")
        self.window = window

        if bounds is not None:
            if len(bounds) != 2:
                raise ValueError(f"bounds must be a pair (lo, hi), got {bounds!r}")
            lo, hi = (_as_number(b, "bounds") for b in bounds)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"bounds must be finite, got {bounds!r}")
            if lo >= hi:
                raise ValueError(f"bounds must satisfy lo < hi, got lo={lo}, hi={hi}")
            if hi <= 0:
                raise ValueError(f"bounds must allow a positive setting, got hi={hi}")
            bounds = (lo, hi)
        self.bounds = bounds

        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int):
            raise TypeError(f"start_epoch must be an int, got {type(start_epoch).__name__}")
        if start_epoch < 1:
            raise ValueError(f"start_epoch must be >= 1, got {start_epoch}")
        self.start_epoch = start_epoch

        if direction is not None and direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'increasing', 'decreasing' or None, got {direction!r}")
        self._given_sign = _DIRECTIONS[direction] if direction is not None else _known_sign(self._owner, self._name)
        self._inferred_sign = 0

        max_step = _as_number(max_step, "max_step")
        if not (math.isfinite(max_step) and max_step > 1):
            raise ValueError(f"max_step must be a finite factor > 1, got {max_step}")
        self.max_step = max_step

        self.epoch = 0
        self.last_error = float("nan")
        self.slope = float("nan")
        self.intercept = float("nan")
        self.used_fallback = 0.0
        self.num_skipped = 0
        self._history: list[tuple[int, float, float]] = []
        self._obs_sum = 0.0
        self._obs_count = 0
        self.add_to_recordable_attributes(
            list_of_names=["target", "setting", "last_error", "slope", "intercept", "used_fallback"])

    def add_to_recordable_attributes(self, name: str | None = None, list_of_names: Sequence[str] | None = None,
                                     is_stat: bool = False) -> None:
        """PML's registration of the attributes record-keeper logs (``_record_these``)."""
        c_f.add_to_recordable_attributes(self, name=name, list_of_names=list_of_names, is_stat=is_stat)

    # ------------------------------------------------------------------ state
    @property
    def setting(self) -> float:
        """The attribute's current value, as a plain float."""
        return float(getattr(self._owner, self._name))

    @property
    def direction(self) -> str | None:
        """``"increasing"``/``"decreasing"`` once known (given, from the table, or inferred)."""
        sign = self._given_sign or self._inferred_sign
        return {1: "increasing", -1: "decreasing"}.get(sign)

    @property
    def history(self) -> list[tuple[int, float, float]]:
        """Every fitted epoch as ``(epoch, setting used, mean error)``, oldest first."""
        return list(self._history)

    # ------------------------------------------------------------- the loop
    def observe(self, value: float | None = None) -> None:
        """Add one measurement (once per iteration); reads ``module.<measure>`` when ``value`` is None."""
        arg = "value"
        if value is None:
            arg = "measure"
            if isinstance(self.measure, str):
                owner, name = _resolve(self.controlled, self.measure, "measure")
                value = getattr(owner, name)
            else:
                value = self.measure()
        if value is None:
            self.num_skipped += 1
            return
        v = _as_number(value, arg)
        if math.isnan(v):
            self.num_skipped += 1
            return
        if math.isinf(v):
            raise ValueError(f"{arg} must be finite, got {v}")
        if self.fraction and not 0.0 <= v <= 1.0:
            raise ValueError(f"{arg} is a fraction but read {v}, outside [0, 1]")
        self._obs_sum += v
        self._obs_count += 1

    def step(self) -> float:
        """End an epoch: fit, set ``module.<attribute>`` and return the new setting.

        Under torch.distributed every rank must call it once per epoch: the epoch's
        error is the mean over all ranks' observations, so every rank sets the same value.
        """
        # Sum and count are averaged separately so ranks with more (or no) observations
        # weigh in proportion, giving the mean over every observation of every rank.
        total = mean_across_ranks(self._obs_sum)
        count = mean_across_ranks(float(self._obs_count))
        self._obs_sum, self._obs_count = 0.0, 0
        self.epoch += 1
        current = self.setting
        if count <= 0:
            return current
        error = total / count
        self.last_error = float(error)
        if self.epoch < self.start_epoch:
            return current
        self._history.append((self.epoch, current, self.last_error))
        recent = self._history[-self.window:]
        settings = [s for _, s, _ in recent]
        errors = [e for _, _, e in recent]
        proposal, slope, intercept, fallback = self.rule.propose(settings, errors, self.target, self._sign())
        self.slope, self.intercept = float(slope), float(intercept)
        self.used_fallback = 1.0 if fallback else 0.0
        if proposal is None or not math.isfinite(proposal):
            # Direction unknown and nothing to fit yet: probe, so the next epoch shows it.
            proposal = current * self.max_step
            self.used_fallback = 1.0
        self._write(self._limit(current, float(proposal)))
        return self.setting

    def _sign(self) -> int:
        if self._given_sign or self._inferred_sign:
            return self._given_sign or self._inferred_sign
        n = len(self._history)
        if n >= 2:
            ms = math.fsum(s for _, s, _ in self._history) / n
            me = math.fsum(e for _, _, e in self._history) / n
            cov = math.fsum((s - ms) * (e - me) for _, s, e in self._history)
            if cov != 0:
                self._inferred_sign = 1 if cov > 0 else -1
        return self._inferred_sign

    def _limit(self, current: float, proposal: float) -> float:
        new = min(max(proposal, current / self.max_step), current * self.max_step)
        if self.bounds is not None:
            new = min(max(new, self.bounds[0]), self.bounds[1])
        if self._is_int:
            rounded = round(new)
            if rounded == round(current) and new != current:
                # Rounding must not freeze a small integer (e.g. 1 * 1.3 -> 1).
                rounded += 1 if new > current else -1
            lo = 1 if self.bounds is None else max(1, math.ceil(self.bounds[0]))
            hi = math.inf if self.bounds is None else math.floor(self.bounds[1])
            new = float(min(max(rounded, lo), hi))
        return new

    def _write(self, value: float) -> None:
        setattr(self._owner, self._name, int(round(value)) if self._is_int else float(value))

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> dict:
        """Everything a resumed run needs, as plain Python types (loadable with ``weights_only``)."""
        return {
            "version": _STATE_VERSION,
            "attribute": self.attribute,
            "rule": self.rule.name,
            "setting": self.setting,
            "target": self.target,
            "epoch": self.epoch,
            "history": [list(h) for h in self._history],
            "last_error": self.last_error,
            "slope": self.slope,
            "intercept": self.intercept,
            "used_fallback": self.used_fallback,
            "inferred_sign": self._inferred_sign,
            "num_skipped": self.num_skipped,
            "obs_sum": self._obs_sum,
            "obs_count": self._obs_count,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output and write the saved setting back to the module."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(f"state is missing keys {missing}")
        if state["version"] != _STATE_VERSION:
            raise ValueError(f"state has version {state['version']}, expected {_STATE_VERSION}")
        for key, mine in (("attribute", self.attribute), ("rule", self.rule.name)):
            if state[key] != mine:
                raise ValueError(f"state was saved for {key} '{state[key]}', this controller has '{mine}'")
        self.target = float(state["target"])
        self.epoch = int(state["epoch"])
        self._history = [(int(e), float(s), float(err)) for e, s, err in state["history"]]
        self.last_error = float(state["last_error"])
        self.slope = float(state["slope"])
        self.intercept = float(state["intercept"])
        self.used_fallback = float(state["used_fallback"])
        self._inferred_sign = int(state["inferred_sign"])
        self.num_skipped = int(state["num_skipped"])
        self._obs_sum = float(state["obs_sum"])
        self._obs_count = int(state["obs_count"])
        self._write(float(state["setting"]))

    # --------------------------------------------------------- PML trainers
    def attach(self, trainer: Any, name: str = "adaptive_controller") -> None:
        """Put the controller in ``trainer.adaptive_controllers[name]``.

        A ``HookContainer`` wrapped by :meth:`wrap_hook_container` saves and loads the
        objects of that dict with the models (``<name>_<epoch>.pth``), so call this
        before ``hooks.load_latest_saved_models(trainer, folder)`` when resuming.
        """
        controllers = getattr(trainer, "adaptive_controllers", None)
        if not isinstance(controllers, dict):
            controllers = {}
            trainer.adaptive_controllers = controllers
        controllers[name] = self

    def wrap_hook_container(self, hooks: Any = None, end_of_epoch_hook: Callable | None = None,
                            name: str = "adaptive_controller") -> tuple[Callable, Callable]:
        """``(end_of_iteration_hook, end_of_epoch_hook)`` for a PML trainer.

        The iteration hook calls :meth:`observe`, then ``hooks.end_of_iteration_hook``.
        The epoch hook calls :meth:`step`, logs the controller with ``hooks.record_keeper``
        (group ``<name>_AdaptiveController``, x = the epoch), then runs
        ``end_of_epoch_hook`` (typically ``hooks.end_of_epoch_hook(tester, ...)``) and
        returns its verdict (False stops training). The step comes first so the models
        saved by that hook go with the setting of the next epoch.

        Args:
            hooks: a PML ``logging_presets.HookContainer`` or None. Its
                ``saveable_trainer_objects`` gains ``"adaptive_controllers"``.
            end_of_epoch_hook: the container's epoch hook, already built, or None.
            name: key of the controller in ``trainer.adaptive_controllers`` and in logs.
        """
        if hooks is not None:
            saveable = getattr(hooks, "saveable_trainer_objects", None)
            if isinstance(saveable, list) and "adaptive_controllers" not in saveable:
                saveable.append("adaptive_controllers")

        def end_of_iteration_hook(trainer: Any) -> None:
            self.observe()
            if hooks is not None:
                hooks.end_of_iteration_hook(trainer)

        def end_of_epoch_hook_(trainer: Any) -> bool:
            self.attach(trainer, name)
            self.step()
            record_keeper = getattr(hooks, "record_keeper", None)
            if record_keeper is not None:
                record_keeper.update_records({name: self}, trainer.epoch)
            if end_of_epoch_hook is None:
                return True
            return end_of_epoch_hook(trainer)

        return end_of_iteration_hook, end_of_epoch_hook_

    def __repr__(self) -> str:
        return (f"AdaptiveController({type(self.controlled).__name__}.{self.attribute}={self.setting:g}, "
                f"target={self.target}, rule={self.rule!r}, direction={self.direction})")
