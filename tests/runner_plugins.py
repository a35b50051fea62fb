"""Imported by ``pml-ext run --register_module runner_plugins`` in tests/test_runner_distributed.py."""
import os
import signal
import time

import torch
import torch.distributed as dist
from pytorch_metric_learning.miners import TripletMarginMiner

import pml_ext


class FailOnRankOneMiner(TripletMarginMiner):
    """A TripletMarginMiner that raises on rank 1, to test how the other rank ends."""

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        if dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError("rank 1 failed on purpose")
        return super().mine(embeddings, labels, ref_emb, ref_labels)


pml_ext.register("miner", FailOnRankOneMiner)


class DieOnRankOneAdam(torch.optim.Adam):
    """Adam whose ``die_at_step``-th step kills rank 1 (SIGKILL) ``delay`` seconds after it: rank 0
    meanwhile evaluates and then waits for it at the end-of-epoch barrier."""

    def __init__(self, params, die_at_step: int = 1, delay: float = 0.0, **kwargs):
        super().__init__(params, **kwargs)
        self.die_at_step, self.delay, self.steps = die_at_step, delay, 0

    def step(self, closure=None):
        out = super().step(closure)
        self.steps += 1
        if dist.is_initialized() and dist.get_rank() == 1 and self.steps == self.die_at_step:
            time.sleep(self.delay)
            os.kill(os.getpid(), signal.SIGKILL)
        return out


pml_ext.register("optimizer", DieOnRankOneAdam)
