"""``torchrun --nproc_per_node 2 -m pml_ext run`` on CPU with gloo (world size 2)."""
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys

import pytest
from suite_options import subprocess_env

TESTS = pathlib.Path(__file__).parent
SCHEME = "Test50_50_Partitions1_0"


# Subprocess deadlines only stop a hung run; they are far above a run's time on a loaded machine
# and are not what the tests check.
HANG = 900


def torchrun(tmp_path, *args, timeout=HANG):
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pml_ext", "run", "--root_experiment_folder", str(tmp_path), "--num_epochs_train", "1",
           "--check_untrained_accuracy", "false", "--trainer~APPLY~2", "{iterations_per_epoch:", "3}", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_process_run_on_digits_trains_and_only_rank_0_writes_records(tmp_path):
    result = torchrun(tmp_path, "--experiment_name", "dist")
    assert result.returncode == 0, result.stderr[-3000:]
    db = tmp_path / "dist" / SCHEME / "saved_csvs" / "logs.db"
    with sqlite3.connect(db) as conn:
        losses = conn.execute("SELECT total_loss FROM loss_histories").fetchall()
        epochs = conn.execute("SELECT epoch FROM accuracies_normalized_GlobalEmbeddingSpaceTester_level_0_"
                              "TEST_vs_self").fetchall()
    # 3 iterations ran on each rank; one set of records, from rank 0 (two writers would give 6 rows).
    assert len(losses) == 3 and epochs == [(1,)]
    log = (tmp_path / "dist" / "run.log").read_text()
    assert "distributed: rank 0 of 2" in log and "rank 1" not in log
    assert (tmp_path / "dist" / SCHEME / "saved_models" / "trunk_1.pth").is_file()


def two_ranks(tmp_path, name: str, *args) -> tuple[list[int], list[str]]:
    """Run ``pml-ext run`` as ranks 0 and 1 the way torchrun starts them (its environment variables),
    but without torchrun's agent, which would kill rank 0 itself: rank 0 must end on its own.
    Returns the exit statuses and the stderr texts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "pml_ext", "run", "--root_experiment_folder", str(tmp_path),
            "--experiment_name", name, "--num_epochs_train", "1", "--check_untrained_accuracy", "false",
            "--register_module", "runner_plugins", *args]
    procs = []
    for rank in range(2):
        env = subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                             LOCAL_RANK=str(rank),
                             PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    try:
        errors = [p.communicate(timeout=HANG)[1] for p in procs]
    finally:
        for p in procs:  # a hang must not outlive the test
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], errors


@pytest.mark.slow
def test_a_rank_that_fails_mid_run_makes_the_other_exit_with_a_clear_error(tmp_path):
    # The collective timeout (300 s) is far above the run: rank 0 must see the broken connection,
    # not wait out the timeout (whose message says "alive but slow").
    codes, errors = two_ranks(tmp_path, "fail", "--distributed_timeout_seconds", "300",
                              "--mining_funcs~OVERRIDE~", "{tuple_miner:", "{FailOnRankOneMiner:", "{}}}")
    assert codes == [1, 1]
    assert "rank 1 failed on purpose" in errors[1]
    assert "rank 0: a collective with the other ranks failed because another rank exited" in errors[0]


@pytest.mark.slow
def test_a_rank_killed_while_rank_0_waits_at_the_end_of_epoch_barrier_is_reported_as_exited(tmp_path):
    # Rank 1 is killed 8 s after its last step; rank 0 has evaluated and waits for it at the barrier
    # (deadline: a day). Before, this read "did not reach the end-of-epoch barrier within 86400 s".
    codes, errors = two_ranks(tmp_path, "killed", "--trainer~APPLY~2", "{iterations_per_epoch: 2}",
                              "--optimizers~SWAP~2", "{Adam: DieOnRankOneAdam}", "--optimizers~APPLY~3",
                              "{die_at_step: 2, delay: 8}")
    assert codes[1] == -9 and codes[0] == 1, errors
    assert "rank 0: a collective with the other ranks failed because another rank exited" in errors[0], errors[0]
    assert "within 86400" not in errors[0]
    # (were rank 0 so slow that rank 1 died first, gloo itself would say the connection closed)
    assert "rank 1 left the end-of-epoch barrier" in errors[0] or "connection closed" in errors[0].lower()


@pytest.mark.slow
def test_an_evaluation_on_rank_0_longer_than_the_collective_timeout_does_not_kill_a_healthy_run(tmp_path):
    # Rank 0 evaluates for 30 s; collectives time out after 20 s (room for a loaded machine's lag
    # between ranks elsewhere in the run). Rank 1 waits at the end-of-epoch barrier, whose
    # deadline is distributed_eval_timeout_seconds. (Without it, this run dies.)
    result = torchrun(tmp_path, "--experiment_name", "slow", "--register_module", "slow_eval_plugins",
                      "--distributed_timeout_seconds", "20", "--tester~SWAP~1", "{SlowTester: null}",
                      "--tester~APPLY~2", "{delay: 30}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "slow" / SCHEME / "saved_models" / "checkpoint_1.json").is_file()


def test_timeouts_must_be_positive_seconds(tmp_path):
    from pml_ext.runner import ConfigError, ExperimentRunner

    for key, value in (("distributed_timeout_seconds", -1), ("distributed_eval_timeout_seconds", 0),
                       ("distributed_timeout_seconds", "soon")):
        with pytest.raises(ConfigError, match=f"{key}: must be a finite number of seconds > 0"):
            ExperimentRunner("t", root_experiment_folder=str(tmp_path), overrides=[(key, value)]).run()


@pytest.mark.slow
def test_under_torchrun_only_rank_0_prints_progress(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pml_ext", "run", "--dataset", "digits", "--methods", "pml_triplet_semihard",
           "--root_experiment_folder", str(tmp_path), "--num_epochs_train", "1",
           "--trainer~APPLY~2", "{iterations_per_epoch:", "2}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [line for line in result.stderr.splitlines() if line.startswith("[1/1] ")]
    assert len(progress) == 1, result.stderr  # one per rank before
    assert result.stdout.count("Main job:") == 1


def test_a_barrier_failing_long_before_its_deadline_names_the_ranks_as_exited_and_one_at_it_as_late():
    from pml_ext.runner.run.rank_wait import describe_collective_failure

    gloo = RuntimeError("[Rank 0]: Ranks 1, 3 failed to pass monitoredBarrier in 86400000 ms")
    early = describe_collective_failure(gloo, 0, 300, 86400, waited=1.9)
    assert early.startswith("rank 0: a collective with the other ranks failed because another rank exited")
    assert "rank 1, 3 left the end-of-epoch barrier after 1.9 s, before its 86400 s deadline" in early
    late = describe_collective_failure(gloo, 0, 300, 86400, waited=86400.2)
    assert late.startswith("rank 0: other ranks did not reach the end-of-epoch barrier within 86400 s")
