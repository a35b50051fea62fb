"""The one resolver of dotted paths (``"mining_funcs.tuple_miner"``, ``"miner.margin"``) into objects."""
from __future__ import annotations

from typing import Any

__all__ = ["resolve", "resolve_object"]


def _child(obj: Any, part: str) -> tuple[bool, Any]:
    """``(found, value)`` of ``part`` in ``obj``: a key of a dict, else an attribute."""
    if isinstance(obj, dict):
        return (part in obj, obj.get(part))
    if part and hasattr(obj, part):
        return True, getattr(obj, part)
    return False, None


def resolve_object(root: Any, path: str, arg: str) -> Any:
    """The object at ``path`` under ``root`` (dict keys and attributes, dot-separated).

    Raises ``ValueError`` naming ``arg`` and the first part that does not exist (with the
    known keys when that part was looked up in a dict).
    """
    obj = root
    parts = path.split(".")
    for i, part in enumerate(parts):
        found, value = _child(obj, part)
        if not found:
            where = type(obj).__name__ + ("" if i == 0 else f" (at '{'.'.join(parts[:i])}')")
            known = f"; known: {', '.join(sorted(map(str, obj)))}" if isinstance(obj, dict) else ""
            raise ValueError(f"{arg} '{path}' not found: {where} has no "
                             f"{'key' if isinstance(obj, dict) else 'attribute'} '{part}'{known}")
        obj = value
    return obj


def resolve(root: Any, path: str, arg: str = "attribute") -> tuple[Any, str]:
    """``(owner, last_name)`` of a dotted attribute ``path`` under ``root``, which must exist;
    ``getattr(owner, last_name)`` reads it and ``setattr`` writes it. ``ValueError`` naming ``arg``."""
    resolve_object(root, path, arg)  # raises, naming the whole path and its missing part
    head, _, last = path.rpartition(".")
    return (resolve_object(root, head, arg) if head else root), last
