"""Where the main job writes: a fresh folder per run, published only once the run has finished.

    <root>/main_job_runs/<YYYYmmdd-HHMMSS>/   one run: comparison.csv, comparison.png, a folder per method
    <root>/main_job_runs/.lock                held by the running main job
    <root>/main_job -> main_job_runs/<...>    a symbolic link to the latest *finished* run

A run writes only into its own new folder; the link is swapped (a temporary link renamed over
it, atomic) after the table and plot are written. So a run that fails, at start-up or after
an hour, leaves every earlier run and the link as they were, and no run is ever deleted.
A ``main_job`` folder made by an earlier version of the main job becomes one of the runs.
"""
from __future__ import annotations

import datetime
import logging
import os

__all__ = ["MainJobFolders"]

LOGGER = logging.getLogger("pml_ext.runner")
MARKER = ".pml_ext_main_job"  # in every folder the main job made
RUNS = "main_job_runs"
LINK = "main_job"


class MainJobFolders:
    """The main job's folders under ``root_experiment_folder``."""

    def __init__(self, root_experiment_folder: str):
        self.root = os.path.abspath(root_experiment_folder)
        self.link = os.path.join(self.root, LINK)
        self.runs = os.path.join(self.root, RUNS)

    def check(self) -> None:
        """Raise (before anything is written) when ``main_job`` is not the main job's."""
        from ..config.config_error import ConfigError

        if os.path.islink(self.link):
            target = os.path.realpath(self.link)
            if os.path.dirname(target) != os.path.realpath(self.runs):
                raise ConfigError("command line", "--root_experiment_folder",
                                  f"{self.link} links to {target}, not to a run in {self.runs}; move it away "
                                  f"or choose another --root_experiment_folder")
        elif os.path.exists(self.link) and not os.path.isfile(os.path.join(self.link, MARKER)):
            raise ConfigError("command line", "--root_experiment_folder",
                              f"{self.link} exists and was not made by the main job; move it away or choose "
                              f"another --root_experiment_folder")
        if os.path.exists(self.runs) and not os.path.isdir(self.runs):
            raise ConfigError("command line", "--root_experiment_folder", f"{self.runs} is not a folder")

    def new_run(self) -> str:
        """Create and return this run's folder (call while holding the lock on :attr:`runs`)."""
        folder = self._unused(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        os.makedirs(folder)
        open(os.path.join(folder, MARKER), "w").close()
        return folder

    def publish(self, run_folder: str) -> None:
        """Point ``main_job`` at the finished ``run_folder`` (an atomic rename of a new link)."""
        if os.path.isdir(self.link) and not os.path.islink(self.link):  # an earlier version's folder
            kept = self._unused("earlier-" + datetime.datetime.fromtimestamp(
                os.path.getmtime(self.link)).strftime("%Y%m%d-%H%M%S"))
            os.rename(self.link, kept)
            LOGGER.info("main job: the earlier results in %s are kept in %s", self.link, kept)
        tmp = self.link + ".tmp"
        if os.path.islink(tmp):  # left by a run killed between these two lines: only a link
            os.remove(tmp)
        os.symlink(os.path.relpath(run_folder, self.root), tmp)
        os.replace(tmp, self.link)

    def _unused(self, name: str) -> str:
        folder, n = os.path.join(self.runs, name), 1
        while os.path.lexists(folder):  # e.g. two runs in the same second
            folder, n = os.path.join(self.runs, f"{name}-{n}"), n + 1
        return folder
