"""Bayesian search (``--bayes_opt_iters``) on digits with Optuna's seeded TPE sampler.

Oracles: each trial's own SQLite records (the best validation accuracy it recorded), the
study's stored parameters, and an uninterrupted search that a killed-and-resumed one must
equal trial by trial.
"""
from __future__ import annotations

import sqlite3

import pytest
import yaml

from pml_ext.__main__ import main
from pml_ext.runner import ConfigError, ExperimentRunner
from pml_ext.runner.report.bayesian_search import BayesianSearch
from pml_ext.runner.config.search_space import search_space

optuna = pytest.importorskip("optuna")

SCHEME = "Test50_50_Partitions2_0"  # digits: test 5-9, val 0-2, train 3-4
LR = "optimizers.embedder_optimizer.Adam.lr"
OVERRIDES = [
    ("split_manager~APPLY~2", {"num_training_partitions": 2, "num_training_sets": 1, "val_fraction": 0}),
    ("splits_to_eval", ["val"]), ("hook_container~APPLY~2", {"validation_split_name": "val"}),
    ("num_epochs_train", 1), ("check_untrained_accuracy", False),
    ("trainer~APPLY~2", {"iterations_per_epoch": 2}),
    ("optimizers", {"embedder_optimizer": {"Adam": {"lr~LOG_BAYESIAN~": [0.0001, 0.1]}}}),
]


def search(tmp_path, name, iters, **kwargs):
    return BayesianSearch(name, iters, root_experiment_folder=str(tmp_path), overrides=OVERRIDES, **kwargs)


def recorded_best(folder) -> float:
    """The best validation MAP@R (the bundled primary metric) a trial recorded."""
    with sqlite3.connect(folder / SCHEME / "saved_csvs" / "logs.db") as conn:
        rows = conn.execute("SELECT mean_average_precision_at_r_level0 FROM accuracies_normalized_"
                            "GlobalEmbeddingSpaceTester_level_0_VAL_vs_self").fetchall()
    return max(v for (v,) in rows)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted search of 3 trials and 1 reproduction: ``(folder, result)``."""
    tmp_path = tmp_path_factory.mktemp("search")
    return tmp_path / "bo", search(tmp_path, "bo", 3, reproductions=1).run()


def test_three_trials_choose_the_best_on_validation_and_write_a_summary(finished):
    root, result = finished
    trials = result["trials"]
    assert [t["folder"] for t in trials] == ["bo0", "bo1", "bo2"]
    for t in trials:  # each trial's value is what its own records say
        assert t["value"] == pytest.approx(recorded_best(root / t["folder"]), abs=1e-9)
        assert 1e-4 <= t["params"][LR] <= 0.1
        config = yaml.safe_load((root / t["folder"] / "configs" / "config_optimizers.yaml").read_text())
        assert config["optimizers"]["embedder_optimizer"]["Adam"]["lr"] == pytest.approx(t["params"][LR])
    assert len({t["params"][LR] for t in trials}) == 3
    assert result["best"]["value"] == max(t["value"] for t in trials)
    best = yaml.safe_load((root / "best_parameters.yaml").read_text())
    assert best["best_sub_experiment_name"] == result["best"]["folder"]
    # the reproduction reruns the best parameters with another seed, in its own folder
    (repro,) = result["reproductions"]
    assert repro["folder"] == "bo_reproduction0" and repro["seed"] == 1
    repro_config = yaml.safe_load((root / "bo_reproduction0" / "configs" / "config_optimizers.yaml").read_text())
    assert repro_config["optimizers"]["embedder_optimizer"]["Adam"]["lr"] == pytest.approx(best["best_parameters"][LR])
    table = (root / "bayes_opt_summary.md").read_text()
    assert table.count("\n| ") == 3 and "Reproductions of" in table
    assert (root / "bayes_opt_summary.csv").is_file() and (root / "bayes_opt_plot.png").stat().st_size > 0


def test_a_search_killed_between_trials_resumes_without_repeating_a_finished_trial(finished, tmp_path, monkeypatch):
    uninterrupted = finished[1]["trials"]

    calls = []
    original = BayesianSearch._run_one

    def killed_before_the_second_trial(self, folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill: the study keeps trial 1 as running
        return original(self, folder, *args, **kwargs)

    monkeypatch.setattr(BayesianSearch, "_run_one", killed_before_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "b", "bo", 3).run()
    assert calls == ["bo0", "bo1"]
    calls.clear()
    monkeypatch.setattr(BayesianSearch, "_run_one", lambda self, folder, *a, **k: calls.append(folder) or
                        original(self, folder, *a, **k))
    with pytest.raises(ValueError, match="--resume_training latest"):
        search(tmp_path / "b", "bo", 3).run()
    resumed = search(tmp_path / "b", "bo", 3, resume_training="latest").run()["trials"]
    assert calls == ["bo1", "bo2"]  # trial 0 is not run again
    assert [(t["folder"], t["params"]) for t in resumed] == [(t["folder"], t["params"]) for t in uninterrupted]
    assert [t["value"] for t in resumed] == pytest.approx([t["value"] for t in uninterrupted], abs=1e-9)


def test_search_start_up_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"a search range needs a Bayesian search: add --bayes_opt_iters"):
        ExperimentRunner("x", root_experiment_folder=str(tmp_path), overrides=OVERRIDES).run()
    no_val = [o for o in OVERRIDES if o[0] not in ("splits_to_eval", "split_manager~APPLY~2")] + \
        [("split_manager~APPLY~2", {"val_fraction": 0})]  # the bundled split, less its held-out val
    with pytest.raises(ConfigError, match=r"config_dataset \(.*\): split_manager.ClassDisjointSplitManager: makes no "
                                          r"'val' split \(only train, test\).*val_fraction: 0.25"):
        BayesianSearch("y", 2, root_experiment_folder=str(tmp_path), overrides=no_val).run()
    with pytest.raises(ConfigError, match=r"hook_container.validation_split_name: is 'train'; a Bayesian search"):
        BayesianSearch("y", 2, root_experiment_folder=str(tmp_path), overrides=OVERRIDES + [
            ("splits_to_eval", ["train", "val"]), ("hook_container~APPLY~2", {"validation_split_name": "train"})]).run()
    assert not (tmp_path / "y").exists()  # a refused search leaves no folder to resume
    with pytest.raises(ConfigError, match=r"needs at least one ~BAYESIAN~"):
        BayesianSearch("z", 2, root_experiment_folder=str(tmp_path), overrides=OVERRIDES[:-1]).run()
    bad = OVERRIDES[:-1] + [("optimizers", {"embedder_optimizer": {"Adam": {"lr~LOG_BAYESIAN~": [0, 1]}}})]
    with pytest.raises(ConfigError, match=r"lr~LOG_BAYESIAN~: a log range needs low > 0"):
        BayesianSearch("w", 2, root_experiment_folder=str(tmp_path), overrides=bad).run()
    assert main(["run", "--experiment_name", "v", "--bayes_opt_iters", "two"]) == 2
    assert "--bayes_opt_iters: takes one integer" in capsys.readouterr().err


def test_the_command_line_runs_a_search(tmp_path, capsys):
    argv = ["run", "--experiment_name", "cli", "--root_experiment_folder", str(tmp_path), "--bayes_opt_iters", "1",
            "--split_manager~APPLY~2", "{num_training_partitions: 2, num_training_sets: 1, val_fraction: 0}",
            "--splits_to_eval", "val", "--hook_container~APPLY~2", "{validation_split_name: val}",
            "--num_epochs_train", "1", "--check_untrained_accuracy", "false",
            "--trainer~APPLY~2", "{iterations_per_epoch: 1}",
            "--optimizers", "{embedder_optimizer: {Adam: {lr~LOG_BAYESIAN~: [0.0001, 0.1]}}}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Best trial: cli0 (validation accuracy" in out and "| 0 | cli0 |" in out


TINY = ["--num_epochs_train", "1", "--check_untrained_accuracy", "false", "--trainer~APPLY~2",
        "{iterations_per_epoch: 1}"]


def cli_search(root, name, iters, *extra) -> int:
    return main(["run", "--experiment_name", name, "--root_experiment_folder", str(root), "--bayes_opt_iters",
                 str(iters), *extra])


def saved(folder, category) -> dict:
    return yaml.safe_load((folder / "configs" / f"{category}.yaml").read_text())


def test_the_documented_search_runs_on_the_bundled_digits_configs(tmp_path, capsys):
    # the bundled split holds out a quarter of each training class as val (val_fraction, one partition)
    assert cli_search(tmp_path, "s", 2, "--config_optimizers", "default", "with_lr_bayes_opt", *TINY) == 0
    assert "Best trial: s" in capsys.readouterr().out
    from pml_ext.runner.config.config_reader import BUNDLED_CONFIG_FOLDER

    with open(f"{BUNDLED_CONFIG_FOLDER}/config_optimizers/with_lr_bayes_opt.yaml") as f:
        low, high = yaml.safe_load(f)["optimizers~APPLY~3"]["lr~LOG_BAYESIAN~"]
    best = yaml.safe_load((tmp_path / "s" / "best_parameters.yaml").read_text())
    for trial in ("s0", "s1"):
        optimizers = saved(tmp_path / "s" / trial, "config_optimizers")["optimizers"]
        for name in ("trunk_optimizer", "embedder_optimizer"):  # each optimizer's lr is a parameter of its own
            assert low <= optimizers[name]["Adam"]["lr"] <= high
    trial = tmp_path / "s" / best["best_sub_experiment_name"]
    with sqlite3.connect(trial / "Test50_50_Partitions1_0" / "saved_csvs" / "logs.db") as conn:
        (value,), = conn.execute("SELECT mean_average_precision_at_r_level0 FROM accuracies_normalized_"
                                 "GlobalEmbeddingSpaceTester_level_0_VAL_vs_self").fetchall()
    assert best["validation_accuracy"] == pytest.approx(value, abs=1e-9)


def test_a_search_failing_at_start_up_leaves_nothing_to_trip_over(tmp_path, capsys):
    # PB's class-disjoint val partition; the first trial fails at start-up (no batch can be drawn)
    space = ["--split_manager~APPLY~2", "{num_training_partitions: 2, num_training_sets: 1, val_fraction: 0}",
             "--optimizers", "{embedder_optimizer: {Adam: {lr~LOG_BAYESIAN~: [0.0001, 0.1]}}}", *TINY[:4]]
    assert cli_search(tmp_path, "s", 2, *space, "--trainer~APPLY~2", "{batch_size: 100000}") == 2
    assert "trainer.batch_size" in capsys.readouterr().err
    assert not (tmp_path / "s" / "configs").exists() and not list((tmp_path / "s").glob("optuna.db*"))
    # the corrected command runs as a new search, with its own overrides
    assert cli_search(tmp_path, "s", 1, *space, "--trainer~APPLY~2", "{iterations_per_epoch: 1}") == 0
    assert saved(tmp_path / "s", "config_general")["trainer"]["MetricLossOnly"]["batch_size"] == 64


def test_resuming_a_search_with_another_config_is_refused_not_ignored(finished):
    root, _ = finished
    with pytest.raises(ConfigError, match=r"--resume_training: .* searches another config \(this command changes "
                                          r"num_epochs_train\)"):
        BayesianSearch("bo", 4, root_experiment_folder=str(root.parent), overrides=OVERRIDES + [
            ("num_epochs_train", 2)], resume_training="latest").run()
    assert len(list(root.glob("bo[0-9]*"))) == 3  # no trial started


def test_a_search_over_a_margin_in_a_bundled_method_file(tmp_path):
    from pml_ext.runner import ComparisonRunner

    (method,) = ComparisonRunner(methods=["pml_triplet_semihard"], dataset=None).methods()
    assert cli_search(tmp_path, "m", 2, "--methods", "pml_triplet_semihard", *TINY,
                      "--loss_funcs~APPLY~3", "{margin~BAYESIAN~: [0.05, 0.5]}") == 0
    margins = []
    for trial in ("m0", "m1"):
        config = saved(tmp_path / "m" / trial, "config_loss_and_miners")
        margins.append(config["loss_funcs"]["metric_loss"]["TripletMarginLoss"]["margin"])
        assert config["mining_funcs"] == method["config"]["mining_funcs~OVERRIDE~"]  # the method file's miner
    assert all(0.05 <= m <= 0.5 for m in margins) and margins[0] != margins[1]


def test_the_search_accepts_the_glyph_benchmarks_val_partition_and_writes_nothing_to_check_it(tmp_path):
    glyphs = {"config_dataset": ["glyphs"], "config_models": ["glyph_cnn"], "config_general": ["default", "glyphs"],
              "config_loss_and_miners": ["default", "glyphs"], "config_optimizers": ["default", "with_lr_bayes_opt"]}
    small = [("dataset~APPLY~2", {"characters": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                                  "cache_dir": str(tmp_path / "cache")})]
    found = BayesianSearch("g", 2, root_experiment_folder=str(tmp_path / "runs"), config_names=glyphs, overrides=small)
    base = found.read_config()
    found.check_selects_on_validation(base, search_space(base))  # 10 class-disjoint partitions: val is the first
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match=r"glyphs\.yaml, command line\): split_manager.ClassDisjointSplitManager: "
                                          r"makes no 'val' split"):
        BayesianSearch("g", 2, root_experiment_folder=str(tmp_path / "runs"), config_names=glyphs, overrides=small + [
            ("split_manager~APPLY~2", {"num_training_partitions": 1})]).run()
