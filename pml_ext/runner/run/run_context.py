"""What one process of a run knows about itself, fixed once the process group is up.

``ExperimentRunner`` makes one :class:`RunContext` per run and hands it to every
``SchemeRun``, which reads from it and nothing else of the runner's. It is frozen: a scheme
cannot change the rank, device or flags the next scheme runs with.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """One process's place in the run.

    Args:
        rank, world_size: this process's rank and the number of processes (``0, 1`` alone).
        distributed: whether a process group is running.
        device: where this rank's models and batches live (``utils.distributed.run_device``).
        seed: the config's ``seed``; epoch ``e`` draws from ``run_state.seed_epoch(seed, e)``.
        experiment_name, experiment_folder: the experiment's name and absolute folder.
        resume_training: ``"latest"`` when continuing a saved experiment, else ``None``.
        evaluate: ``"best"``/``"latest"`` to only test saved models, else ``None``.
    """

    rank: int
    world_size: int
    distributed: bool
    device: torch.device
    seed: int
    experiment_name: str
    experiment_folder: str
    resume_training: str | None = None
    evaluate: str | None = None

    def scheme_folder(self, scheme_name: str) -> str:
        """``<experiment folder>/<scheme_name>``: one split scheme's models and records."""
        return os.path.join(self.experiment_folder, scheme_name)
