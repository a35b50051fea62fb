"""Checks of a merged config that need no training: run before anything is written.

The main job checks every method's config before its first method trains; a Bayesian search
checks its config, and that its split manager makes the ``val`` split that chooses trials,
before it writes its folder. A single experiment runs the same checks at start-up.
"""
from __future__ import annotations

from ..config.config_error import ConfigError
from ..config.experiment_config import ExperimentConfig
from ..config.search_space import reject_search_keys
from ..state.run_guard import check_device, check_timeout
from .bank_source import check_bank_settings

__all__ = ["GENERAL_DEFAULTS", "REQUIRED_KEYS", "check_config", "general_settings", "split_schemes"]

GENERAL_DEFAULTS = {
    "num_epochs_train": 1000,
    "save_interval": 2,
    "patience": 9,
    "check_untrained_accuracy": True,
    "skip_eval_if_already_done": True,
    "log_data_to_tensorboard": True,
    "save_lists_in_db": False,
    "seed": 0,
    "device": None,
    "distributed_timeout_seconds": 300,
    "distributed_eval_timeout_seconds": 86400,
    "num_threads": None,
    "splits_to_eval": ["val"],
    "embedding_bank": None,  # absent: the epoch updates embed the training set afresh (bank_source)
}
# required top-level keys and the category that should define each
REQUIRED_KEYS = {"trainer": "config_general", "models": "config_models", "optimizers": "config_optimizers",
                 "loss_funcs": "config_loss_and_miners", "tester": "config_eval", "dataset": "config_dataset",
                 "split_manager": "config_dataset"}

# top-level keys holding one {ClassName: kwargs} whose class a typo could misname
_NAMED_CLASSES = ("dataset", "split_manager", "trainer", "tester", "hook_container", "sampler")


def check_config(config: ExperimentConfig, registry=None) -> dict:
    """Check the general keys, the required keys and the top-level class names of ``config``
    (no search range left); returns the general keys with defaults."""
    from ..objects.registry import default_registry

    registry = registry or default_registry
    reject_search_keys(config)
    general = general_settings(config)
    for key, category in REQUIRED_KEYS.items():
        config.require(key, category)
    for key in _NAMED_CLASSES:
        if config.get(key) is not None:
            name, _ = registry.parse_spec(config.get(key), config.source_of(key), key)
            registry.get(key, name, config.source_of(key), key)
    return general


def general_settings(config: ExperimentConfig) -> dict:
    """PB's general keys with defaults, type-checked (errors name the key and its file)."""
    out = {k: config.get(k, v) for k, v in GENERAL_DEFAULTS.items()}
    for key in ("num_epochs_train", "save_interval"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ConfigError(config.source_of(key), key, f"must be an integer >= 1, got {out[key]!r}")
    if out["patience"] is not None and (not isinstance(out["patience"], int) or out["patience"] < 0):
        raise ConfigError(config.source_of("patience"), "patience", f"must be null or an integer >= 0, "
                                                                   f"got {out['patience']!r}")
    if out["num_threads"] is not None and (not isinstance(out["num_threads"], int) or out["num_threads"] < 1):
        raise ConfigError(config.source_of("num_threads"), "num_threads",
                          f"must be null or an integer >= 1, got {out['num_threads']!r}")
    if not isinstance(out["seed"], int):
        raise ConfigError(config.source_of("seed"), "seed", f"must be an integer, got {out['seed']!r}")
    out["device"] = check_device(out["device"], config.source_of("device"))
    for key in ("distributed_timeout_seconds", "distributed_eval_timeout_seconds"):
        out[key] = check_timeout(out[key], config.source_of(key), key)
    if not isinstance(out["splits_to_eval"], list) or not out["splits_to_eval"]:
        raise ConfigError(config.source_of("splits_to_eval"), "splits_to_eval",
                          "must be a non-empty list of split names")
    out["embedding_bank"] = check_bank_settings(out["embedding_bank"], config.source_of("embedding_bank"))
    return out


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
