"""Checkpoints survive a kill at any point of their write (issue 15).

Oracle: an uninterrupted run of the same config. A child process (tests/checkpoint_kill_child.py)
patches the checkpoint store's step function and SIGKILLs itself after the first file, after the
records, or after the marker of epoch 2's checkpoint; ``--resume_training latest`` then finishes
the run. Its weights, optimizer states and every record (SQLite rows, CSV lines) must equal the
uninterrupted run's: no duplicated row, no lost row, no freshly initialised object.
"""
import glob
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys

import pytest
import torch

from checkpoint_kill_child import OVERRIDES
from pml_ext.runner import ExperimentRunner
from pml_ext.runner.state.checkpoint_store import CheckpointError, CheckpointStore

SCHEME = "Test50_50_Partitions1_0"
CHILD = str(pathlib.Path(__file__).parent / "checkpoint_kill_child.py")


POINTS = ("file", "records", "marker")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``({point: (folder, exit signal)}, uninterrupted folder)``: one run killed at each point of
    epoch 2's checkpoint write (in a child), and the uninterrupted run (here, meanwhile)."""
    root = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(pathlib.Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, CHILD, str(root), "2", *POINTS], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        whole = tmp_path_factory.mktemp("whole")
        ExperimentRunner("run", root_experiment_folder=str(whole), overrides=OVERRIDES).run()
        out, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-2000:]
    signals = dict(line.split() for line in out.splitlines())
    return {point: (root / point, int(signals[point])) for point in POINTS}, whole / "run"


def db_rows(folder):
    with sqlite3.connect(folder / SCHEME / "saved_csvs" / "logs.db") as conn:
        names = sorted(n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                       if not n.startswith("sqlite_"))
        return {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY id').fetchall() for n in names}


def csv_texts(folder):
    return {os.path.basename(p): pathlib.Path(p).read_text()
            for p in glob.glob(str(folder / SCHEME / "saved_csvs" / "*.csv"))}


def states(folder, epoch):
    out = {}
    for path in glob.glob(str(folder / SCHEME / "saved_models" / f"*_{epoch}.pth")):
        out[os.path.basename(path)] = torch.load(path, weights_only=False)
    return out


def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_during_a_checkpoint_write_then_resume_equals_the_uninterrupted_run(runs, point):
    killed, uninterrupted = runs
    root, killed_by = killed[point]
    assert killed_by == signal.SIGKILL
    folder = root / "run"
    markers = sorted(os.listdir(folder / SCHEME / "saved_models"))
    # what the kill left: epoch 2's checkpoint is complete only when the marker was written
    assert ("checkpoint_2.json" in markers) == (point == "marker")
    summary = ExperimentRunner("run", root_experiment_folder=str(root), resume_training="latest").run()
    assert summary["schemes"][SCHEME]["start_epoch"] == (3 if point == "marker" else 2)
    whole, resumed = states(uninterrupted, 3), states(folder, 3)
    assert whole.keys() == resumed.keys() and {"trunk_3.pth", "embedder_3.pth", "trunk_optimizer_3.pth"} <= whole.keys()
    for name in whole:
        assert same(whole[name], resumed[name]), name
    assert db_rows(folder) == db_rows(uninterrupted)
    assert csv_texts(folder) == csv_texts(uninterrupted)
    with sqlite3.connect(folder / SCHEME / "saved_csvs" / "logs.db") as conn:
        table = next(n for n in db_rows(folder) if n.startswith("accuracies"))
        assert conn.execute(f'SELECT epoch FROM "{table}"').fetchall() == [(1,), (2,), (3,)]  # none twice
    # only the last complete checkpoint is left, plus the best-on-validation copies
    assert sorted(p for p in os.listdir(folder / SCHEME / "saved_models") if p.startswith("checkpoint")) == \
        ["checkpoint_3.json"]


class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(1))


def test_resume_refuses_a_checkpoint_with_a_missing_or_altered_file_and_an_unreadable_marker(tmp_path):
    store = CheckpointStore(str(tmp_path / "models"))
    objects = {"trunk": Counter(), "embedder": Counter()}
    for epoch in (1, 2):
        objects["trunk"].count += 1
        store.save(epoch, objects)
    assert sorted(os.listdir(tmp_path / "models")) == ["checkpoint_2.json", "embedder_2.pth", "trunk_2.pth"]
    fresh = {"trunk": Counter(), "embedder": Counter()}
    assert store.resume(fresh) == 2 and fresh["trunk"].count.item() == 2

    path = tmp_path / "models" / "embedder_2.pth"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="embedder_2.pth: its size or SHA-256 differs"):
        store.resume({"trunk": Counter(), "embedder": Counter()})
    path.unlink()
    with pytest.raises(CheckpointError, match="embedder_2.pth: missing; the checkpoint of epoch 2 is incomplete"):
        store.resume({"trunk": Counter(), "embedder": Counter()})
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="no saved state for miner"):
        store.resume({"trunk": Counter(), "embedder": Counter(), "miner": Counter()})
    (tmp_path / "models" / "checkpoint_2.json").write_text("{")
    with pytest.raises(CheckpointError, match="unreadable checkpoint marker"):
        store.resume({"trunk": Counter(), "embedder": Counter()})


def test_a_state_that_does_not_fit_is_an_error_not_a_fresh_model(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save(1, {"trunk": torch.nn.Linear(2, 3)})
    with pytest.raises(CheckpointError, match="trunk_1.pth: cannot load into trunk"):
        store.resume({"trunk": torch.nn.Linear(2, 4)})


def test_leftovers_of_an_unfinished_first_checkpoint_restart_the_run_from_epoch_1(tmp_path):
    store = CheckpointStore(str(tmp_path))
    (tmp_path / "trunk_1.pth").write_bytes(b"partial")
    assert store.resume({"trunk": Counter()}) == 0
    assert os.listdir(tmp_path) == []


def test_records_are_cut_back_to_a_checkpoint_extent(tmp_path):
    from pml_ext.runner.state.checkpoint_store import records_extent, roll_back_records

    db = tmp_path / "logs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE a (id integer primary key autoincrement, x real)")
        conn.executemany("INSERT INTO a (x) VALUES (?)", [(1.0,), (2.0,)])
    saved = "~iteration~,x\n0,1.0\n1,2.0\n"
    (tmp_path / "a.csv").write_text(saved)
    extent = records_extent(str(tmp_path))
    assert extent == {"csv": {"a.csv": len(saved)}, "sqlite": {"a": 2}}
    with sqlite3.connect(db) as conn:  # what a run writes after the checkpoint
        conn.executemany("INSERT INTO a (x) VALUES (?)", [(3.0,)])
        conn.execute("CREATE TABLE b (id integer primary key autoincrement, y real)")
        conn.execute("INSERT INTO b (y) VALUES (1.0)")
    with open(tmp_path / "a.csv", "a") as f:
        f.write("2,3.0\n")
    (tmp_path / "b.csv").write_text("~iteration~,y\n")
    roll_back_records(str(tmp_path), extent)
    assert (tmp_path / "a.csv").read_text() == saved and not (tmp_path / "b.csv").exists()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id, x FROM a").fetchall() == [(1, 1.0), (2, 2.0)]
        conn.execute("INSERT INTO a (x) VALUES (9.0)")  # the re-recorded row gets the id the lost one had
        assert conn.execute("SELECT max(id) FROM a").fetchone() == (3,)
        assert [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == \
            ["a", "sqlite_sequence"]
    empty = tmp_path / "empty"
    empty.mkdir()
    sqlite3.connect(empty / "logs.db").close()
    roll_back_records(str(empty), {"csv": {}, "sqlite": {}})  # a database without tables is fine
