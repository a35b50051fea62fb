"""Bundled data sets (digits, rendered glyphs); names are imported on first use."""
from .._lazy import lazy_exports

_EXPORTS = {"Digits": "digits", "digits_split": "digits", "Glyphs": "glyphs", "glyphs_split": "glyphs"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
