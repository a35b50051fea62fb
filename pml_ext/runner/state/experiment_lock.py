"""One writer per experiment folder: an OS-level lock held for the whole run.

``fcntl.flock`` on ``<experiment>/.lock``: the kernel releases it when the holding process
exits, however it exits (SIGKILL included), so a lock file left by a killed run is stale by
construction and the next run takes it over. The file holds the holder's PID, host and start
time, which the error of a second run names.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket

__all__ = ["ExperimentLock", "ExperimentLocked"]

LOGGER = logging.getLogger("pml_ext.runner")
LOCK_NAME = ".lock"


class ExperimentLocked(ValueError):
    """Another process holds the experiment folder's lock."""


class ExperimentLock:
    """``with ExperimentLock(folder):`` holds ``folder/.lock`` exclusively (creating ``folder``).

    Raises :class:`ExperimentLocked` at once when another process holds it.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd: int | None = None

    def acquire(self) -> "ExperimentLock":
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise ExperimentLocked(
                f"experiment_name: {self.folder} is in use by another run (PID {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, started {holder.get('start', '?')}); wait for it to end or stop it"
            ) from None
        previous = self._read(fd)
        if previous:  # the lock was free, so its last holder is gone
            LOGGER.warning("Taking over the lock of %s left by PID %s on %s (started %s), which no longer runs",
                           self.folder, previous.get("pid"), previous.get("host"), previous.get("start"))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "start": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # an empty lock file: released normally, nothing to take over
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            text = os.pread(fd, 4096, 0).decode()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
