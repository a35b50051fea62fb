"""The class-level sampler's hardness steered or scheduled by the runner's ``controllers:`` on digits.

The configs are docs/adaptive_controller.md's YAML examples (the sampler scaled down to digits'
5 training classes). Oracles: the miner's own readings captured by a spy on
``FractionActiveMeter.mine`` (the error a controller of the sampler must average), the sign the
error demands, the values a schedule's formula gives by hand, and the records the run writes.
"""
import math
import pathlib
import re
import sqlite3

import pytest
import yaml

from pml_ext import FractionActiveMeter
from pml_ext.runner import ConfigError, ExperimentRunner

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "adaptive_controller.md"
STEERED, SCHEDULED = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S))
SCHEME = "Test50_50_Partitions1_0"  # train: digits 0-4 less a quarter held out as val (676 samples)
BATCHES = 3  # length_before_new_iter 192 / batch 64
SAMPLER = {"ClassHardBatchSampler": {"classes_per_batch": 4, "samples_per_class": 16, "classes_per_seed": 2,
                                     "neighbours": 2, "random_share": 0.5, "length_before_new_iter": 192}}
BASE = [("check_untrained_accuracy", False), ("log_data_to_tensorboard", False),
        ("trainer~APPLY~2", {"iterations_per_epoch": None}), ("sampler~OVERRIDE~", SAMPLER),
        ("mining_funcs~OVERRIDE~", STEERED["mining_funcs"]),
        ("loss_funcs~OVERRIDE~", {"metric_loss": {"MultiSimilarityLoss": None}})]


def query(folder, sql):
    with sqlite3.connect(folder / SCHEME / "saved_csvs" / "logs.db") as conn:
        return conn.execute(sql).fetchall()


def controlled(measure=None):
    """The documented controller of the sampler, with another ``measure`` if given."""
    spec = STEERED["controllers"]["share"]["AdaptiveController"]
    return ("controllers", {"share": {"AdaptiveController": {**spec, "measure": measure or spec["measure"]}}})


@pytest.fixture
def readings(monkeypatch):
    """Every ``fraction_active`` the run's meter computes, in order."""
    values = []
    original = FractionActiveMeter.mine

    def mine(self, *args):
        out = original(self, *args)
        values.append(self.fraction_active)
        return out

    monkeypatch.setattr(FractionActiveMeter, "mine", mine)
    return values


def test_a_controller_of_the_sampler_reads_the_miners_error_and_moves_the_share(tmp_path, readings):
    runner = ExperimentRunner("steer", root_experiment_folder=str(tmp_path),
                              overrides=BASE + [("num_epochs_train", 2), controlled()])
    runner.run()
    controller, module, attribute = runner.objects[SCHEME]["controllers"]["share"]
    sampler = runner.objects[SCHEME]["sampler"]
    assert module is sampler and attribute == "random_share" and controller.fraction  # named fraction_active
    assert len(readings) == 2 * BATCHES
    log = controller.step_log
    for epoch in (1, 2):
        epoch_readings = [v for v in readings[(epoch - 1) * BATCHES: epoch * BATCHES] if not math.isnan(v)]
        assert log[epoch - 1]["error"] == pytest.approx(sum(epoch_readings) / len(epoch_readings))
    assert controller.last_error == pytest.approx(log[1]["error"])
    shares = [s for (s,) in query(tmp_path / "steer", "SELECT share_random_share FROM controller_settings")]
    assert shares[1] == pytest.approx(sampler.random_share)
    # A larger share gives easier batches and a lower error: an error above the target asks for
    # a larger share (the first step, before any fit, goes that way), one below for a smaller.
    error, target = log[0]["error"], controller.target
    assert error != target and (shares[0] - 0.5) * (error - target) > 0


@pytest.mark.parametrize("measure, message", [
    ("mining_funcs.nothing.fraction_active", "'nothing'"),
    ("mining_funcs.tuple_miner.no_such_error", "FractionActiveMeter at mining_funcs.tuple_miner has no "
                                               "attribute 'no_such_error'"),
    ("no_such_error", "neither an attribute of ClassHardBatchSampler nor a path into the run")])
def test_a_measure_that_is_nowhere_in_the_run_raises_naming_the_key(tmp_path, measure, message):
    runner = ExperimentRunner("bad", root_experiment_folder=str(tmp_path),
                              overrides=BASE + [("num_epochs_train", 1), controlled(measure)])
    with pytest.raises(ConfigError, match=r"controllers\.share\.AdaptiveController\.measure.*" + re.escape(message)):
        runner.run()


RAMP = ("controllers", SCHEDULED["controllers"])


def sampler_shares(folder):
    """The random share each epoch trained with, as the run recorded it: ``[(epoch, share)]``."""
    return query(folder, 'SELECT "~iteration~", random_share FROM sampler_statistics ORDER BY "~iteration~"')


def test_a_linear_schedule_sets_the_share_each_epoch_trains_with_and_resumes(tmp_path):
    # 1.0 (not the sampler's configured 0.5) up to epoch 1, a third less each epoch, 0.0 from epoch 4.
    expected = [(1, 1.0), (2, pytest.approx(2 / 3)), (3, pytest.approx(1 / 3)), (4, 0.0), (5, 0.0)]
    root = str(tmp_path)
    whole = ExperimentRunner("whole", root_experiment_folder=root,
                             overrides=BASE + [RAMP, ("num_epochs_train", 5), ("save_interval", 1)])
    whole.run()
    assert sampler_shares(tmp_path / "whole") == expected
    assert [s for (s,) in query(tmp_path / "whole", "SELECT share_random_share FROM controller_settings")] == \
        [e for _, e in expected[1:]] + [0.0]  # written at the end of each epoch, for the next
    ExperimentRunner("split", root_experiment_folder=root,
                     overrides=BASE + [RAMP, ("num_epochs_train", 2), ("save_interval", 1)]).run()
    ExperimentRunner("split", root_experiment_folder=root, resume_training="latest",
                     overrides=[("num_epochs_train", 5)]).run()
    assert sampler_shares(tmp_path / "split") == expected
