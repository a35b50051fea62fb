"""A merged powerful-benchmarker config: one dict per category, and the files behind each."""
from __future__ import annotations

import os
from typing import Any

import yaml

from .config_error import ConfigError
from .config_yaml import load_yaml

__all__ = ["ExperimentConfig"]

_ORDER_FILE = "categories.yaml"


class ExperimentConfig:
    """The result of :class:`ConfigReader.read`.

    Args:
        categories: ``{category: merged dict}`` in merge order, e.g. ``{"config_general": {...}}``.
        sources: ``{category: [file paths..., "command line"]}`` that produced each dict.

    ``config["trainer"]`` looks a top-level key up across categories; when two categories
    define the same top-level key, the later one wins, as in PB.
    """

    def __init__(self, categories: dict[str, dict], sources: dict[str, list[str]]):
        self.categories = {k: dict(v) for k, v in categories.items()}
        self.sources = {k: list(sources.get(k, [])) for k in self.categories}

    @property
    def flat(self) -> dict:
        out: dict = {}
        for values in self.categories.values():
            out.update(values)
        return out

    def category_of(self, key: str) -> str | None:
        """The category whose value of top-level ``key`` is the effective one."""
        found = None
        for category, values in self.categories.items():
            if key in values:
                found = category
        return found

    def source_of(self, key: str) -> str:
        """Where ``key`` comes from, for error messages: ``"config_general (a.yaml, b.yaml)"``."""
        category = self.category_of(key)
        if category is None:
            listed = ", ".join(self.categories) or "no categories"
            return f"the config ({listed})"
        files = ", ".join(self.sources.get(category, [])) or "no file"
        return f"{category} ({files})"

    def __contains__(self, key: str) -> bool:
        return self.category_of(key) is not None

    def __getitem__(self, key: str) -> Any:
        return self.require(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self.flat.get(key, default)

    def require(self, key: str, category: str | None = None) -> Any:
        """The value of ``key``; a ``ConfigError`` naming the files that should define it."""
        flat = self.flat
        if key in flat:
            return flat[key]
        if category is not None and category in self.categories:
            where = f"{category} ({', '.join(self.sources.get(category, [])) or 'no file'})"
        else:
            where = f"the config ({', '.join(f'{c}: {s}' for c, s in self.sources.items()) or 'empty'})"
        raise ConfigError(where, key, "required key is missing")

    def save(self, folder: str) -> None:
        """Write one ``<category>.yaml`` per category (PB's experiment ``configs/`` folder)."""
        os.makedirs(folder, exist_ok=True)
        for category, values in self.categories.items():
            with open(os.path.join(folder, f"{category}.yaml"), "w") as f:
                yaml.safe_dump(values, f, default_flow_style=False, sort_keys=False)
        with open(os.path.join(folder, _ORDER_FILE), "w") as f:
            yaml.safe_dump({"categories": list(self.categories)}, f)

    @classmethod
    def load_saved(cls, folder: str) -> "ExperimentConfig":
        """Read back what :meth:`save` wrote (used by ``--resume_training``)."""
        order_path = os.path.join(folder, _ORDER_FILE)
        if not os.path.isfile(order_path):
            raise ConfigError(folder, "", "no saved config here: this experiment was never started "
                                          "(nothing to resume)")
        order = load_yaml(order_path).get("categories", [])
        categories, sources = {}, {}
        for category in order:
            path = os.path.join(folder, f"{category}.yaml")
            categories[category] = load_yaml(path)
            sources[category] = [path]
        return cls(categories, sources)
