"""Start-up checks of a run and what a run that fails leaves behind.

- names and folders are checked before anything is created;
- device and timeout values are checked before any object is built;
- a fresh run that fails before completing its first checkpoint removes what it wrote
  (configs, scheme folders), keeping ``run.log`` with the error, so the same command runs
  again without ``already exists`` and a resume never reloads a config that failed;
- the fatal error goes to ``run.log`` with its traceback (the console gets one ``error:`` line).
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil

from ..config.config_error import ConfigError

__all__ = ["check_device", "check_experiment_name", "check_root_folder", "check_timeout",
           "has_started", "log_fatal_error", "log_fatal_error_to", "remove_failed_start", "validation_split"]

LOGGER = logging.getLogger("pml_ext.runner")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]*$")
KEEP_AFTER_FAILED_START = ("run.log", ".lock")


def check_experiment_name(name) -> str:
    """A plain folder name: letters, digits, ``_ . + = @ -``; no separators, no ``.``/``..``."""
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or set(name) == {"."}:
        raise ConfigError("command line", "--experiment_name",
                          f"must be a plain folder name (letters, digits, _ . + = @ -, not starting with . or -), "
                          f"got {name!r}")
    return name


def check_root_folder(path: str) -> None:
    """``root_experiment_folder`` must be a folder or not exist yet (it is created)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("command line", "--root_experiment_folder", f"{path} exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError("command line", "--root_experiment_folder", f"{parent} is a file, not a folder")


def check_device(value, source: str):
    """``device`` as a ``torch.device`` that exists on this machine (``None``: cuda when available)."""
    import torch

    if value is None:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(source, "device", f"{value!r} is not a device ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise ConfigError(source, "device", f"{value!r}: this machine has {count} CUDA device(s); "
                                                f"use cpu or null")
    elif device.type != "cpu" and not getattr(torch, device.type, None):
        raise ConfigError(source, "device", f"{value!r}: no {device.type} backend in this torch build")
    return device


def check_timeout(value, source: str, key: str = "distributed_timeout_seconds") -> float:
    """A timeout in seconds: a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError(source, key, f"must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def validation_split(splits_to_eval: list, source: str) -> str:
    """The split that chooses models by default: the first evaluated one that is not ``test``."""
    for query, _ in splits_to_eval:
        if query.lower() != "test":
            return query
    raise ConfigError(source, "splits_to_eval", "evaluates only the test split; models must be chosen on a "
                                                "validation split of the training classes: add val (the split "
                                                "manager's val_fraction or num_training_partitions > 1)")


def has_started(experiment_folder: str) -> bool:
    """Whether the experiment got as far as records or a checkpoint (then only a resume continues it)."""
    return bool(glob.glob(os.path.join(experiment_folder, "*", "saved_models", "checkpoint_*.json"))
                or glob.glob(os.path.join(experiment_folder, "*", "saved_csvs", "logs.db")))


def remove_failed_start(experiment_folder: str) -> None:
    """After a fresh run failed before any checkpoint: keep only ``run.log`` (and the lock)."""
    if not os.path.isdir(experiment_folder) or has_started(experiment_folder):
        return
    for name in os.listdir(experiment_folder):
        if name in KEEP_AFTER_FAILED_START:
            continue
        path = os.path.join(experiment_folder, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    LOGGER.info("The run failed before its first checkpoint: removed its configs and records; "
                "the same command can run again")


def log_fatal_error(handler: logging.Handler | None, exc: BaseException) -> None:
    """Write ``exc`` with its traceback to ``run.log`` only (the console shows one ``error:`` line)."""
    if handler is None or getattr(exc, "_pml_ext_logged", False):
        return
    exc._pml_ext_logged = True  # the command line does not log it a second time
    record = LOGGER.makeRecord(LOGGER.name, logging.ERROR, __file__, 0, "error: %s", (exc,),
                               (type(exc), exc, exc.__traceback__))
    handler.handle(record)


def log_fatal_error_to(experiment_folder: str | None, exc: BaseException) -> None:
    """Append ``exc`` to ``<experiment_folder>/run.log`` when that folder exists (errors raised
    before the run started, e.g. ``--register_module``), unless the run logged it already."""
    from .experiment_lock import ExperimentLocked

    if not experiment_folder or not os.path.isdir(experiment_folder) or getattr(exc, "_pml_ext_logged", False) \
            or isinstance(exc, ExperimentLocked):  # that folder's run.log belongs to the run holding it
        return
    handler = logging.FileHandler(os.path.join(experiment_folder, "run.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    try:
        log_fatal_error(handler, exc)
    finally:
        handler.close()
