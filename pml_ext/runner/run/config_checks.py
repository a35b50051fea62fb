"""Checks of a merged config that need no training: run before anything is written.

The main job checks every method's config before its first method trains; a Bayesian search
checks its config, and that its split manager makes the ``val`` split that chooses trials,
before it writes its folder. A single experiment runs the same checks at start-up.
"""
from __future__ import annotations

from ..config.config_error import ConfigError
from ..config.experiment_config import ExperimentConfig
from ..config.search_space import reject_search_keys

__all__ = ["check_config", "split_schemes"]

# top-level keys holding one {ClassName: kwargs} whose class a typo could misname
_NAMED_CLASSES = ("dataset", "split_manager", "trainer", "tester", "hook_container", "sampler")


def check_config(config: ExperimentConfig, registry=None) -> dict:
    """Check the general keys, the required keys and the top-level class names of ``config``
    (no search range left); returns the general keys with defaults."""
    from .experiment_runner import REQUIRED_KEYS, ExperimentRunner
    from ..objects.registry import default_registry

    registry = registry or default_registry
    reject_search_keys(config)
    general = ExperimentRunner.general(config)
    for key, category in REQUIRED_KEYS.items():
        config.require(key, category)
    for key in _NAMED_CLASSES:
        if config.get(key) is not None:
            name, _ = registry.parse_spec(config.get(key), config.source_of(key), key)
            registry.get(key, name, config.source_of(key), key)
    return general


def split_schemes(registry, config: ExperimentConfig, train_data) -> tuple[object, dict]:
    """``(split manager, {scheme: {split: indices}})``; a split the data set cannot make is a
    ``ConfigError`` naming the split manager's file and key (``num_training_partitions=10
    exceeds the 5 trainval classes`` of a small data set)."""
    spec = config.require("split_manager", "config_dataset")
    source = config.source_of("split_manager")
    manager = registry.build("split_manager", spec, source, "split_manager")
    try:
        return manager, manager.split_schemes(train_data)
    except ConfigError:
        raise
    except ValueError as exc:
        name, _ = registry.parse_spec(spec, source, "split_manager")
        raise ConfigError(source, f"split_manager.{name}",
                          f"{exc} of the data set {type(train_data).__name__}") from exc
