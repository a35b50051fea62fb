"""Build a run's objects from a merged config: what PB's factories did, for PML 2.x.

Rules that go beyond "look the class up and pass the kwargs" (all documented in
docs/runner.md):

- **MLP sizes.** As in PB, an ``MLP``'s ``layer_sizes`` list its *output* sizes: the input
  size is prepended (the data's feature size for the trunk, the trunk's output size for
  the embedder).
- **torchvision models** (when installed) are built without downloading: ``pretrained``
  needs a local ``weights_path``; the trunk's last linear layer becomes ``Identity`` (PB).
- **Optimizers** are named ``<model or loss>_optimizer``; a ``scheduler: {StepLR: ...}``
  and ``clip_grad_norm`` inside the kwargs become PML's ``<name>_scheduler_by_epoch`` and
  ``<name>_grad_clipper``. An optimizer for an object without parameters is skipped
  with a log line (PB needed ``~DELETE~`` for that).
- **Samplers** get ``labels`` and ``length_before_new_iter`` (what PB's factory passed),
  plus any *required* constructor argument the config leaves out among ``batch_size``,
  ``miner`` (the tuple miner), ``seed`` and ``dataset``.
- **Controllers** name the object they steer by a path into the run
  (``module: mining_funcs.tuple_miner``); the path is resolved to the object itself.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from ..utils.dotted_path import resolve, resolve_object
from .config_error import ConfigError
from .experiment_config import ExperimentConfig
from .registry import Registry

__all__ = ["ObjectFactory"]

LOGGER = logging.getLogger("pml_ext.runner")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _numbers(value: Any) -> Any:
    """PB writes tuples as strings: ``"0.16 1"`` -> ``[0.16, 1]``; other values pass through."""
    if not isinstance(value, str):
        return value
    parts = value.split()
    try:
        converted = [int(p) if p.lstrip("-").isdigit() else float(p) for p in parts]
    except ValueError:
        return value
    return converted[0] if len(converted) == 1 else converted


class ObjectFactory:
    """Builds models, losses, miners, optimizers, samplers, transforms and controllers.

    Args:
        config: the merged config.
        registry: resolves class names.
    """

    def __init__(self, config: ExperimentConfig, registry: Registry):
        self.config = config
        self.registry = registry

    @staticmethod
    def accepts(cls: Any, name: str) -> bool:
        """Whether calling ``cls`` takes a keyword argument ``name``."""
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return False
        return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())

    def source(self, key: str) -> str:
        return self.config.source_of(key)

    def mapping(self, key: str, required: bool = True) -> dict:
        """A top-level ``{name: spec}`` mapping (``models``, ``loss_funcs``, ...)."""
        value = self.config.require(key) if required else self.config.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(self.source(key), key, f"must be a mapping of names to {{ClassName: kwargs}}, "
                                                     f"got {type(value).__name__}")
        return value

    # ---- models ---------------------------------------------------------------------------

    def models(self, sample: torch.Tensor) -> dict[str, torch.nn.Module]:
        """``{"trunk": ..., "embedder": ...}`` (plus any other named model) for input ``sample``
        (one batch ``[b, ...]`` of training data)."""
        specs = self.mapping("models")
        if "trunk" not in specs:
            raise ConfigError(self.source("models"), "models.trunk", "required key is missing")
        models = {"trunk": self._model("trunk", specs["trunk"], sample)}
        with torch.no_grad():
            models["trunk"].eval()
            trunk_out = models["trunk"](sample)
            models["trunk"].train()
        for role, spec in specs.items():
            if role != "trunk":
                models[role] = self._model(role, spec, trunk_out)
        return models

    def _model(self, role: str, spec: Any, example_input: torch.Tensor) -> torch.nn.Module:
        from ..models.mlp import MLP

        key = f"models.{role}"
        name, kwargs = self.registry.parse_spec(spec, self.source("models"), key)
        cls = self.registry.get("model", name, self.source("models"), key)
        if inspect.isclass(cls) and issubclass(cls, MLP):
            sizes = kwargs.get("layer_sizes")
            if not isinstance(sizes, (list, tuple)):
                raise ConfigError(self.source("models"), f"{key}.{name}.layer_sizes",
                                  "must be a list of output sizes, e.g. [128]")
            in_dim = int(example_input.reshape(example_input.shape[0], -1).shape[1])
            kwargs["layer_sizes"] = [in_dim] + [int(s) for s in sizes]
            model = self.registry.build("model", {name: kwargs}, self.source("models"), key)
            return torch.nn.Sequential(torch.nn.Flatten(), model) if example_input.dim() > 2 else model
        if getattr(cls, "__module__", "").startswith("torchvision"):
            return self._torchvision_model(role, name, cls, kwargs)
        return self.registry.build("model", {name: kwargs}, self.source("models"), key)

    def _torchvision_model(self, role: str, name: str, fn, kwargs: dict) -> torch.nn.Module:
        key = f"models.{role}.{name}"
        pretrained = kwargs.pop("pretrained", None)
        weights_path = kwargs.pop("weights_path", None)
        kwargs.pop("weights", None)
        if pretrained and not weights_path:
            raise ConfigError(self.source("models"), key, "pretrained weights are only loaded from a local file "
                                                          "(pml_ext never downloads): give weights_path")
        model = fn(weights=None, **kwargs)
        if weights_path:
            model.load_state_dict(torch.load(weights_path, map_location="cpu"))
        if role == "trunk":
            for attr in ("fc", "last_linear", "classifier"):
                if hasattr(model, attr):
                    setattr(model, attr, torch.nn.Identity())
                    break
        return model

    # ---- losses, miners, controllers ------------------------------------------------------

    def named_objects(self, key: str, kind: str, required: bool) -> dict[str, Any]:
        """Build every ``{name: {ClassName: kwargs}}`` entry of ``key`` as ``kind``."""
        return {name: self.registry.build(kind, spec, self.source(key), f"{key}.{name}")
                for name, spec in self.mapping(key, required).items()}

    def controllers(self, run_objects: dict[str, Any]) -> dict[str, tuple[Any, Any, str]]:
        """``{name: (controller, module, attribute)}`` from ``controllers:`` (or one ``controller:``)."""
        entries = [(name, "controllers", f"controllers.{name}", spec)
                   for name, spec in self.mapping("controllers", required=False).items()]
        if self.config.get("controller"):
            entries.append(("controller", "controller", "controller", self.config.get("controller")))
        out = {}
        for name, top, key, spec in entries:
            cls_name, kwargs = self.registry.parse_spec(spec, self.source(top), key)
            where = f"{key}.{cls_name}"
            path, attribute = kwargs.get("module"), kwargs.get("attribute")
            if not isinstance(path, str) or not isinstance(attribute, str):
                raise ConfigError(self.source(top), where, "a controller needs module: <path such as "
                                                           "mining_funcs.tuple_miner> and attribute: <name>")
            module = self.resolve_path(path, run_objects, self.source(top), f"{where}.module")
            try:
                resolve(module, attribute, f"{type(module).__name__} at {path}: attribute")
            except ValueError as exc:
                raise ConfigError(self.source(top), f"{where}.attribute", str(exc)) from None
            kwargs["module"] = module
            controller = self.registry.build("controller", {cls_name: kwargs}, self.source(top), key)
            out[name] = (controller, module, attribute)
        return out

    @staticmethod
    def resolve_path(path: str, run_objects: dict[str, Any], source: str, key: str) -> Any:
        """``"mining_funcs.tuple_miner.distance"`` -> that object of the run."""
        try:
            return resolve_object(run_objects, path, "path")
        except ValueError as exc:
            raise ConfigError(source, key, f"{exc} (a path into the run: {', '.join(sorted(run_objects))})") from None

    # ---- optimizers -----------------------------------------------------------------------

    def optimizers(self, trainables: dict[str, torch.nn.Module]) -> tuple[dict, dict, dict]:
        """``(optimizers, lr_schedulers, gradient_clippers)`` as PML's trainers name them."""
        optimizers, schedulers, clippers = {}, {}, {}
        source = self.source("optimizers")
        for opt_name, spec in self.mapping("optimizers").items():
            key = f"optimizers.{opt_name}"
            if not opt_name.endswith("_optimizer"):
                raise ConfigError(source, key, "optimizer names must be <model or loss name>_optimizer")
            target = opt_name[: -len("_optimizer")]
            if target not in trainables:
                raise ConfigError(source, key, f"'{target}' is not a model or loss of this run "
                                               f"(known: {', '.join(sorted(trainables))})")
            params = [p for p in trainables[target].parameters() if p.requires_grad]
            if not params:
                LOGGER.info("%s: %s has no trainable parameters; no optimizer built", key, target)
                continue
            name, kwargs = self.registry.parse_spec(spec, source, key)
            scheduler_spec = kwargs.pop("scheduler", None)
            clip = kwargs.pop("clip_grad_norm", None)
            optimizer = self.registry.build("optimizer", {name: kwargs}, source, key, params=params)
            optimizers[opt_name] = optimizer
            if scheduler_spec:
                schedulers[f"{target}_scheduler_by_epoch"] = self.registry.build(
                    "lr_scheduler", scheduler_spec, source, f"{key}.{name}.scheduler", optimizer=optimizer)
            if clip:
                clippers[f"{target}_grad_clipper"] = _GradClipper(params, float(clip))
        return optimizers, schedulers, clippers

    # ---- sampler --------------------------------------------------------------------------

    def sampler(self, labels: torch.Tensor, dataset, batch_size: int, miners: dict, seed: int):
        """The training sampler, or ``None`` when the config gives none."""
        spec = self.config.get("sampler")
        if not spec:
            return None
        source = self.source("sampler")
        name, kwargs = self.registry.parse_spec(spec, source, "sampler")
        cls = self.registry.get("sampler", name, source, "sampler")
        injected = {}
        for arg, value in (("labels", labels), ("length_before_new_iter", len(labels))):
            if self.accepts(cls, arg):
                injected[arg] = value
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            params = {}
        available = {"batch_size": batch_size, "seed": seed, "dataset": dataset,
                     "miner": miners.get("tuple_miner", next(iter(miners.values()), None))}
        for arg, p in params.items():
            if p.default is p.empty and arg in available and arg not in kwargs and available[arg] is not None:
                injected[arg] = available[arg]
        return self.registry.build("sampler", {name: kwargs}, source, "sampler", **injected)

    # ---- transforms -----------------------------------------------------------------------

    def image_transform(self, which: str):
        """torchvision ``Compose`` of ``transforms.<which>`` + ToTensor + ImageNet Normalize."""
        specs = (self.config.get("transforms") or {}).get(which) or {}
        try:
            import torchvision.transforms as T
        except ImportError:
            raise ConfigError(self.source("dataset"), "dataset", "image data sets need torchvision for their "
                                                                 "transforms: pip install torchvision") from None
        steps = [self.registry.build("transform", {n: {k: _numbers(v) for k, v in (kw or {}).items()}},
                                     self.source("transforms"), f"transforms.{which}")
                 for n, kw in specs.items()]
        return T.Compose(steps + [T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


class _GradClipper:
    def __init__(self, params, max_norm: float):
        self.params, self.max_norm = params, max_norm

    def __call__(self):
        return torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
