"""One writer per experiment folder (issue 15): a second run on a held folder fails at once, naming
the holder, and leaves the first run unharmed; the lock of a killed process is taken over."""
import logging
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys

import pytest

from pml_ext.__main__ import main
from pml_ext.runner.state.experiment_lock import ExperimentLock, ExperimentLocked

CHILD = str(pathlib.Path(__file__).parent / "checkpoint_kill_child.py")
SCHEME = "Test50_50_Partitions1_0"


def test_a_second_run_on_a_folder_in_use_fails_at_once_and_the_first_is_unharmed(tmp_path, capsys, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(pathlib.Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    with subprocess.Popen([sys.executable, CHILD, str(tmp_path), "pause"], env=env, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as first:
        try:
            assert first.stdout.readline().strip() == "ready"  # epoch 1 is saved; the run holds the lock
            with pytest.raises(ExperimentLocked, match=f"is in use by another run \\(PID {first.pid} on "):
                ExperimentLock(str(tmp_path / "run")).acquire()
            for extra in ([], ["--resume_training", "latest"]):
                status = main(["run", "--experiment_name", "run", "--root_experiment_folder", str(tmp_path), *extra])
                lines = capsys.readouterr().err.strip().splitlines()
                assert status == 2 and len(lines) == 1 and lines[0].startswith("error: experiment_name: ")
                assert f"PID {first.pid}" in lines[0] and "started 20" in lines[0]
            _, err = first.communicate("go\n", timeout=600)
            assert first.returncode == 0, err[-2000:]
        finally:
            if first.poll() is None:
                first.kill()
    with sqlite3.connect(tmp_path / "run" / SCHEME / "saved_csvs" / "logs.db") as conn:
        table = next(n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                     if n.startswith("accuracies"))
        assert conn.execute(f"SELECT epoch FROM {table}").fetchall() == [(1,), (2,)]
    assert "error" not in (tmp_path / "run" / "run.log").read_text()
    ExperimentLock(str(tmp_path / "run")).acquire().release()  # released at the end of the run


def test_the_stale_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    folder = str(tmp_path / "exp")
    pid = os.fork()
    if pid == 0:  # only flock and kill in the child: nothing that is unsafe after fork
        try:
            ExperimentLock(folder).acquire()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert f'"pid": {pid}' in (tmp_path / "exp" / ".lock").read_text()
    with caplog.at_level(logging.WARNING, logger="pml_ext.runner"):
        lock = ExperimentLock(folder).acquire()
    assert f"left by PID {pid}" in caplog.text and "which no longer runs" in caplog.text
    with pytest.raises(ExperimentLocked, match=f"PID {os.getpid()}"):
        ExperimentLock(folder).acquire()  # a second holder, even in the same process, is refused
    lock.release()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pml_ext.runner"):
        ExperimentLock(folder).acquire().release()
    assert "Taking over" not in caplog.text  # a lock released normally is not stale
