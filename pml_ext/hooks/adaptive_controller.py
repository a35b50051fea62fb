"""AdaptiveController: steer any numeric attribute of a miner (or any object) to a target error.

Harwood et al. (ICCV 2017, docs/smart_mining.md) tune smart mining's ``kappa`` online so
that the fraction of active triplets stays at a target. This class generalises that
controller to any attribute of any module and plugs it into PML's trainers and
``HookContainer``. See docs/adaptive_controller.md.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from pytorch_metric_learning.utils import common_functions as c_f

from ..utils.checks import check_int, check_state_version
from ..utils.distributed import mean_across_ranks
from .control_rule import ControlRule
from .controller_state import parse_state
from .known_settings import as_number as _as_number
from .known_settings import check_bounds, declared_range, known_sign
from .known_settings import resolve as _resolve
from .least_squares_rule import LeastSquaresRule
from .proportional_rule import ProportionalRule
from .trainer_hooks import PMLTrainerHooks

__all__ = ["AdaptiveController"]

_RULES: dict[str, type[ControlRule]] = {"least_squares": LeastSquaresRule, "proportional": ProportionalRule}
_DIRECTIONS = {"increasing": 1, "decreasing": -1}
_STATE_VERSION = 2
# Added in version 2, with the values a version-1 state implies.
_V2_DEFAULTS = {"proposal": float("nan"), "clipped_by_step": 0.0, "clipped_by_bounds": 0.0, "step_log": []}
_STEP_LOG_KEYS = ("epoch", "setting", "error", "proposal", "new_setting", "used_fallback", "clipped_by_step",
                  "clipped_by_bounds")


class AdaptiveController(PMLTrainerHooks):
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
            ``None`` (default): the attribute's effective range, when its class declares
            one in ``effective_ranges`` (``SmartMiner.kappa``: ``[1, inf)``, since every
            kappa <= 1 mines the same triplets); explicit bounds replace it.
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
    the rule fitted nothing); and, for this epoch's step (reset by every ``step``, 0.0 /
    NaN when it changed nothing): ``proposal`` (the rule's value before any limit),
    ``used_fallback`` (1.0: the rule's fallback or the direction probe),
    ``clipped_by_step`` (1.0: ``max_step`` cut the proposal), ``clipped_by_bounds``
    (1.0: ``limits`` cut it). :attr:`step_log` keeps them for every epoch.
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

        if check_int(window, "window") < 2:
            raise ValueError(f"window must be >= 2 (a line needs two epochs), got {window}")
        self.window = int(window)

        self.bounds = check_bounds(bounds)
        #: The range in force: ``bounds`` if given, else the attribute's declared effective range.
        self.limits = self.bounds if self.bounds is not None else declared_range(self._owner, self._name)

        self.start_epoch = check_int(start_epoch, "start_epoch", 1)

        if direction is not None and direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'increasing', 'decreasing' or None, got {direction!r}")
        self._given_sign = _DIRECTIONS[direction] if direction is not None else known_sign(self._owner, self._name)
        self._inferred_sign = 0

        max_step = _as_number(max_step, "max_step")
        if not (math.isfinite(max_step) and max_step > 1):
            raise ValueError(f"max_step must be a finite factor > 1, got {max_step}")
        self.max_step = max_step

        self.epoch = 0
        self.last_error = float("nan")
        self.slope = float("nan")
        self.intercept = float("nan")
        self.proposal = float("nan")
        self.used_fallback = self.clipped_by_step = self.clipped_by_bounds = 0.0
        self.num_skipped = 0
        self._history: list[tuple[int, float, float]] = []
        self._step_log: list[dict[str, float]] = []
        self._obs_sum = 0.0
        self._obs_count = 0
        self.add_to_recordable_attributes(
            list_of_names=["target", "setting", "last_error", "slope", "intercept", "proposal", "used_fallback",
                           "clipped_by_step", "clipped_by_bounds"])

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

    @property
    def step_log(self) -> list[dict[str, float]]:
        """One dict per ``step`` (every epoch, fitted or not), oldest first: ``epoch``,
        ``setting`` (used), ``error`` (NaN: nothing observed), ``proposal``, ``new_setting``,
        ``used_fallback``, ``clipped_by_step``, ``clipped_by_bounds`` (floats, 1.0 = yes)."""
        return [dict(entry) for entry in self._step_log]

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
        self.proposal = float("nan")
        self.used_fallback = self.clipped_by_step = self.clipped_by_bounds = 0.0
        error = float("nan")
        if count > 0:
            error = self.last_error = float(total / count)
        if count > 0 and self.epoch >= self.start_epoch:
            self._history.append((self.epoch, current, error))
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
            self.proposal = float(proposal)
            self._write(self._limit(current, self.proposal))
        self._step_log.append({"epoch": float(self.epoch), "setting": current, "error": error,
                               "proposal": self.proposal, "new_setting": self.setting,
                               "used_fallback": self.used_fallback, "clipped_by_step": self.clipped_by_step,
                               "clipped_by_bounds": self.clipped_by_bounds})
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
        """The proposal within ``max_step`` of ``current`` and then within ``limits`` (limits
        win); sets ``clipped_by_step`` / ``clipped_by_bounds``. Ints are rounded, moving by
        at least one."""
        stepped = min(max(proposal, current / self.max_step), current * self.max_step)
        lo, hi = self.limits if self.limits is not None else (None, None)
        new = stepped if lo is None else max(stepped, lo)
        new = new if hi is None else min(new, hi)
        limited = new != stepped
        if self._is_int:
            rounded = round(new)
            if rounded == round(current) and new != current:
                # Rounding must not freeze a small integer (e.g. 1 * 1.3 -> 1).
                rounded += 1 if new > current else -1
            lo_int = 1 if lo is None else max(1, math.ceil(lo))
            hi_int = math.inf if hi is None else math.floor(hi)
            new = float(min(max(rounded, lo_int), hi_int))
            limited = limited or new != float(rounded)
        self.clipped_by_step = 1.0 if stepped != proposal else 0.0
        self.clipped_by_bounds = 1.0 if limited else 0.0
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
            "proposal": self.proposal,
            "clipped_by_step": self.clipped_by_step,
            "clipped_by_bounds": self.clipped_by_bounds,
            # NaN as None: a reloaded NaN is a new object, and NaN != NaN would make equal logs differ.
            "step_log": [[None if math.isnan(entry[k]) else entry[k] for k in _STEP_LOG_KEYS]
                         for entry in self._step_log],
            "inferred_sign": self._inferred_sign,
            "num_skipped": self.num_skipped,
            "obs_sum": self._obs_sum,
            "obs_count": self._obs_count,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output and write the saved setting back to the module.

        The whole state is validated (types, finiteness, ranges against the measure) before
        anything changes: a rejected state raises and leaves controller and module as they were."""
        if check_state_version(state, "AdaptiveController", _STATE_VERSION, required=True) == 1:
            state = {**_V2_DEFAULTS, **state, "version": _STATE_VERSION}  # saved before the step log
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(f"state is missing keys {missing}")
        for key, mine in (("attribute", self.attribute), ("rule", self.rule.name)):
            if state[key] != mine:
                raise ValueError(f"state was saved for {key} '{state[key]}', this controller has '{mine}'")
        # All or nothing: every field is checked first, and the module is written before
        # the controller, so a setter that refuses the value leaves both unchanged.
        values = parse_state(state, self.fraction, _STEP_LOG_KEYS)
        self._write(values["setting"])
        self.target, self.epoch, self._history = values["target"], values["epoch"], values["history"]
        self.last_error, self.slope, self.intercept = values["last_error"], values["slope"], values["intercept"]
        self.used_fallback, self.proposal = values["used_fallback"], values["proposal"]
        self.clipped_by_step, self.clipped_by_bounds = values["clipped_by_step"], values["clipped_by_bounds"]
        self._step_log, self._inferred_sign = values["step_log"], values["inferred_sign"]
        self.num_skipped, self._obs_sum, self._obs_count = values["num_skipped"], values["obs_sum"], values["obs_count"]

    def __repr__(self) -> str:
        return (f"AdaptiveController({type(self.controlled).__name__}.{self.attribute}={self.setting:g}, "
                f"target={self.target}, rule={self.rule!r}, direction={self.direction})")
