"""Every user error of `pml-ext run` ends as one `error:` line naming the file and key, exit status 2,
with the traceback in run.log only; a run that fails before its first epoch can simply be run again."""
import os
import pathlib
import shutil

import pytest
import torch

from pml_ext.__main__ import main
from pml_ext.runner.config.config_reader import BUNDLED_CONFIG_FOLDER

CUDA_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0
FAST = ["--num_epochs_train", "1", "--trainer~APPLY~2", "{iterations_per_epoch: 2}",
        "--check_untrained_accuracy", "false", "--log_data_to_tensorboard", "false"]


def run_cli(capsys, monkeypatch, *args):
    status = main(["run", *args])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.strip()]


def assert_user_error(status, lines, *fragments):
    assert status == 2
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("args, fragments", [
    # one index past the last CUDA device: an error on every machine, with or without GPUs
    (["--device", f"cuda:{CUDA_COUNT}"],
     ["config_general", f"device: 'cuda:{CUDA_COUNT}': this machine has {CUDA_COUNT} CUDA device(s)"]),
    (["--device", "tpu9"], ["device: 'tpu9' is not a device"]),
    (["--loss_funcs~APPLY~3", "{margin: abc}"],
     ["config_loss_and_miners", "TripletMarginLoss.margin: must be a number"]),
    (["--distributed_timeout_seconds", "0"], ["distributed_timeout_seconds: must be a finite number of seconds > 0"]),
    (["--mining_funcs~OVERRIDE~", "{tuple_miner: {SmartMiner: {index_method: hsnw}}}"],
     ["mining_funcs.tuple_miner.SmartMiner", "hsnw"]),
])
def test_config_errors_give_one_line_exit_2_run_log_and_a_re_runnable_name(tmp_path, capsys, monkeypatch, args,
                                                                          fragments):
    root = str(tmp_path)
    status, lines = run_cli(capsys, monkeypatch, "--experiment_name", "e", "--root_experiment_folder", root, *args)
    error = assert_user_error(status, lines, *fragments)
    log = (tmp_path / "e" / "run.log").read_text()
    assert error in log and "Traceback" in log
    # nothing of the failed start is left but run.log (and the free lock): the same name runs again
    assert sorted(os.listdir(tmp_path / "e")) == [".lock", "run.log"]


def test_a_failed_start_then_the_same_command_fixed_runs(tmp_path, capsys, monkeypatch):
    common = ["--experiment_name", "e", "--root_experiment_folder", str(tmp_path), *FAST]
    status, _ = run_cli(capsys, monkeypatch, *common, "--loss_funcs~APPLY~3", "{margin: abc}")
    assert status == 2
    # as if a start had been killed (SIGKILL: no clean-up) after saving its config, before any record
    (tmp_path / "e" / "configs").mkdir()
    (tmp_path / "e" / "configs" / "config_general.yaml").write_text("broken: [")
    status, lines = run_cli(capsys, monkeypatch, *common)
    assert status == 0, lines
    assert (tmp_path / "e" / "configs" / "config_general.yaml").is_file()
    # a checkpoint file altered after the run: resuming is refused, never a fresh model
    trunk = tmp_path / "e" / "Test50_50_Partitions1_0" / "saved_models" / "trunk_1.pth"
    trunk.write_bytes(trunk.read_bytes()[:-8])
    status, lines = run_cli(capsys, monkeypatch, "--experiment_name", "e", "--root_experiment_folder", str(tmp_path),
                            "--resume_training", "latest", "--num_epochs_train", "2")
    error = assert_user_error(status, lines, "trunk_1.pth: its size or SHA-256 differs", "Refusing to resume")
    assert error in (tmp_path / "e" / "run.log").read_text()


def test_path_and_name_errors(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("")
    status, lines = run_cli(capsys, monkeypatch, "--experiment_name", "e", "--root_experiment_folder", str(a_file))
    assert_user_error(status, lines, "--root_experiment_folder", "exists and is not a folder")
    for name in ("..", "a/b", ".", "-x"):
        status, lines = run_cli(capsys, monkeypatch, "--experiment_name", name, "--root_experiment_folder",
                                str(tmp_path / "root"))
        assert_user_error(status, lines, "--experiment_name: must be a plain folder name")
    assert not (tmp_path / "root").exists() and sorted(os.listdir(tmp_path)) == ["file"]


def test_a_missing_register_module_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "e").mkdir()  # an existing experiment folder gets the error in its run.log
    status, lines = run_cli(capsys, monkeypatch, "--experiment_name", "e", "--root_experiment_folder", str(tmp_path),
                            "--register_module", "no_such_module_xyz")
    error = assert_user_error(status, lines, "--register_module: cannot import 'no_such_module_xyz'")
    assert error in (tmp_path / "e" / "run.log").read_text()


def test_a_non_utf8_config_file_names_the_file(tmp_path, capsys, monkeypatch):
    configs = tmp_path / "configs"
    shutil.copytree(BUNDLED_CONFIG_FOLDER, configs, ignore=shutil.ignore_patterns("comparison"))
    bad = configs / "config_general" / "default.yaml"
    bad.write_bytes(bad.read_bytes() + "# caf\u00e9\n".encode("latin-1"))
    status, lines = run_cli(capsys, monkeypatch, "--experiment_name", "e", "--root_experiment_folder",
                            str(tmp_path / "exp"), "--root_config_folder", str(configs))
    error = assert_user_error(status, lines, str(bad), "not UTF-8 text (byte 0xe9")
    assert error in (tmp_path / "exp" / "e" / "run.log").read_text()
