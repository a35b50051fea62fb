"""Imported by ``pml-ext run --register_module slow_eval_plugins`` in tests/test_runner_distributed.py."""
import time

from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester

import pml_ext


class SlowTester(GlobalEmbeddingSpaceTester):
    """PML's tester, ``delay`` seconds slower per evaluation (rank 0 evaluates alone)."""

    def __init__(self, *args, delay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay = delay

    def test(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().test(*args, **kwargs)


pml_ext.register("tester", SlowTester)
