"""Ctrl-C (SIGINT) ends ``pml-ext run`` with one line: where the run stopped and how to continue it.

``ExperimentRunner`` turns the ``KeyboardInterrupt`` into a :class:`RunInterrupted` that says where
it stopped (split scheme, epoch, last complete checkpoint); the command line prints that with the
command that resumes it, built from the options that name the experiment.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
from typing import Sequence

from ..config.config_merge import OPTION_WORD

__all__ = ["RunInterrupted", "interrupted_at", "resume_command", "interrupt_line"]

# The options a resume needs again: the saved configs supply everything else.
RESUME_OPTIONS = ("experiment_name", "root_experiment_folder", "dataset_root", "register_module",
                  "bayes_opt_iters", "reproductions")
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as shells report it


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C; ``where`` says where, ``started`` whether a resume can continue it."""

    def __init__(self, where: str, started: bool):
        super().__init__(where)
        self.where, self.started = where, started


def _last_checkpoint(scheme_folder: str) -> int | None:
    epochs = [int(m.group(1)) for path in glob.glob(os.path.join(scheme_folder, "saved_models", "checkpoint_*.json"))
              if (m := re.search(r"checkpoint_(\d+)\.json$", path))]
    return max(epochs) if epochs else None


def interrupted_at(experiment_folder: str, objects: dict) -> str:
    """``<folder>, split scheme S, epoch E (last checkpoint: epoch K)`` for the scheme running last
    (``objects``: the runner's per-scheme objects, with their trainer)."""
    if not objects:
        return f"{experiment_folder}, before training"
    scheme, built = list(objects.items())[-1]
    epoch = getattr(built.get("trainer"), "epoch", None)
    last = _last_checkpoint(os.path.join(experiment_folder, scheme))
    at = f", epoch {epoch}" if isinstance(epoch, int) else ""
    saved = f"epoch {last}" if last is not None else "none"
    return f"{experiment_folder}, split scheme {scheme}{at} (last checkpoint: {saved})"


def resume_command(argv: Sequence[str]) -> str:
    """The ``pml-ext run`` command continuing the run ``argv`` (the words after ``run``) started."""
    words, keep = ["pml-ext", "run"], False
    for word in argv:
        if OPTION_WORD.match(word):
            keep = word[2:] in RESUME_OPTIONS
        if keep:
            words.append(word)
    return shlex.join(words + ["--resume_training", "latest"])


def interrupt_line(exc: KeyboardInterrupt, argv: Sequence[str]) -> str:
    """The console's one line after Ctrl-C."""
    if "--experiment_name" not in argv:  # the main job starts over when run again
        where = f"main job, {exc.where}" if isinstance(exc, RunInterrupted) else "main job"
        return f"interrupted: {where}; `{shlex.join(['pml-ext', 'run', *argv])}` runs it again"
    if not isinstance(exc, RunInterrupted):
        return "interrupted before the run started; the same command starts it"
    if not exc.started and "--bayes_opt_iters" not in argv:  # a search resumes from its study
        return f"interrupted: {exc.where}; nothing was saved yet, so the same command starts it again"
    return f"interrupted: {exc.where}; resume with: {resume_command(argv)}"
