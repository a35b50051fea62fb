"""Build a run's objects from a merged config: what PB's factories did, for PML 2.x.

Rules that go beyond "look the class up and pass the kwargs" (all documented in
docs/runner.md):

- **MLP sizes.** As in PB, an ``MLP``'s ``layer_sizes`` list its *output* sizes: the input
  size is prepended (the data's feature size for the trunk, the trunk's output size for
  the embedder).
- **Trunks** (torchvision architectures, ``bninception``) are built by :mod:`.trunks`:
  never downloaded, ``pretrained`` needs a local ``weights_path``, the last linear layer
  becomes ``Identity`` (PB).
- **Optimizers** are named ``<model or loss>_optimizer``; a ``scheduler: {StepLR: ...}``
  and ``clip_grad_norm`` inside the kwargs become PML's ``<name>_scheduler_by_epoch`` and
  ``<name>_grad_clipper``. An optimizer for an object without parameters is skipped
  with a log line (PB needed ``~DELETE~`` for that).
- **Samplers** get ``labels`` and ``length_before_new_iter`` (what PB's factory passed),
  plus any *required* constructor argument the config leaves out among ``batch_size``,
  ``miner`` (the tuple miner), ``seed`` and ``dataset``.
- **Controllers** name the object they steer by a path into the run
  (``module: mining_funcs.tuple_miner``); the path is resolved to the object itself. A
  ``measure`` that is not an attribute of that object may be a path to another object's
  attribute (``mining_funcs.tuple_miner.fraction_active`` for a controller of the sampler).
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from ...utils.dotted_path import resolve, resolve_object
from ..config.config_error import ConfigError
from ..config.experiment_config import ExperimentConfig
from .pb_models import LayerExtractor, ListOfModels, mlp_layer_sizes
from .registry import Registry
from .trunks import ToSpaceAndRange, build_trunk, input_convention, is_trunk_factory
from .vision import import_torchvision

__all__ = ["ObjectFactory"]

LOGGER = logging.getLogger("pml_ext.runner")


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

    def models(self, sample: torch.Tensor, num_classes: int | None = None,
               layers_to_extract: list | None = None) -> dict[str, torch.nn.Module]:
        """``{"trunk": ..., "embedder": ...}`` (plus any other named model) for input ``sample``
        (one batch ``[b, ...]`` of training data), sized by PB's rules (:mod:`.pb_models`).

        Args:
            num_classes: the training classes, appended to ``classifier*`` MLPs.
            layers_to_extract: cascaded embeddings: the trunk layers to read, one embedder each.
        """
        specs = self.mapping("models")
        if "trunk" not in specs:
            raise ConfigError(self.source("models"), "models.trunk", "required key is missing")
        trunk = self._model("trunk", specs["trunk"], sample)
        if layers_to_extract is not None:
            try:
                trunk = LayerExtractor(trunk, layers_to_extract)
            except ValueError as exc:
                raise ConfigError(self.source("layers_to_extract"), "layers_to_extract", str(exc)) from None
        models = {"trunk": trunk}
        outputs = {"trunk": _example_output(trunk, sample)}
        # the embedder first: a classifier's input size is the embedder's output size
        for role in sorted((r for r in specs if r != "trunk"), key=lambda r: r != "embedder"):
            source = outputs["embedder"] if role.startswith("classifier") and "embedder" in outputs \
                else outputs["trunk"]
            if role == "embedder" and layers_to_extract is not None:
                parts = torch.split(source, trunk.output_sizes, dim=1)
                models[role] = ListOfModels([self._model(role, specs[role], p, num_classes) for p in parts],
                                            trunk.output_sizes)
            else:
                models[role] = self._model(role, specs[role], source, num_classes)
            if role == "embedder":
                outputs[role] = _example_output(models[role], source)
        embedding_size = outputs.get("embedder", outputs["trunk"]).shape[1]
        self.embedding_sizes = [embedding_size // len(trunk.output_sizes)] * len(trunk.output_sizes) \
            if layers_to_extract is not None else [embedding_size]
        return models

    def _model(self, role: str, spec: Any, example_input: torch.Tensor,
               num_classes: int | None = None) -> torch.nn.Module:
        from ...models.mlp import MLP

        key = f"models.{role}"
        name, kwargs = self.registry.parse_spec(spec, self.source("models"), key)
        cls = self.registry.get("model", name, self.source("models"), key)
        if inspect.isclass(cls) and issubclass(cls, MLP):
            sizes = kwargs.get("layer_sizes")
            if not isinstance(sizes, (list, tuple)):
                raise ConfigError(self.source("models"), f"{key}.{name}.layer_sizes",
                                  "must be a list of output sizes, e.g. [128]")
            in_dim = int(example_input.reshape(example_input.shape[0], -1).shape[1])
            kwargs["layer_sizes"] = mlp_layer_sizes(role, sizes, in_dim, num_classes)
            model = self.registry.build("model", {name: kwargs}, self.source("models"), key)
            return torch.nn.Sequential(torch.nn.Flatten(), model) if example_input.dim() > 2 else model
        if is_trunk_factory(cls):
            return build_trunk(name, cls, kwargs, self.source("models"), f"{key}.{name}", is_trunk=role == "trunk")
        return self.registry.build("model", {name: kwargs}, self.source("models"), key)

    # ---- losses, miners, controllers ------------------------------------------------------

    def named_objects(self, key: str, kind: str, required: bool, offered: dict | None = None) -> dict[str, Any]:
        """Build every ``{name: {ClassName: kwargs}}`` entry of ``key`` as ``kind``.

        ``offered`` values (``num_classes``, ``embedding_size``) fill *required* constructor
        arguments the config leaves out, as PB's loss factory did.
        """
        out = {}
        for name, spec in self.mapping(key, required).items():
            cls_name, kwargs = self.registry.parse_spec(spec, self.source(key), f"{key}.{name}")
            cls = self.registry.get(kind, cls_name, self.source(key), f"{key}.{name}")
            out[name] = self.registry.build(kind, spec, self.source(key), f"{key}.{name}",
                                            **self.missing_required(cls, kwargs, offered or {}))
        return out

    @staticmethod
    def missing_required(cls: Any, kwargs: dict, available: dict) -> dict:
        """The ``available`` values for required arguments of ``cls`` that ``kwargs`` lacks."""
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return {}
        return {arg: available[arg] for arg, p in params.items()
                if p.default is p.empty and arg in available and arg not in kwargs and available[arg] is not None}

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
            if isinstance(kwargs.get("measure"), str):
                kwargs["measure"] = self.measure(kwargs["measure"], module, run_objects, self.source(top),
                                                 f"{where}.measure")
            controller = self.registry.build("controller", {cls_name: kwargs}, self.source(top), key)
            out[name] = (controller, module, attribute)
        return out

    @classmethod
    def measure(cls, path: str, module: Any, run_objects: dict[str, Any], source: str, key: str) -> Any:
        """A controller's ``measure``: kept as the name when it is an attribute of ``module``, else
        (``mining_funcs.tuple_miner.fraction_active``) a zero-argument callable reading that
        attribute of another run object at each call, named after it (for ``fraction`` inference)."""
        try:
            resolve(module, path, "measure")
            return path
        except ValueError:
            pass
        head, _, name = path.rpartition(".")
        if not head:
            raise ConfigError(source, key, f"'{path}' is neither an attribute of {type(module).__name__} nor a "
                                           f"path into the run such as mining_funcs.tuple_miner.fraction_active")
        owner = cls.resolve_path(head, run_objects, source, key)
        if not hasattr(owner, name):
            raise ConfigError(source, key, f"'{path}': {type(owner).__name__} at {head} has no attribute '{name}'")

        def read() -> Any:
            return getattr(owner, name)

        read.__name__ = read.__qualname__ = name
        return read

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
        available = {"batch_size": batch_size, "seed": seed, "dataset": dataset,
                     "miner": miners.get("tuple_miner", next(iter(miners.values()), None))}
        injected.update(self.missing_required(cls, kwargs, available))
        return self.registry.build("sampler", {name: kwargs}, source, "sampler", **injected)

    # ---- transforms -----------------------------------------------------------------------

    def image_transform(self, which: str):
        """torchvision ``Compose`` of ``transforms.<which>`` + ToTensor + the trunk's input
        convention (channel order, range, mean and std; see :func:`trunks.input_convention`)."""
        specs = (self.config.get("transforms") or {}).get(which) or {}
        T = import_torchvision().transforms
        steps = [self.registry.build("transform", {n: {k: _numbers(v) for k, v in (kw or {}).items()}},
                                     self.source("transforms"), f"transforms.{which}")
                 for n, kw in specs.items()]
        trunk = (self.config.get("models") or {}).get("trunk")
        convention = input_convention(next(iter(trunk)) if isinstance(trunk, dict) and len(trunk) == 1 else None)
        steps.append(T.ToTensor())
        if convention["input_space"] != "RGB" or max(convention["input_range"]) != 1:
            steps.append(ToSpaceAndRange(convention["input_space"], convention["input_range"]))
        return T.Compose(steps + [T.Normalize(mean=convention["mean"], std=convention["std"])])


def _example_output(model: torch.nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    """``model``'s output for ``example_input`` in eval mode, without gradients (for sizes)."""
    with torch.no_grad():
        model.eval()
        out = model(example_input)
        model.train()
    return out


class _GradClipper:
    def __init__(self, params, max_norm: float):
        self.params, self.max_norm = params, max_norm

    def __call__(self):
        return torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
