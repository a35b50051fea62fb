"""Atomic, self-checking per-epoch checkpoints of a run's stateful objects, and the records' roll-back.

A checkpoint of epoch ``e`` is written in this order (a kill at any instant leaves either the
previous complete checkpoint or this one):

1. one file per object, ``<name>_<e>.pth`` (PML's naming), each written to a temporary name,
   fsynced and renamed; the best-on-validation copies ``<name>_best<e>.pth`` likewise;
2. the records (record-keeper's CSVs and SQLite ``logs.db``) are flushed, and their extent
   (bytes per CSV, last row id per table) is measured;
3. the marker ``checkpoint_<e>.json`` (same atomic write) lists every file with its size and
   SHA-256 and the records' extent. Only then are older checkpoints' files deleted.

Resume takes the newest marker, verifies every file it lists (a missing, truncated or altered
file is an error, never a fresh model), loads each object strictly, deletes what a later,
unfinished checkpoint left, and cuts the records back to the marker's extent, so the epochs
trained again are recorded once.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import sqlite3
from typing import Any, Callable, Mapping, Protocol

import torch

__all__ = ["CheckpointError", "CheckpointStore", "Stateful", "atomic_write", "records_extent", "roll_back_records",
           "trainer_objects"]

LOGGER = logging.getLogger("pml_ext.runner")
MARKER = "checkpoint_{}.json"
_MARKER_RE = re.compile(r"^checkpoint_(\d+)\.json$")
FORMAT = 1


class Stateful(Protocol):
    """What a checkpoint saves: anything with PyTorch's state-dict pair."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (a user-facing error: the message names the file)."""


def _fsync_folder(folder: str) -> None:
    # The rename is durable only once the folder entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` to a temporary name, fsync, then rename over ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def records_extent(records_folder: str) -> dict:
    """``{"csv": {file: bytes}, "sqlite": {table: last row id}}`` of record-keeper's folder."""
    csvs = {os.path.basename(p): os.path.getsize(p) for p in glob.glob(os.path.join(records_folder, "*.csv"))}
    tables: dict[str, int] = {}
    db = os.path.join(records_folder, "logs.db")
    if os.path.isfile(db):
        with sqlite3.connect(db) as conn:
            names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                     if not n.startswith("sqlite_")]
            for name in names:
                (last,) = conn.execute(f'SELECT COALESCE(MAX(id), 0) FROM "{name}"').fetchone()
                tables[name] = int(last)
        conn.close()
    return {"csv": csvs, "sqlite": tables}


def roll_back_records(records_folder: str, extent: Mapping) -> None:
    """Cut record-keeper's CSVs and SQLite tables back to ``extent`` (see :func:`records_extent`).

    Records are append-only, so everything beyond the extent was written after the checkpoint."""
    if not os.path.isdir(records_folder):
        return
    for path in glob.glob(os.path.join(records_folder, "*.csv")):
        size = extent["csv"].get(os.path.basename(path))
        if size is None:
            os.remove(path)
        elif os.path.getsize(path) > size:
            with open(path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())
    db = os.path.join(records_folder, "logs.db")
    if not os.path.isfile(db):
        return
    with sqlite3.connect(db) as conn:
        all_names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        names = [n for n in all_names if not n.startswith("sqlite_")]
        for name in names:
            last = extent["sqlite"].get(name)
            if last is None:
                conn.execute(f'DROP TABLE "{name}"')
                continue
            conn.execute(f'DELETE FROM "{name}" WHERE id > ?', (last,))
            # AUTOINCREMENT would otherwise skip the deleted ids: the re-recorded rows get the same ids.
            if "sqlite_sequence" in all_names:
                conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (last, name))
        if "sqlite_sequence" in all_names:
            conn.execute("DELETE FROM sqlite_sequence WHERE name NOT IN "
                         "(SELECT name FROM sqlite_master WHERE type='table')")
    conn.close()


def trainer_objects(trainer, attribute_names) -> dict[str, Stateful]:
    """``{name: object}`` of the trainer's dicts named in ``attribute_names`` (PML's HookContainer
    ``saveable_trainer_objects``: models, optimizers, lr_schedulers, loss_funcs, mining_funcs, ...).

    More stateful objects join a checkpoint by adding entries to the returned mapping."""
    out: dict[str, Stateful] = {}
    for attribute in attribute_names:
        for name, obj in (getattr(trainer, attribute, None) or {}).items():
            if obj is None:
                continue
            if name in out:
                raise ValueError(f"two saveable objects are named {name!r} ({attribute} and another dict); "
                                 f"their checkpoint files would collide")
            out[name] = obj
    return out


class CheckpointStore:
    """Per-epoch checkpoints of ``{name: object with state_dict/load_state_dict}`` in ``folder``.

    Args:
        folder: ``<scheme>/saved_models``.
        records_folder: record-keeper's folder (``<scheme>/saved_csvs``), rolled back on resume.
        flush_records: writes the records held in memory (``record_keeper.save_records``).
    """

    def __init__(self, folder: str, records_folder: str | None = None,
                 flush_records: Callable[[], None] | None = None):
        self.folder = folder
        self.records_folder = records_folder
        self.flush_records = flush_records or (lambda: None)

    # A fault-injection test replaces this to kill the process at a chosen point of a write.
    def _reached(self, point: str, epoch: int) -> None:
        """Called after each step of :meth:`save`: ``"file"`` (each object), ``"records"``, ``"marker"``."""

    def markers(self) -> dict[int, str]:
        """``{epoch: marker path}`` of the complete checkpoints on disk."""
        if not os.path.isdir(self.folder):
            return {}
        out = {}
        for name in os.listdir(self.folder):
            match = _MARKER_RE.match(name)
            if match:
                out[int(match.group(1))] = os.path.join(self.folder, name)
        return out

    def save(self, epoch: int, objects: Mapping[str, Stateful], best_epoch: int | None = None) -> None:
        """Write the checkpoint of ``epoch``; ``best_epoch`` is the epoch chosen on validation so far
        (its ``_best`` files are written when it is ``epoch``, kept from the previous marker otherwise)."""
        os.makedirs(self.folder, exist_ok=True)
        previous = self._read_marker(max(self.markers())) if self.markers() else None
        files = {}
        for name, obj in objects.items():
            files[name] = self._write_state(name, str(epoch), obj)
            self._reached("file", epoch)
        best = dict(previous["best"]) if previous else {"epoch": None, "files": {}}
        if best_epoch is not None and best_epoch == epoch:
            best = {"epoch": epoch, "files": {n: self._write_state(n, f"best{epoch}", o) for n, o in objects.items()}}
        self.flush_records()
        extent = records_extent(self.records_folder) if self.records_folder else {"csv": {}, "sqlite": {}}
        self._reached("records", epoch)
        marker = {"format": FORMAT, "epoch": epoch, "files": files, "best": best, "records": extent}
        atomic_write(os.path.join(self.folder, MARKER.format(epoch)),
                     lambda f: f.write(json.dumps(marker, indent=1)), mode="w")
        self._reached("marker", epoch)
        self._remove_all_but(marker)

    def _write_state(self, name: str, suffix: str, obj: Stateful) -> dict:
        module = getattr(obj, "module", obj) if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
        filename = f"{name}_{suffix}.pth"
        path = os.path.join(self.folder, filename)
        atomic_write(path, lambda f: torch.save(module.state_dict(), f))
        return {"file": filename, "bytes": os.path.getsize(path), "sha256": _sha256(path)}

    def _read_marker(self, epoch: int) -> dict:
        path = os.path.join(self.folder, MARKER.format(epoch))
        try:
            with open(path) as f:
                marker = json.load(f)
            if marker.get("format") != FORMAT or int(marker["epoch"]) != epoch:
                raise ValueError("unexpected format")
            return marker
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint marker ({exc}); the checkpoint of epoch {epoch} "
                                  f"cannot be trusted. Delete the experiment folder to start again") from None

    def _remove_all_but(self, marker: dict) -> None:
        """Delete every file of ``folder`` that ``marker`` (written last) does not list."""
        keep = {MARKER.format(marker["epoch"])} | {v["file"] for v in marker["files"].values()} \
            | {v["file"] for v in marker["best"]["files"].values()}
        for name in os.listdir(self.folder):
            if name not in keep and (name.endswith(".pth") or _MARKER_RE.match(name) or ".pth.tmp" in name):
                os.remove(os.path.join(self.folder, name))

    def resume(self, objects: Mapping[str, Stateful], device: torch.device | str | None = None,
               clean_up: bool = True) -> int:
        """Load the newest complete checkpoint into ``objects``, roll the records back to it and
        return its epoch (0 when no checkpoint was completed: the run restarts from epoch 1, with
        no records). Raises :class:`CheckpointError` when its files are missing or altered.
        ``clean_up=False`` (ranks other than 0) only loads."""
        markers = self.markers()
        if not markers and not clean_up:
            return 0
        if not markers:
            leftovers = sorted(glob.glob(os.path.join(self.folder, "*.pth")))
            if leftovers:
                LOGGER.warning("%s: no checkpoint was completed (the run stopped while writing the first one); "
                               "starting again from epoch 1", self.folder)
            for path in leftovers:
                os.remove(path)
            if self.records_folder:
                roll_back_records(self.records_folder, {"csv": {}, "sqlite": {}})
            return 0
        epoch = max(markers)
        marker = self._read_marker(epoch)
        missing = sorted(set(objects) - set(marker["files"]))
        if missing:
            raise CheckpointError(f"{markers[epoch]}: the checkpoint of epoch {epoch} has no saved state for "
                                  f"{', '.join(missing)}; it was written by a different config")
        for entry in list(marker["files"].values()) + list(marker["best"]["files"].values()):
            self._verify(entry, epoch)
        for name, obj in objects.items():
            path = os.path.join(self.folder, marker["files"][name]["file"])
            module = getattr(obj, "module", obj) if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
            try:
                module.load_state_dict(torch.load(path, map_location=device, weights_only=False))
            except Exception as exc:  # a state that does not fit the object the config builds
                raise CheckpointError(f"{path}: cannot load into {name} ({type(exc).__name__}: {exc}); "
                                      f"the config no longer matches the saved experiment") from exc
        later = sorted(e for e in self._partial_epochs() if e > epoch)
        if not clean_up:
            return epoch
        if later:
            LOGGER.warning("%s: the checkpoint of epoch %d was not completed; resuming from epoch %d",
                           self.folder, later[-1], epoch)
        self._remove_all_but(marker)
        if self.records_folder:
            roll_back_records(self.records_folder, marker["records"])
        return epoch

    def best_epoch(self) -> int | None:
        """The epoch of the best-on-validation files of the newest checkpoint (``None`` without one)."""
        markers = self.markers()
        return self._read_marker(max(markers))["best"]["epoch"] if markers else None

    def _verify(self, entry: dict, epoch: int) -> None:
        path = os.path.join(self.folder, entry["file"])
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing; the checkpoint of epoch {epoch} is incomplete. "
                                  f"Refusing to resume from it")
        if os.path.getsize(path) != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: its size or SHA-256 differs from the checkpoint of epoch {epoch}; "
                                  f"the file was altered or truncated. Refusing to resume from it")

    def _partial_epochs(self) -> set[int]:
        epochs = set()
        for name in os.listdir(self.folder):
            match = re.match(r"^.+_(\d+)\.pth", name)
            if match:
                epochs.add(int(match.group(1)))
        return epochs
