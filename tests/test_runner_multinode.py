"""Two machines, simulated on this one: two torchrun launchers (one process each) meet through a
c10d rendezvous, and the run records exactly what ``--nproc_per_node 2`` on one node records."""
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys

import pytest
import torch

TESTS = pathlib.Path(__file__).parent
SCHEME = "Test50_50_Partitions1_0"
# Smart mining gathers the training set's embeddings from every rank, shards its sampler and
# averages the controller's error across ranks: 3 epochs reach the mined batches (warm-up 2)
# and a controller step (start_epoch 3).
MAIN_JOB = ["-m", "pml_ext", "run", "--dataset", "digits", "--methods", "smart_mining", "--num_epochs_train", "3",
            "--trainer~APPLY~2", "{iterations_per_epoch: 2}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder: pathlib.Path, *torchrun_args: str) -> subprocess.Popen:
    folder.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, *MAIN_JOB,
           "--root_experiment_folder", str(folder)]
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:  # a hung rendezvous must not outlive the test
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return outputs


def records(root: pathlib.Path) -> dict[str, list]:
    """Every table of the method's SQLite records (losses, accuracies, sampler, controller)."""
    with sqlite3.connect(root / "main_job" / "smart_mining" / SCHEME / "saved_csvs" / "logs.db") as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f'SELECT * FROM "{t}" ORDER BY id').fetchall() for t in tables if t != "sqlite_sequence"}


@pytest.mark.slow
def test_two_launchers_of_one_process_each_record_what_one_launcher_of_two_processes_records(tmp_path):
    # The rendezvous store lives in this process, as an external store would on a cluster: when a
    # launcher hosts it, that launcher may exit as soon as its own worker is done, and the other
    # launcher's next health check then fails to reach the store (seen once in four runs).
    port = free_port()
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    nodes = [launch(tmp_path / f"node{rank}", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_conf", "is_host=false")
             for rank in range(2)]
    two_nodes = finish(nodes)
    del store
    # c10d assigns ranks in its own order: rank 0 (the writer) is on either launcher.
    written = [tmp_path / f"node{r}" for r in range(2)
               if (tmp_path / f"node{r}" / "main_job" / "comparison.csv").is_file()]
    assert len(written) == 1
    stderr = "".join(err for _, err in two_nodes)
    assert len([line for line in stderr.splitlines() if line.startswith("[1/1] ")]) == 1, stderr
    assert "".join(out for out, _ in two_nodes).count("Main job:") == 1

    one_node = finish([launch(tmp_path / "one_node", "--standalone", "--nproc_per_node", "2")])
    assert one_node[0][0].count("Main job:") == 1
    expected, got = records(tmp_path / "one_node"), records(written[0])
    assert {"loss_histories", "sampler_statistics", "controller_settings"} <= set(expected)
    assert len(expected["loss_histories"]) == 6  # 3 epochs of 2 steps, recorded once (by rank 0)
    assert got == expected
    models = [root / "main_job" / "smart_mining" / SCHEME / "saved_models" / "trunk_3.pth"
              for root in (tmp_path / "one_node", written[0])]
    weights = [torch.load(path, weights_only=True) for path in models]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
