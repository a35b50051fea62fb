"""Run a function on a world of gloo processes (CPU), for the distributed tests."""
import datetime
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world_size, init_file, fn, args, timeout_seconds):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_seconds))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_world(fn, *args, world_size=2, timeout_seconds=60):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes; re-raise failures.

    When a rank fails, the others get the collective timeout plus a margin to fail on their
    own before they are terminated (``mp.spawn`` alone would kill them at once), so a test can
    read what they did about the lost peer."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.spawn(_entry, args=(world_size, init_file, fn, args, timeout_seconds), nprocs=world_size,
                           join=False)
        while not context.join(grace_period=timeout_seconds + 10):
            pass
