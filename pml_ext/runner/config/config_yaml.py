"""One YAML config file -> dict, with errors that name the file, the line and the key.

Shared by :class:`ConfigReader` (the config folders) and :meth:`ExperimentConfig.load_saved`
(an experiment's saved ``configs/``).
"""
from __future__ import annotations

import re

import yaml

from .config_error import ConfigError

__all__ = ["load_yaml"]


def load_yaml(path: str) -> dict:
    """Parse one YAML file into a dict (empty file -> ``{}``); errors name file, line and key."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                                    f"{exc.start}); save the file as UTF-8") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        key = _enclosing_key(text, line) if line is not None else ""
        detail = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {line}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(path, key, f"bad YAML{at}: {detail}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(path, "", f"the file must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def _enclosing_key(text: str, line: int) -> str:
    """The last top-level key at or above 1-based ``line``: where a YAML error sits."""
    key = ""
    for raw in text.splitlines()[:line]:
        match = re.match(r"^([^\s#][^:]*):", raw)
        if match:
            key = match.group(1).strip()
    return key
