"""Everything a resumed run needs beyond the trainer's models and optimizers, as one mapping.

``stateful_objects(...)`` returns ``{name: object with state_dict()/load_state_dict()}``: the
sampler (every layer of a wrapped one, PML's samplers included), the miners (their generators
and epoch triplets), the controllers (their state and the setting they steer), the random
number generators of torch, numpy and Python, and the run's embedding bank when it keeps one. ``seed_epoch(seed, epoch)`` is the one place
those generators are seeded: before building (epoch 0) and before each epoch. Saving them after epoch k and loading them
before epoch k + 1 makes a resumed run equal, bit for bit on CPU, to the uninterrupted one.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch

from ...utils.checks import check_state_version

__all__ = ["ControllerState", "RngStates", "SamplerState", "seed_epoch", "stateful_objects"]

# Epoch e's seed is seed + EPOCH_SEED_STRIDE * e: far enough apart that nearby config seeds
# (0, 1, 2, ...) never share an epoch's stream.
EPOCH_SEED_STRIDE = 1000


def seed_epoch(seed: int, epoch: int = 0) -> None:
    """Seed torch's, numpy's and Python's global generators for ``epoch`` of a run seeded
    ``seed`` (epoch 0: building the run's objects). Every rank draws the same stream."""
    value = seed + EPOCH_SEED_STRIDE * int(epoch)
    random.seed(value)
    np.random.seed(value % (2 ** 32))
    torch.manual_seed(value)


class RngStates:
    """The global generators of torch, numpy and Python.

    ``snapshot()`` keeps their current state; ``state_dict()`` returns the snapshot (or the
    current state before any), ``restore()`` writes it back. The runner snapshots right after
    seeding the next epoch, so evaluation on rank 0 (which draws from the generators on
    that rank only) changes neither the saved state nor the next epoch's draws.
    """

    def __init__(self):
        self._snapshot: dict | None = None
        self.loaded = False

    @staticmethod
    def current() -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                # numpy's key array as a tensor: checkpoints load with torch.load(weights_only=True)
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}

    def snapshot(self) -> None:
        self._snapshot = self.current()

    def restore(self) -> None:
        if self._snapshot is not None:
            self.load_state_dict(self._snapshot)
            self.loaded = False

    def state_dict(self) -> dict:
        return {"version": 1, **(self._snapshot if self._snapshot is not None else self.current())}

    def load_state_dict(self, state: Mapping) -> None:
        check_state_version(state, "RngStates")
        missing = sorted({"torch", "python", "numpy"} - set(state))
        if missing:
            raise ValueError(f"state is missing {missing} (an RngStates.state_dict())")
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        torch.set_rng_state(state["torch"])
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        self._snapshot, self.loaded = dict(state), True


def _layer_state(layer: Any) -> Any:
    """One sampler layer's state: its own ``state_dict()``, or what PML's and torch's samplers keep."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    if callable(getattr(layer, "state_dict", None)):
        return layer.state_dict()
    if isinstance(layer, MPerClassSampler):  # it shuffles its label list in place, epoch after epoch
        return {"labels": [int(label) for label in layer.labels]}
    if isinstance(layer, torch.utils.data.RandomSampler) and layer.generator is not None:
        return {"generator": layer.generator.get_state()}
    return None


def _load_layer_state(layer: Any, state: Any) -> None:
    from pytorch_metric_learning.samplers import MPerClassSampler

    if state is None:
        return
    if callable(getattr(layer, "load_state_dict", None)):
        layer.load_state_dict(state)
    elif isinstance(layer, MPerClassSampler):
        keys = {int(k): k for k in layer.labels_to_indices}
        if sorted(keys) != sorted(state["labels"]):
            raise ValueError("state['labels'] must be the sampler's own labels, in any order")
        layer.labels = [keys[label] for label in state["labels"]]
    elif isinstance(layer, torch.utils.data.RandomSampler) and layer.generator is not None:
        layer.generator.set_state(state["generator"])


class SamplerState:
    """The state of a sampler and of every sampler it wraps (``.sampler`` of a shard or cut wrapper)."""

    def __init__(self, sampler: Any):
        self.layers = [sampler]
        while hasattr(self.layers[-1], "sampler") and isinstance(self.layers[-1].sampler, torch.utils.data.Sampler):
            self.layers.append(self.layers[-1].sampler)

    def state_dict(self) -> dict:
        return {"version": 1, "layers": [_layer_state(layer) for layer in self.layers]}

    def load_state_dict(self, state: Mapping) -> None:
        check_state_version(state, "SamplerState")
        layers = state.get("layers")
        if not isinstance(layers, list) or len(layers) != len(self.layers):
            raise ValueError(f"state['layers'] must list {len(self.layers)} sampler states, got {layers!r:.80}")
        for layer, layer_state in zip(self.layers, layers):
            _load_layer_state(layer, layer_state)


class ControllerState:
    """A controller's ``state_dict`` (when it has one) and the setting it steers, saved together
    (``controller_<name>_<epoch>.pth``): the runner's one save path for controllers."""

    def __init__(self, controller: Any, module: Any, attribute: str):
        from ...utils.dotted_path import resolve

        self.controller = controller
        self.module, self.attribute = resolve(module, attribute, "attribute")

    def state_dict(self) -> dict:
        state = {"version": 1, "setting": getattr(self.module, self.attribute)}
        if callable(getattr(self.controller, "state_dict", None)):
            state["controller"] = self.controller.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        check_state_version(state, "ControllerState")
        if "controller" in state and callable(getattr(self.controller, "load_state_dict", None)):
            self.controller.load_state_dict(state["controller"])
        setattr(self.module, self.attribute, state["setting"])


def stateful_objects(sampler: Any = None, mining_funcs: Mapping[str, Any] | None = None,
                     controllers: Mapping[str, Any] | None = None, rng: RngStates | None = None,
                     embedding_bank: Any = None) -> dict[str, Any]:
    """``{name: object with state_dict()/load_state_dict()}`` for a checkpoint.

    Args:
        sampler: the trainer's sampler (possibly wrapped), or ``None``.
        mining_funcs: ``{name: miner}``; saved as ``miner_<name>``.
        controllers: ``{"controller_<name>": ControllerState}`` (``EpochUpdater.saveable_controllers``).
        rng: the run's ``RngStates``; saved as ``rng_states``.
        embedding_bank: the run's embedding bank (its ``state_dict`` is the gathered bank of
            all ranks, a versioned ``EmbeddingBank`` state), or ``None``; saved as ``embedding_bank``.
    """
    out: dict[str, Any] = {}
    if sampler is not None:
        out["sampler"] = SamplerState(sampler)
    for name, miner in (mining_funcs or {}).items():
        if callable(getattr(miner, "state_dict", None)):
            out[f"miner_{name}"] = miner
    out.update(controllers or {})
    if rng is not None:
        out["rng_states"] = rng
    if embedding_bank is not None:
        out["embedding_bank"] = embedding_bank
    return out
