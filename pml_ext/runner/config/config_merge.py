"""powerful-benchmarker's merge semantics for nested config dicts, with its key flags.

PB (and its helper package easy-module-attribute-getter) merges the YAML files of a
category in order, then the command line on top. Plain keys merge recursively; a key may
carry a flag that changes how its value lands:

=====================  ==================================================================
``key~OVERRIDE~: v``   replace ``key`` whole instead of merging into it
``key~DELETE~: any``   remove ``key`` (a no-op when it is absent, as in PB)
``key~APPLY~N: {..}``  merge ``{..}`` into every dict at depth N below ``key``; ``key``'s
                       own dict is depth 1, so ``trainer~APPLY~2 {batch_size: 256}``
                       reaches the kwargs of whatever trainer class is configured
``key~SWAP~N: {..}``   rename keys of the dicts at depth N: ``{Old: New}`` renames ``Old``;
                       ``{New: null}`` (or ``{New: {kwargs}}``) renames the *only* key there
                       and keeps its value (merging the kwargs into it)
=====================  ==================================================================

``~BAYESIAN~``, ``~LOG_BAYESIAN~`` and ``~INT_BAYESIAN~`` keys mark PB's hyper-parameter
search ranges (``lr~LOG_BAYESIAN~: [0.000001, 1]``); they merge as plain keys and
:mod:`.bayesian_search` replaces each with a value per trial.

A ``None`` at the depth that ``~APPLY~`` targets counts as an empty dict, because PB writes
"a class with default kwargs" as ``ContrastiveLoss:`` (``None``).
"""
from __future__ import annotations

import copy
import re
from typing import Any

from .config_error import ConfigError

__all__ = ["OPTION_WORD", "merge_configs", "split_flag", "strip_flags"]

_FLAG = re.compile(r"^(?P<name>.*?)~(?P<flag>[A-Z_]+)~(?P<arg>\d*)$")
_SEARCH_FLAGS = {"BAYESIAN", "LOG_BAYESIAN", "INT_BAYESIAN", "CHOICE"}
_NO_ARG_FLAGS = {"OVERRIDE", "DELETE"}
_DEPTH_FLAGS = {"APPLY", "SWAP"}
# A command-line word that starts a key (``--trainer~APPLY~2``); the words after it are its
# value, and ``-1`` or ``--`` alone are values.
OPTION_WORD = re.compile(r"^--[A-Za-z]")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def split_flag(key: Any, source: str = "", path: str = "") -> tuple[Any, str | None, int | None]:
    """``"trainer~APPLY~2"`` -> ``("trainer", "APPLY", 2)``; plain keys -> ``(key, None, None)``."""
    if not isinstance(key, str):
        return key, None, None
    match = _FLAG.match(key)
    if match is None:
        return key, None, None
    name, flag, arg = match.group("name"), match.group("flag"), match.group("arg")
    where = _join(path, key)
    if flag in _SEARCH_FLAGS:
        return key, None, None  # kept verbatim: the Bayesian search (bayesian_search.py) reads it
    if flag in _NO_ARG_FLAGS:
        if arg:
            raise ConfigError(source, where, f"~{flag}~ takes no depth")
        return name, flag, None
    if flag in _DEPTH_FLAGS:
        if not arg or int(arg) < 1:
            raise ConfigError(source, where, f"~{flag}~ needs a depth >= 1, e.g. {name}~{flag}~2")
        return name, flag, int(arg)
    raise ConfigError(source, where, f"unknown flag ~{flag}~ (known: OVERRIDE, DELETE, APPLY, SWAP)")


def strip_flags(value: Any, source: str = "", path: str = "") -> Any:
    """A copy of ``value`` with every flag resolved against an empty base."""
    if isinstance(value, dict):
        return merge_configs({}, value, source, path)
    return copy.deepcopy(value)


def merge_configs(base: dict, update: dict, source: str = "", path: str = "") -> dict:
    """Merge ``update`` into a copy of ``base`` with PB's semantics (see the module docstring).

    ``source`` (a file path or ``"command line"``) and ``path`` (the dotted key path of
    ``base``) only serve the error messages. Neither input is modified.
    """
    if not isinstance(update, dict):
        raise ConfigError(source, path, f"expected a mapping, got {type(update).__name__}")
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in update.items():
        name, flag, depth = split_flag(key, source, path)
        where = _join(path, key)
        if flag is None:
            if isinstance(out.get(name), dict) and isinstance(value, dict):
                out[name] = merge_configs(out[name], value, source, _join(path, name))
            else:
                out[name] = strip_flags(value, source, _join(path, name))
        elif flag == "OVERRIDE":
            out[name] = strip_flags(value, source, _join(path, name))
        elif flag == "DELETE":
            out.pop(name, None)
        else:
            if not isinstance(out.get(name), dict):
                raise ConfigError(
                    source, where,
                    f"~{flag}~ needs an existing mapping '{name}' to act on, but an earlier file "
                    f"does not define it (got {type(out.get(name)).__name__})",
                )
            if not isinstance(value, dict):
                raise ConfigError(source, where, f"~{flag}~ needs a mapping, got {type(value).__name__}")
            if flag == "APPLY":
                out[name] = _apply(out[name], value, depth, source, where)
            else:
                out[name] = _swap(out[name], value, depth, source, where)
    return out


def _apply(target: dict, value: dict, depth: int, source: str, where: str) -> dict:
    count = [0]

    def visit(node, level: int, path: str):
        if level == depth:
            count[0] += 1
            return merge_configs(node or {}, value, source, path)
        if not isinstance(node, dict):
            return node
        return {k: visit(v, level + 1, _join(path, k)) if isinstance(v, dict) or (v is None and level + 1 == depth)
                else v for k, v in node.items()}

    result = visit(target, 1, where)
    if count[0] == 0:
        raise ConfigError(source, where, f"there is no mapping at depth {depth} to apply to")
    return result


def _swap(target: dict, value: dict, depth: int, source: str, where: str) -> dict:
    rename_map = all(isinstance(v, str) for v in value.values())
    if not rename_map and len(value) != 1:
        raise ConfigError(source, where, "~SWAP~ takes either {Old: New, ...} (class names as strings) "
                                         "or a single {New: kwargs-or-null}")
    count = [0]

    def rename(node: dict, path: str) -> dict:
        if rename_map:
            hits = [k for k in node if k in value]
            count[0] += len(hits)
            return {value.get(k, k): v for k, v in node.items()}
        if len(node) != 1:
            raise ConfigError(source, path, f"~SWAP~ with a single new key is ambiguous here: the keys are "
                                            f"{list(node)}; write {{Old: New}} instead")
        (old, kept), = node.items()
        (new, extra), = value.items()
        count[0] += 1
        if isinstance(extra, dict) and extra:
            kept = merge_configs(kept or {}, extra, source, _join(path, str(new)))
        return {new: kept}

    def visit(node, level: int, path: str):
        if not isinstance(node, dict):
            return node
        if level == depth:
            return rename(node, path)
        return {k: visit(v, level + 1, _join(path, k)) for k, v in node.items()}

    result = visit(target, 1, where)
    if count[0] == 0:
        raise ConfigError(source, where, f"none of the keys {list(value)} was found at depth {depth}")
    return result
