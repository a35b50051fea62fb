"""The run's per-iteration and per-epoch calls to objects that look beyond the batch.

Two protocols (``pml_ext.utils.protocols``), structural, so that any class following them
joins in without the runner knowing it:

- ``EpochUpdatable``: a miner or sampler with ``update(embeddings, labels)`` (``SmartMiner``,
  ``SmartBatchSampler``, ``HardNeighborSampler``, ``ClassHardBatchSampler``) gets the
  embeddings of the whole training set at the end of each epoch: recomputed, or taken from
  the training passes when the run keeps an embedding bank (``bank_source``). Miners are updated before samplers, because a
  sampler may draw on a miner's triplets; a miner that a sampler holds as its ``miner``
  attribute is left to that sampler (``SmartBatchSampler.update`` runs its miner's update
  itself, and skips it during warm-up).
- ``Controller``: an object with ``observe()`` (called after every iteration) and ``step()``
  (called at the end of every epoch, before the updates), e.g. ``AdaptiveController``. The
  setting it steers (``module.attribute``) is recorded per epoch and saved with the models
  (``run_state``), so a resumed run continues with the same setting.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ...utils.dotted_path import resolve
from ...utils.protocols import EpochUpdatable
from ..state.run_state import ControllerState

_ControllerState = ControllerState  # its old name

__all__ = ["EpochUpdater", "resolve_attribute", "unwrap"]

LOGGER = logging.getLogger("pml_ext.runner")


def unwrap(obj: Any) -> Any:
    """The object inside PML's distributed wrappers and pml_ext's shard sampler."""
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

    from ...samplers.distributed_shard_sampler import DistributedShardSampler

    if isinstance(obj, DistributedMinerWrapper):
        return obj.miner
    if isinstance(obj, DistributedLossWrapper):
        return obj.loss
    if isinstance(obj, DistributedShardSampler) or getattr(obj, "wraps_sampler", False):
        return unwrap(obj.sampler)
    return obj


def resolve_attribute(module: Any, attribute: str) -> tuple[Any, str]:
    """``(owner, name)`` of a possibly dotted ``attribute`` of ``module`` (``"miner.margin"``)."""
    return resolve(module, attribute, "attribute")


class EpochUpdater:
    """Calls ``observe``/``step`` on controllers and ``update`` on miners and samplers.

    Args:
        miners: ``{name: miner}`` (the trainer's ``mining_funcs``); those with ``update`` join.
        sampler: the trainer's sampler, or ``None``; it joins when it has ``update``.
        controllers: ``{name: (controller, module, attribute)}``.
        embed_training_set: returns ``(embeddings: Tensor[N, d], labels: LongTensor[N])`` of the
            whole training set, by the current model or from the run's embedding bank
            (called only when something updates).
    """

    def __init__(self, miners: dict[str, Any], sampler: Any, controllers: dict[str, tuple[Any, Any, str]],
                 embed_training_set: Callable[[], tuple[torch.Tensor, torch.Tensor]]):
        candidates = [(f"mining_funcs.{k}", unwrap(v)) for k, v in miners.items()]
        if sampler is not None:
            candidates.append(("sampler", unwrap(sampler)))
        driven = {id(getattr(obj, "miner", None)) for _, obj in candidates}
        seen: set[int] = set()
        self.updatables: list[tuple[str, Any]] = []
        for name, obj in candidates:
            if isinstance(obj, EpochUpdatable) and id(obj) not in seen | driven:
                seen.add(id(obj))
                self.updatables.append((name, obj))
        self.controllers = dict(controllers)
        self.embed_training_set = embed_training_set
        self.history: list[dict] = []

    @property
    def saveable_controllers(self) -> dict[str, ControllerState]:
        """``{"controller_<name>": object with state_dict/load_state_dict}`` for PML's model
        saving (files ``controller_<name>_<epoch>.pth`` next to the models)."""
        return {f"controller_{name}": ControllerState(c, m, a) for name, (c, m, a) in self.controllers.items()}

    def settings(self) -> dict[str, float]:
        """``{"<name>_<attribute>": value}`` of every controller, as plain floats."""
        return {f"{name}_{attr}": float(getattr(*resolve_attribute(module, attr)))
                for name, (_, module, attr) in self.controllers.items()}

    @staticmethod
    def call_update(obj: EpochUpdatable, embeddings: torch.Tensor, labels: torch.Tensor) -> Any:
        """``obj.update(embeddings, labels)`` (the ``EpochUpdatable`` protocol)."""
        return obj.update(embeddings, labels)

    def end_of_iteration(self, trainer=None) -> None:
        for controller, _, _ in self.controllers.values():
            controller.observe()

    def end_of_epoch(self, trainer) -> dict[str, float]:
        """Step the controllers, refresh the updatables; returns this epoch's settings."""
        for controller, _, _ in self.controllers.values():
            controller.step()
        self.refresh()
        settings = self.settings()
        self.history.append({"epoch": int(trainer.epoch), **settings})
        return settings

    def refresh(self) -> None:
        """Recompute the training-set embeddings and pass them to every updatable."""
        if not self.updatables:
            return
        embeddings, labels = self.embed_training_set()
        for name, obj in self.updatables:
            LOGGER.info("Updating %s (%s) with the embeddings of %d training samples",
                        name, type(obj).__name__, len(labels))
            self.call_update(obj, embeddings, labels)
