"""Imported by ``pml-ext run --register_module runner_plugins`` in tests/test_runner_distributed.py."""
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
