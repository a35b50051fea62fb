"""Resume equality for every bundled method: a run stopped after epoch 2 of 4 and resumed gives
the same records and the same final weights, bit for bit on CPU, as the uninterrupted run.

Oracle: the uninterrupted run itself. Every table record-keeper wrote (losses per iteration,
miner and sampler statistics, controller settings, accuracies per epoch) and every saved
model and optimizer state of epoch 4 must be identical."""
import sqlite3

import pytest
import torch

from pml_ext.runner import ComparisonRunner, ExperimentRunner

SCHEME = "Test50_50_Partitions1_0"
TINY = [("trainer~APPLY~2", {"iterations_per_epoch": 3}), ("save_interval", 1), ("check_untrained_accuracy", False),
        ("log_data_to_tensorboard", False)]
DIGITS = ComparisonRunner(dataset="digits")
METHODS = {m["key"]: m for m in DIGITS.methods()}


def records(folder):
    with sqlite3.connect(folder / SCHEME / "saved_csvs" / "logs.db") as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {n: conn.execute(f"SELECT * FROM {n}").fetchall() for n in names}


def saved(folder, epoch):
    models = folder / SCHEME / "saved_models"
    return {p.name: torch.load(p, weights_only=False) for p in sorted(models.glob(f"*_{epoch}.pth"))}


def same(a, b):
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN equals NaN here


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(METHODS))
def test_a_run_stopped_after_epoch_2_and_resumed_equals_the_uninterrupted_run(tmp_path, key):
    overrides = DIGITS.settings(METHODS[key]) + TINY
    ExperimentRunner("whole", root_experiment_folder=str(tmp_path), overrides=overrides + [("num_epochs_train", 4)]).run()
    ExperimentRunner("split", root_experiment_folder=str(tmp_path), overrides=overrides + [("num_epochs_train", 2)]).run()
    summary = ExperimentRunner("split", root_experiment_folder=str(tmp_path), resume_training="latest",
                               overrides=[("num_epochs_train", 4)]).run()
    assert summary["schemes"][SCHEME]["start_epoch"] == 3
    whole, split = records(tmp_path / "whole"), records(tmp_path / "split")
    assert whole.keys() == split.keys()
    for table in whole:
        assert whole[table] == split[table] or same(whole[table], split[table]), table
    assert len(whole["loss_histories"]) == 4 * 3
    final_whole, final_split = saved(tmp_path / "whole", 4), saved(tmp_path / "split", 4)
    assert {"trunk_4.pth", "embedder_4.pth", "rng_states_4.pth"} <= final_whole.keys()
    assert final_whole.keys() == final_split.keys()
    for name in final_whole:
        assert same(final_whole[name], final_split[name]), name
