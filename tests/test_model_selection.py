"""Models are chosen on a val split of the training classes, never on test (issue 15).

Oracles: the val records in SQLite (the best epoch is their argmax), a run stopped at that epoch
(its weights equal the saved best weights), and per-class counts for the held-out val split.
"""
import os
import re
import sqlite3

import numpy as np
import pytest
import torch

import pml_ext
from pml_ext.runner import ConfigError, ExperimentRunner

SCHEME = "Test50_50_Partitions1_0"
VAL = "accuracies_normalized_GlobalEmbeddingSpaceTester_level_0_VAL_vs_self"
RUN = [("trainer~APPLY~2", {"iterations_per_epoch": 3}), ("check_untrained_accuracy", False),
       ("log_data_to_tensorboard", False)]
# gradient ascent on the loss: the val score falls after epoch 1, so the chosen epoch is not the last
NOISY = [("optimizers~APPLY~3", {"lr": 0.01, "maximize": True})]


def test_val_fraction_holds_out_a_seeded_share_of_each_training_class():
    digits = pml_ext.Digits()
    labels = np.asarray(digits.labels)
    manager = pml_ext.ClassDisjointSplitManager(num_training_partitions=1, num_training_sets=1, val_fraction=0.25)
    (_, splits), = manager.split_schemes(digits).items()
    assert not set(splits["val"]) & set(splits["train"])
    for c in range(5):  # train classes 0-4: round(0.25 n_c) of each in val, the rest in train
        n_c = int((labels == c).sum())
        assert (labels[splits["val"]] == c).sum() == round(0.25 * n_c)
        assert (labels[splits["train"]] == c).sum() == n_c - round(0.25 * n_c)
    assert set(labels[splits["test"]]) == {5, 6, 7, 8, 9}
    (_, again), = manager.split_schemes(digits).items()
    assert np.array_equal(again["val"], splits["val"])
    other = pml_ext.ClassDisjointSplitManager(num_training_partitions=1, num_training_sets=1, val_fraction=0.25,
                                              val_seed=1)
    (_, reseeded), = other.split_schemes(digits).items()
    assert not np.array_equal(reseeded["val"], splits["val"])
    with pytest.raises(ValueError, match="val_fraction needs num_training_partitions: 1"):
        pml_ext.ClassDisjointSplitManager(num_training_partitions=2, num_training_sets=1, val_fraction=0.1)


def test_the_chosen_epoch_is_the_one_with_the_best_val_score_and_its_weights_are_saved(tmp_path):
    summary = ExperimentRunner("three", root_experiment_folder=str(tmp_path),
                               overrides=RUN + NOISY + [("num_epochs_train", 3)]).run()
    with sqlite3.connect(tmp_path / "three" / SCHEME / "saved_csvs" / "logs.db") as conn:
        scores = conn.execute(f"SELECT epoch, mean_average_precision_at_r_level0 FROM {VAL}").fetchall()
    assert [e for e, _ in scores] == [1, 2, 3]
    best = max(scores, key=lambda row: row[1])[0]  # the oracle: the argmax of the val records
    assert best < 3, scores  # else the check below is only the last epoch's
    assert summary["schemes"][SCHEME]["best_epoch"] == best
    models = tmp_path / "three" / SCHEME / "saved_models"
    trunks = sorted(p for p in os.listdir(models) if re.fullmatch(r"trunk_(best)?\d+\.pth", p))
    assert trunks == sorted({f"trunk_best{best}.pth", "trunk_3.pth"})
    # the best weights are that epoch's: a run stopped there ends with the same weights
    ExperimentRunner("stopped", root_experiment_folder=str(tmp_path),
                     overrides=RUN + NOISY + [("num_epochs_train", best)]).run()
    chosen = torch.load(models / f"trunk_best{best}.pth")
    stopped = torch.load(tmp_path / "stopped" / SCHEME / "saved_models" / f"trunk_{best}.pth")
    assert all(torch.equal(chosen[k], stopped[k]) for k in chosen)


@pytest.mark.parametrize("override, message", [
    (("hook_container~APPLY~2", {"validation_split_name": "test"}), "'test' would choose models"),
    (("splits_to_eval~OVERRIDE~", ["test"]), "evaluates only the test split"),
])
def test_choosing_on_the_test_split_is_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentRunner("t", root_experiment_folder=str(tmp_path), overrides=RUN + [override]).run()
