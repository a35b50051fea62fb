"""Name -> class resolution for configs: users' registrations, then pml_ext, then PML and torch.

A config names classes (``{TripletMarginLoss: {margin: 0.2}}``); the registry finds them.
Resolution order, per kind:

1. classes and modules registered with :func:`register` (users' own code, like PB's
   ``runner.register``);
2. the ``pml_ext`` namespace, read at lookup time, so that classes other modules export
   later are found without editing the registry;
3. PML's modules for the kind, ``torch.optim`` / ``torch.nn``, and torchvision's
   transforms and models when torchvision is installed.

A pml_ext class that has the same name as a PML class shadows it on purpose (pml_ext's
``LiftedStructureLoss`` is the drop-in, O(B^2) version); the registry logs that once.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import types
from typing import Any, Iterable

from ..config.config_error import ConfigError
from .vision import TorchvisionMismatch, import_torchvision

__all__ = ["Registry", "register", "default_registry", "KINDS"]

LOGGER = logging.getLogger("pml_ext.runner")

# kind -> (dotted base classes a pml_ext candidate must subclass, fallback modules in order)
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "loss": (("pytorch_metric_learning.losses.BaseMetricLossFunction",
              "pytorch_metric_learning.losses.base_loss_wrapper.BaseLossWrapper",
              "pytorch_metric_learning.losses.MultipleLosses"),
             ("pytorch_metric_learning.losses", "pml_ext.runner.objects.classification_losses")),
    "miner": (("pytorch_metric_learning.miners.BaseMiner",), ("pytorch_metric_learning.miners",)),
    "distance": (("pytorch_metric_learning.distances.BaseDistance",), ("pytorch_metric_learning.distances",)),
    "reducer": (("pytorch_metric_learning.reducers.BaseReducer",), ("pytorch_metric_learning.reducers",)),
    "regularizer": (("pytorch_metric_learning.regularizers.BaseRegularizer",),
                    ("pytorch_metric_learning.regularizers",)),
    "sampler": (("torch.utils.data.Sampler",), ("pytorch_metric_learning.samplers", "torch.utils.data")),
    "trainer": (("pytorch_metric_learning.trainers.BaseTrainer",),
                ("pytorch_metric_learning.trainers", "pml_ext.runner.objects.unsupervised_trainer")),
    "tester": (("pytorch_metric_learning.testers.BaseTester",), ("pytorch_metric_learning.testers",)),
    "accuracy_calculator": (("pytorch_metric_learning.utils.accuracy_calculator.AccuracyCalculator",),
                            ("pytorch_metric_learning.utils.accuracy_calculator",)),
    "hook_container": (("pytorch_metric_learning.utils.logging_presets.HookContainer",),
                       ("pytorch_metric_learning.utils.logging_presets",)),
    "optimizer": (("torch.optim.Optimizer",), ("torch.optim",)),
    "lr_scheduler": (("torch.optim.lr_scheduler.LRScheduler",), ("torch.optim.lr_scheduler",)),
    "model": (("torch.nn.Module",),
              ("pml_ext.models", "pml_ext.runner.objects.pb_models", "torch.nn", "torchvision.models")),
    "transform": ((), ("torchvision.transforms",)),
    "dataset": (("torch.utils.data.Dataset",), ("pml_ext.runner.objects.datasets",)),
    "split_manager": ((), ("pml_ext.runner.objects.split_manager",)),
    # Controllers have no common base: a pml_ext class qualifies by following the Controller protocol.
    "controller": ((), ()),
}

# kwargs that hold a nested object spec, and the kind to build it as
NESTED_KINDS = {
    "distance": "distance",
    "reducer": "reducer",
    "default_reducer": "reducer",
    "reducers": "reducer",
    "embedding_regularizer": "regularizer",
    "weight_regularizer": "regularizer",
    "loss": "loss",
    "losses": "loss",
    "miner": "miner",
    "miners": "miner",
    "accuracy_calculator": "accuracy_calculator",
}


def _import(dotted: str):
    """A module or a module attribute by dotted name; ``None`` when it cannot be imported.

    An installed but broken package counts as absent here, so that it does not stop the
    lookup of every other name: torchvision built for another torch raises
    ``TorchvisionMismatch``, which :meth:`Registry.get` reports when a name is not found."""
    if dotted.startswith("torchvision"):
        try:
            import_torchvision()
        except ConfigError:  # not installed, or TorchvisionMismatch
            return None
    try:
        return importlib.import_module(dotted)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        return None
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception:  # noqa: BLE001 - ImportError, AttributeError, or a broken package
        return None


def _torchvision_note(kind: str) -> str:
    """Why an unknown name of ``kind`` may be torchvision's, for the unknown-name error."""
    if kind not in ("model", "transform"):
        return ""
    try:
        import_torchvision()
    except TorchvisionMismatch as exc:
        return f" (torchvision, where it may be, cannot be imported: {exc.message})"
    except ConfigError:
        return " (torchvision is not installed; its models and transforms are unavailable)"
    return ""


def _public_names(module) -> Iterable[str]:
    return [n for n in dir(module) if not n.startswith("_")]


def _is_buildable(obj) -> bool:
    return inspect.isclass(obj) or (callable(obj) and not isinstance(obj, types.ModuleType))


class Registry:
    """Resolve and build the objects a config names.

    ``get(kind, name)`` returns the class (or factory function); ``build(kind, spec)``
    instantiates a ``{ClassName: {kwargs}}`` spec, building nested specs of the kwargs
    listed in :data:`NESTED_KINDS` first (``distance``, ``reducer``, ``embedding_regularizer``,
    a ``loss`` inside ``CrossBatchMemory``, the ``losses`` of ``MultipleLosses``, ...), for
    losses and miners alike.
    """

    def __init__(self):
        self._user: dict[str, list[tuple[str | None, Any]]] = {kind: [] for kind in KINDS}
        self.notes: list[str] = []

    def register(self, kind: str, obj: Any, name: str | None = None) -> None:
        """Make ``obj`` (a class, a factory function, or a module of them) resolvable as ``kind``.

        Registered objects are tried before pml_ext and PML, so a user's class of the same
        name wins. A module is searched by attribute name, as PB's ``register`` did.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if isinstance(obj, types.ModuleType):
            if name is not None:
                raise ValueError("name is only for a single class or function, not a module")
            self._user[kind].insert(0, (None, obj))
        elif _is_buildable(obj):
            self._user[kind].insert(0, (name or obj.__name__, obj))
        else:
            raise TypeError(f"obj must be a class, a function or a module, got {type(obj).__name__}")

    # ---- lookup ---------------------------------------------------------------------------

    def _pml_ext_candidate(self, kind: str, name: str):
        import pml_ext

        obj = getattr(pml_ext, name, None)
        if not inspect.isclass(obj):
            return None
        bases = [b for b in (_import(d) for d in KINDS[kind][0]) if inspect.isclass(b)]
        if bases:
            return obj if issubclass(obj, tuple(bases)) else None
        if kind == "controller":
            from ...utils.protocols import Controller

            return obj if inspect.isclass(obj) and issubclass(obj, Controller) else None
        return None

    def _fallback_candidates(self, kind: str, name: str):
        for dotted in KINDS[kind][1]:
            module = _import(dotted)
            obj = getattr(module, name, None) if module is not None else None
            if obj is not None and _is_buildable(obj):
                yield dotted, obj

    def get(self, kind: str, name: str, source: str = "", key: str = ""):
        """The class or factory called ``name`` for ``kind``; ``ConfigError`` with close names."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(source, key, f"a {kind} class name must be a non-empty string, got {name!r}")
        for registered_name, obj in self._user[kind]:
            if registered_name is None:
                found = getattr(obj, name, None)
                if found is not None and _is_buildable(found):
                    return found
            elif registered_name == name:
                return obj
        found = self._pml_ext_candidate(kind, name)
        if found is not None:
            self._note_shadowing(kind, name, found)
            return found
        for _, obj in self._fallback_candidates(kind, name):
            return obj
        close = difflib.get_close_matches(name, self.known_names(kind), n=5, cutoff=0.6)
        by_case = [n for n in self.known_names(kind) if n.lower() == name.lower() and n not in close]
        hint = ", ".join(by_case + close)
        raise ConfigError(source, key, f"unknown {kind} '{name}'{_torchvision_note(kind)}. "
                                       + (f"Closest known names: {hint}" if hint else "No close known name."))

    def _note_shadowing(self, kind: str, name: str, found) -> None:
        for dotted, other in self._fallback_candidates(kind, name):
            if other is not found and not dotted.startswith("pml_ext"):
                note = (f"{name}: using pml_ext.{name}, which deliberately shadows {dotted}.{name} "
                        f"(same constructor and results; pml_ext's implementation)")
                if note not in self.notes:
                    self.notes.append(note)
                    LOGGER.info(note)
                return

    def known_names(self, kind: str) -> list[str]:
        """Every name ``kind`` can resolve right now (for suggestions and docs)."""
        import pml_ext

        names = set()
        for registered_name, obj in self._user[kind]:
            names.update(_public_names(obj) if registered_name is None else [registered_name])
        names.update(n for n in _public_names(pml_ext) if self._pml_ext_candidate(kind, n) is not None)
        for dotted in KINDS[kind][1]:
            module = _import(dotted)
            if module is not None:
                names.update(n for n in _public_names(module) if _is_buildable(getattr(module, n, None)))
        return sorted(names)

    # ---- building ---------------------------------------------------------------------------

    @staticmethod
    def parse_spec(spec: Any, source: str = "", key: str = "") -> tuple[str, dict]:
        """``{ClassName: kwargs-or-null}`` -> ``("ClassName", kwargs)``, or a ``ConfigError``."""
        if isinstance(spec, str):
            return spec, {}
        if not isinstance(spec, dict) or len(spec) != 1:
            shown = list(spec) if isinstance(spec, dict) else type(spec).__name__
            raise ConfigError(source, key, f"expected one {{ClassName: {{kwargs}}}} entry, got {shown}")
        (name, kwargs), = spec.items()
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise ConfigError(source, f"{key}.{name}" if key else str(name),
                              f"the kwargs must be a mapping or empty, got {type(kwargs).__name__}")
        return str(name), dict(kwargs)

    def build(self, kind: str, spec: Any, source: str = "", key: str = "", **injected) -> Any:
        """Instantiate ``spec`` as ``kind``; ``injected`` kwargs fill what the config does not give.

        Nested specs are built first. Constructor errors become ``ConfigError``s that name
        the source and key.
        """
        name, kwargs = self.parse_spec(spec, source, key)
        cls = self.get(kind, name, source, key)
        where = f"{key}.{name}" if key else name
        kwargs = {k: self.build_nested(k, v, source, f"{where}.{k}") for k, v in kwargs.items()}
        for k, v in injected.items():
            kwargs.setdefault(k, v)
        check_number_kwargs(cls, kwargs, source, where)  # else a string margin fails only in training
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError, AssertionError, KeyError) as exc:
            raise ConfigError(source, where, f"{name}(...) failed: {type(exc).__name__}: {exc}") from exc

    def build_nested(self, arg_name: str, value: Any, source: str, key: str) -> Any:
        """Build ``value`` when ``arg_name`` is a nested-object kwarg holding a spec; else return it."""
        kind = NESTED_KINDS.get(arg_name)
        if kind is None or value is None:
            return value
        if arg_name in ("losses", "miners", "reducers"):
            if isinstance(value, list):
                return [self._maybe_build(kind, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
            if isinstance(value, dict) and not self._looks_like_spec(kind, value):
                return {k: self._maybe_build(kind, v, source, f"{key}.{k}") for k, v in value.items()}
        return self._maybe_build(kind, value, source, key)

    def _looks_like_spec(self, kind: str, value: Any) -> bool:
        if not (isinstance(value, dict) and len(value) == 1):
            return False
        (name, kwargs), = value.items()
        if not (isinstance(name, str) and (kwargs is None or isinstance(kwargs, dict))):
            return False
        try:
            self.get(kind, name)
        except ConfigError:
            return False
        return True

    def _maybe_build(self, kind: str, value: Any, source: str, key: str) -> Any:
        if isinstance(value, dict):
            return self.build(kind, value, source, key)
        return value


default_registry = Registry()


def register(kind: str, obj: Any, name: str | None = None) -> None:
    """Register ``obj`` for configs run by ``pml-ext run`` in this process (see :class:`Registry`)."""
    default_registry.register(kind, obj, name)


def check_number_kwargs(cls, kwargs: dict, source: str, where: str) -> None:
    """A kwarg whose default is a number must be given a number (``margin: abc`` is an error here,
    naming the file and key, not a ``TypeError`` in the middle of training)."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return
    for name, value in kwargs.items():
        default = params[name].default if name in params else None
        is_number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if is_number and (isinstance(value, (str, bool)) or isinstance(value, (list, dict))):
            raise ConfigError(source, f"{where}.{name}", f"must be a number (default {default}), got {value!r}")
