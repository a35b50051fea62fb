"""The main job never loses results (issue 26): a run writes a new folder under
``main_job_runs/`` and ``main_job`` links to the latest finished run only once it has
finished; every argument is checked before anything on disk changes; ``--dataset`` names.

Oracle: the bytes of every file before and after a failing command.
"""
import os
import pathlib

import pytest

from pml_ext.__main__ import main
from pml_ext.runner import ConfigError, ExperimentRunner
from pml_ext.runner.report.comparison_runner import ComparisonRunner
from pml_ext.runner.state.main_job_folder import MARKER, MainJobFolders

TINY = ["--num_epochs_train", "1", "--trainer~APPLY~2", "{iterations_per_epoch: 2}"]


def main_job(root, *extra) -> int:
    return main(["run", "--root_experiment_folder", str(root), *extra])


def snapshot(folder) -> dict:
    """``{relative path: bytes}`` of every file under ``folder`` (links followed)."""
    out = {}
    for dirpath, _, files in os.walk(folder, followlinks=True):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, folder)] = pathlib.Path(path).read_bytes()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A root folder holding one finished tiny main job (two methods, one short epoch)."""
    root = tmp_path_factory.mktemp("main")
    assert main_job(root, "--dataset", "digits", "--methods", "pml_triplet_semihard", "lifted_structure", *TINY) == 0
    assert {"comparison.csv", "comparison.png", "pml_triplet_semihard", "lifted_structure"} <= \
        set(os.listdir(root / "main_job"))
    return root


def test_a_bad_dataset_after_a_finished_main_job_changes_no_file(finished, capsys):
    before = snapshot(finished)
    assert main_job(finished, "--dataset", "nosuch", *TINY) == 2
    assert snapshot(finished) == before  # not a byte of any file, and no new file
    err = capsys.readouterr().err
    assert "--dataset: unknown data set 'nosuch'" in err and "(glyphs, quick, digits, or none" in err and "CUB200" in err


def test_a_main_job_that_fails_while_running_keeps_the_last_finished_run(finished, capsys):
    published = snapshot(finished / "main_job")
    runs = set(os.listdir(finished / "main_job_runs"))
    # passes the start-up checks, then fails in the first method's run (no batch can be drawn)
    assert main_job(finished, "--dataset", "digits", "--methods", "lifted_structure", "--trainer~APPLY~2",
                    "{batch_size: 100000}") == 2
    assert "trainer.batch_size" in capsys.readouterr().err
    assert snapshot(finished / "main_job") == published
    (failed,) = set(os.listdir(finished / "main_job_runs")) - runs  # this run's own folder, with its log
    assert "batch_size 100000" in (finished / "main_job_runs" / failed / "lifted_structure" / "run.log").read_text()
    # a run that finishes is published; the earlier finished run stays as it was, beside it
    assert main_job(finished, "--dataset", "digits", "--methods", "pml_triplet_semihard", *TINY) == 0
    assert os.listdir(finished / "main_job") and "lifted_structure" not in os.listdir(finished / "main_job")
    earlier = os.path.basename(os.path.realpath(finished / "main_job")) != failed
    assert earlier and any(snapshot(finished / "main_job_runs" / r) == published for r in runs)


def test_an_earlier_main_job_folder_becomes_a_run_and_a_foreign_one_is_refused(tmp_path):
    old = tmp_path / "main_job"
    old.mkdir()
    (old / MARKER).touch()
    (old / "comparison.csv").write_text("method\nkept\n")
    folders = MainJobFolders(str(tmp_path))
    folders.check()
    run = folders.new_run()
    folders.publish(run)
    assert os.path.realpath(old) == run
    (kept,) = [r for r in os.listdir(tmp_path / "main_job_runs") if r.startswith("earlier-")]
    assert (tmp_path / "main_job_runs" / kept / "comparison.csv").read_text() == "method\nkept\n"
    foreign = tmp_path / "other"
    (foreign / "main_job").mkdir(parents=True)
    (foreign / "main_job" / "results.csv").write_text("mine")
    with pytest.raises(ConfigError, match="was not made by the main job"):
        MainJobFolders(str(foreign)).check()


@pytest.mark.parametrize("name, bundled", [("Glyphs", "glyphs"), ("DIGITS", "digits"), ("digits", "digits")])
def test_dataset_names_are_the_bundled_benchmarks_whatever_their_case(name, bundled, tmp_path, monkeypatch):
    seen = {}

    def record(self):
        seen.update(dataset=self.dataset, overrides=self.overrides, config_names=self.config_names)
        return {"table": "", "skipped": [], "plot": None}

    monkeypatch.setattr(ComparisonRunner, "run", record)
    assert main_job(tmp_path, "--dataset", name) == 0
    # the benchmark's own config files, and never an override of the config key `dataset`
    assert seen == {"dataset": bundled, "overrides": [], "config_names": ComparisonRunner(dataset=bundled).config_names}


def test_dataset_classes_unknown_names_and_benchmarks_with_an_experiment(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(ComparisonRunner, "run", lambda self: seen.update(overrides=self.overrides) or
                        {"table": "", "skipped": [], "plot": None})
    assert main_job(tmp_path, "--dataset", "NpzFeatures") == 0  # a dataset class replaces the config's data set
    assert seen["overrides"] == [("dataset", "NpzFeatures")]
    assert main_job(tmp_path, "--dataset", "cub200") == 2
    assert "unknown data set 'cub200' (closest: CUB200)" in capsys.readouterr().err
    assert main_job(tmp_path, "--experiment_name", "x", "--dataset", "DIGITS", *TINY) == 2
    assert "'DIGITS' names the main job's bundled benchmark digits" in capsys.readouterr().err
    assert main_job(tmp_path, "--experiment_name", "x", "--dataset", "Glyphs", *TINY) == 2
    assert "--config_dataset glyphs --config_models glyph_pool_cnn_small" in capsys.readouterr().err
    assert not (tmp_path / "x" / "configs").exists()


def test_a_split_the_data_set_cannot_make_names_the_split_manager(tmp_path):
    runner = ExperimentRunner("p", root_experiment_folder=str(tmp_path), overrides=[
        ("split_manager~APPLY~2", {"num_training_partitions": 10, "val_fraction": 0})])
    with pytest.raises(ConfigError, match=r"config_dataset \(.*default\.yaml, command line\): "
                                          r"split_manager\.ClassDisjointSplitManager: num_training_partitions=10 "
                                          r"exceeds the 5 trainval classes of the data set Digits"):
        runner.run()


def test_evaluating_again_keeps_the_earlier_evaluations(tmp_path):
    import yaml

    from pml_ext.runner.run.evaluate_only import write_evaluation

    def read(name):
        return yaml.safe_load((tmp_path / name).read_text())

    write_evaluation(str(tmp_path), "best", {"epoch": 2, "models": "best", "accuracies": {"test": {"p": 0.5}}})
    # the same models on another split: both splits kept
    write_evaluation(str(tmp_path), "best", {"epoch": 2, "models": "best", "accuracies": {"val": {"p": 0.7}}})
    assert read("evaluation_best.yaml")["accuracies"] == {"test": {"p": 0.5}, "val": {"p": 0.7}}
    # other models (a resumed run chose epoch 3): the evaluation of epoch 2 is kept beside
    write_evaluation(str(tmp_path), "best", {"epoch": 3, "models": "best", "accuracies": {"val": {"p": 0.8}}})
    assert read("evaluation_best.yaml") == {"epoch": 3, "models": "best", "accuracies": {"val": {"p": 0.8}}}
    assert read("evaluation_best_epoch2.yaml")["accuracies"] == {"test": {"p": 0.5}, "val": {"p": 0.7}}
