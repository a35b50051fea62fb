"""Read a powerful-benchmarker config folder: categories, files merged in order, overrides."""
from __future__ import annotations

import os
from typing import Iterable, Mapping

from .config_error import ConfigError
from .config_merge import merge_configs, split_flag
from .config_yaml import load_yaml
from .experiment_config import ExperimentConfig

__all__ = ["ConfigReader"]

BUNDLED_CONFIG_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                     "configs")
COMMAND_LINE = "command line"


class ConfigReader:
    """Read PB's ``configs/`` layout.

    ``root_config_folder`` holds one folder per category (``config_general``,
    ``config_models``, ``config_optimizers``, ``config_loss_and_miners``,
    ``config_transforms``, ``config_eval``, ``config_dataset``, ``config_factories``) of
    ``<name>.yaml`` files, and optionally ``config_foldernames.yaml`` that lists the
    categories and the default file names of each (PB's file). Without that file, every
    ``config_*`` folder is a category and ``default`` its default.

    Args:
        root_config_folder: the folder; ``None`` means pml_ext's bundled configs
            (digits, a small MLP, settings that finish fast).
    """

    def __init__(self, root_config_folder: str | None = None):
        self.root_config_folder = os.path.abspath(root_config_folder or BUNDLED_CONFIG_FOLDER)
        if not os.path.isdir(self.root_config_folder):
            raise ConfigError(self.root_config_folder, "", "root_config_folder does not exist")
        self.categories, self.default_names = self._read_foldernames()

    def _read_foldernames(self) -> tuple[list[str], dict[str, list[str]]]:
        path = os.path.join(self.root_config_folder, "config_foldernames.yaml")
        if os.path.isfile(path):
            listing = self.load_yaml(path)
            categories = listing.get("config_foldernames")
            if not isinstance(categories, list) or not categories:
                raise ConfigError(path, "config_foldernames", "must be a non-empty list of category folders")
            defaults = {}
            for c in categories:
                names = listing.get(c, ["default"])
                defaults[c] = [names] if isinstance(names, str) else list(names)
            return [str(c) for c in categories], defaults
        categories = sorted(d for d in os.listdir(self.root_config_folder)
                            if d.startswith("config_") and os.path.isdir(os.path.join(self.root_config_folder, d)))
        if not categories:
            raise ConfigError(self.root_config_folder, "", "no config_* category folders here")
        return categories, {c: ["default"] for c in categories}

    # One YAML file -> dict, errors naming file, line and key (also used to read saved configs).
    load_yaml = staticmethod(load_yaml)

    def files_for(self, category: str, names: Iterable[str]) -> list[str]:
        """The paths of ``names`` in ``category``; an unknown name lists the available ones."""
        folder = os.path.join(self.root_config_folder, category)
        paths = []
        for name in names:
            path = os.path.join(folder, f"{name}.yaml")
            if not os.path.isfile(path):
                available = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) \
                    if os.path.isdir(folder) else []
                raise ConfigError(path, "", f"no config '{name}' in {category}; available: "
                                            f"{', '.join(available) or 'none (the folder is missing)'}")
            paths.append(path)
        return paths

    def read(self, selection: Mapping[str, Iterable[str] | str] | None = None,
             overrides: Mapping | Iterable | None = None) -> ExperimentConfig:
        """Merge each category's files in order, then the command-line ``overrides``.

        Args:
            selection: ``{category: [names]}``, e.g. ``{"config_general": ["default",
                "with_256_batch"]}``; unlisted categories use their defaults.
            overrides: ``{key: value}`` from ``--key <yaml>``, flags allowed
                (``{"trainer~APPLY~2": {"batch_size": 256}}``). Each lands in the category
                that defines its key (``config_general`` when none does).
        """
        selection = dict(selection or {})
        unknown = sorted(set(selection) - set(self.categories))
        if unknown:
            raise ConfigError(self.root_config_folder, unknown[0],
                              f"unknown config category; the categories are {', '.join(self.categories)}")
        categories, sources = {}, {}
        for category in self.categories:
            names = selection.get(category, self.default_names.get(category, ["default"]))
            names = [names] if isinstance(names, str) else list(names)
            merged: dict = {}
            paths = self.files_for(category, names)
            for path in paths:
                merged = merge_configs(merged, self.load_yaml(path), source=path)
            categories[category], sources[category] = merged, paths
        config = ExperimentConfig(categories, sources)
        return self.apply_overrides(config, overrides)

    @staticmethod
    def apply_overrides(config: ExperimentConfig, overrides: Mapping | Iterable | None) -> ExperimentConfig:
        """``config`` with command-line ``overrides`` (a mapping or ``(key, value)`` pairs, applied
        in order) merged into the categories that own their keys."""
        if not overrides:
            return config
        categories = {k: dict(v) for k, v in config.categories.items()}
        sources = {k: list(v) for k, v in config.sources.items()}
        for key, value in (overrides.items() if hasattr(overrides, "items") else overrides):
            name, _, _ = split_flag(key, COMMAND_LINE, f"--{key}")
            category = config.category_of(name) or ("config_general" if "config_general" in categories
                                                    else next(iter(categories), "config_general"))
            categories.setdefault(category, {})
            categories[category] = merge_configs(categories[category], {key: value}, source=COMMAND_LINE)
            if COMMAND_LINE not in sources.setdefault(category, []):
                sources[category].append(COMMAND_LINE)
        return ExperimentConfig(categories, sources)

