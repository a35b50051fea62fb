"""The two interfaces the runner talks to, as ``typing.Protocol``s (structural: any class with
these methods takes part, no base class needed)."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["EpochUpdatable", "Controller"]


@runtime_checkable
class EpochUpdatable(Protocol):
    """Updated each epoch with the whole training set (``SmartMiner``, ``SmartBatchSampler``,
    ``HardNeighborSampler``).

    ``update(embeddings: Tensor[N, d], labels: LongTensor[N])``: the training set embedded with
    the current model, in dataset order, at the end of every epoch (before the next one draws).
    """

    def update(self, embeddings: Any, labels: Any, /) -> Any: ...


@runtime_checkable
class Controller(Protocol):
    """Steers a setting between epochs (``AdaptiveController``): ``observe()`` after every
    iteration, ``step()`` at the end of every epoch, before the epoch updates."""

    def observe(self) -> Any: ...

    def step(self) -> Any: ...
