"""AdaptiveController under torch.distributed (gloo, world size 2): every rank sets the same value."""
import json

import pytest

from dist_utils import run_world
from pml_ext.hooks.adaptive_controller import AdaptiveController


class Knob:
    def __init__(self):
        self.kappa = 4.0
        self.fraction_active = 0.0


def rank_readings(rank, epoch):
    """Different errors, and different numbers of them, on each rank (rank 1 sees none in epoch 2)."""
    if rank == 0:
        return [0.9 - 0.1 * epoch, 0.8 - 0.1 * epoch, 0.7]
    return [] if epoch == 2 else [0.2 + 0.05 * epoch]


EPOCHS = 5


def controller_worker(rank, world_size, out_dir):
    knob = Knob()
    ctrl = AdaptiveController(knob, "kappa", 0.5, start_epoch=1, direction="decreasing")
    settings = []
    for epoch in range(1, EPOCHS + 1):
        for value in rank_readings(rank, epoch):
            ctrl.observe(value)
        settings.append(ctrl.step())
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump({"settings": settings, "errors": [h[2] for h in ctrl.history]}, f)


def test_ranks_with_different_errors_set_the_same_value(tmp_path):
    run_world(controller_worker, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["settings"] == r1["settings"]
    # Oracle: one process that observes every rank's readings gets the same epochs and settings.
    knob = Knob()
    single = AdaptiveController(knob, "kappa", 0.5, start_epoch=1, direction="decreasing")
    expected = []
    for epoch in range(1, EPOCHS + 1):
        for rank in range(2):
            for value in rank_readings(rank, epoch):
                single.observe(value)
        expected.append(single.step())
    assert r0["settings"] == pytest.approx(expected, rel=1e-12)
    # Epoch 1's error is the mean over all four readings: (0.8 + 0.7 + 0.7 + 0.25) / 4.
    assert r0["errors"][0] == pytest.approx((0.8 + 0.7 + 0.7 + 0.25) / 4)
    # A rank that measured nothing (epoch 2) still takes part and agrees.
    assert r1["errors"][1] == pytest.approx((0.7 + 0.6 + 0.7) / 3)
    # A single rank alone would have steered elsewhere: the averaging matters.
    alone = AdaptiveController(Knob(), "kappa", 0.5, start_epoch=1, direction="decreasing")
    for value in rank_readings(1, 1):
        alone.observe(value)
    assert alone.step() != pytest.approx(r1["settings"][0])
