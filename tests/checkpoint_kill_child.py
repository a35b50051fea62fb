"""Child of tests/test_checkpoint_faults.py: runs that SIGKILL themselves at one point of a checkpoint write.

    python checkpoint_kill_child.py ROOT EPOCH POINT [POINT ...]
    python checkpoint_kill_child.py ROOT pause     # tests/test_experiment_lock.py


Each POINT is ``file`` (after the first file), ``records`` (after the records) or ``marker``
(after the marker) of the checkpoint of EPOCH; the wrapper patches the store's step function to
kill there. Each point's run is a fork of this process (imports paid once, before any OpenMP
work), in ``ROOT/<point>/run``; the exit signal of each is printed as ``point signal``.
"""
import os
import signal
import sys

import matplotlib
import torch._dynamo  # noqa: F401  (imported by the optimizers; paid once, before the forks)

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401  (the run's plots)

from pml_ext.runner.state import checkpoint_store
from pml_ext.runner.run.experiment_runner import ExperimentRunner

# A deterministic run: whole passes over a seeded random order (no sampler state), as in
# tests/test_runner_run.py's resume test.
OVERRIDES = [("sampler~DELETE~", None), ("mining_funcs~OVERRIDE~", {}),
             ("loss_funcs~OVERRIDE~", {"metric_loss": {"ContrastiveLoss": None}}),
             ("trainer~APPLY~2", {"iterations_per_epoch": None, "batch_size": 256}),
             ("check_untrained_accuracy", False), ("log_data_to_tensorboard", False),
             ("save_interval", 1), ("num_epochs_train", 3)]


def kill_at(point: str, epoch: int):
    def reached(self, where, at_epoch):
        if where == point and at_epoch == epoch:
            os.kill(os.getpid(), signal.SIGKILL)
    return reached


def pause_after_epoch_1(self, where, epoch):
    """Hold the run (and its lock) after epoch 1's checkpoint until a line arrives on stdin."""
    if where == "marker" and epoch == 1:
        print("ready", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    if sys.argv[2] == "pause":
        checkpoint_store.CheckpointStore._reached = pause_after_epoch_1
        ExperimentRunner("run", root_experiment_folder=sys.argv[1], overrides=OVERRIDES[:-1] + [
            ("num_epochs_train", 2)]).run()
        sys.exit(0)
    root, epoch, points = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    children = {}
    for point in points:
        pid = os.fork()
        if pid == 0:
            try:
                checkpoint_store.CheckpointStore._reached = kill_at(point, epoch)
                ExperimentRunner("run", root_experiment_folder=os.path.join(root, point), overrides=OVERRIDES).run()
            finally:
                os._exit(0)  # not killed: the test reports it
        children[point] = pid
    for point, pid in children.items():
        _, status = os.waitpid(pid, 0)
        print(point, os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0)
