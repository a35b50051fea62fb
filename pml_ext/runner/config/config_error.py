"""The one error type of the config runner: it always says where the problem is."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config that cannot be read, merged or built.

    The message starts with the file (or ``command line``) and the dotted key path, so a
    user with a dozen YAML files knows which line to fix::

        config_loss_and_miners/default.yaml: loss_funcs.metric_loss: unknown loss 'ContrastivLoss' ...

    Attributes:
        source: the file path or ``"command line"`` the offending value came from.
        key: the dotted key path inside that source (may be empty).
    """

    def __init__(self, source: str, key: str, message: str):
        self.source = str(source)
        self.key = str(key)
        where = f"{self.source}: {self.key}" if self.key else self.source
        super().__init__(f"{where}: {message}")
