"""What ``pml-ext run`` prints: progress and the final table by default, everything with ``--verbose``.

Every message still goes to the experiment's ``run.log``; the console gets warnings, one progress
line (a bar on a terminal) per method or epoch, and the final table. PML's per-epoch messages
and tqdm bars of its trainer and tester only appear with ``--verbose``. A warning is shown once.
What native libraries print while the accuracy is computed (FAISS's k-means warnings) goes to
run.log. Under ``torchrun`` only rank 0 prints anything but errors.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import warnings
from typing import Callable, Iterator

__all__ = ["PROGRESS", "configure_output", "console_rank", "EpochProgress", "print_user_error", "native_output_to_log",
           "log_native_output"]

LOGGER = logging.getLogger("pml_ext.runner")
PROGRESS = logging.getLogger("pml_ext.runner.progress")  # one line per finished method; always shown


_console: list[logging.Handler] = []
_native_to_log = [True]  # --verbose shows native libraries' output (and PML's tester bars) as they come


def console_rank() -> int:
    """This process's rank under ``torchrun`` (its ``RANK`` variable; 0 otherwise): only rank 0 talks."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def configure_output(verbose: bool) -> None:
    """Console logging for the command line (a second call replaces the first one's handler).

    Under ``torchrun`` the other ranks print errors only: every rank runs the same steps, so
    their progress lines and warnings would repeat rank 0's once per rank."""
    root = logging.getLogger()
    while _console:
        root.removeHandler(_console.pop())
    console = logging.StreamHandler(sys.stderr)
    _console.append(console)
    console.setFormatter(logging.Formatter("%(message)s"))
    if console_rank() != 0:
        console.addFilter(lambda r: r.levelno >= logging.ERROR)
    elif not verbose:  # warnings, and the progress lines of the main job
        console.addFilter(lambda r: r.levelno >= logging.WARNING or r.name == PROGRESS.name)
    root.addHandler(console)
    _native_to_log[0] = not verbose
    root.setLevel(logging.INFO)
    LOGGER.setLevel(logging.INFO)  # run.log gets every message whatever the console shows
    logging.captureWarnings(True)
    warnings.formatwarning = _one_line_warning
    warnings.filterwarnings("once")
    if not verbose:
        # PML's trainer formats its bar's text from a loss that still requires grad; with the bar off
        # this says nothing a user can act on (and torch repeats it for every run of the main job).
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    _quiet_bars(not verbose)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {category.__name__}: {message} ({os.path.basename(filename)}:{lineno})"


def _quiet_bars(quiet: bool) -> None:
    """PML's trainer and tester draw a tqdm bar per epoch and per evaluation (``tqdm.tqdm(...)``,
    looked up at each call), which without a terminal become hundreds of lines. Quiet, ``tqdm.tqdm``
    is a subclass whose bars are off unless a caller passes ``disable`` itself (as
    :class:`EpochProgress` does)."""
    import tqdm

    original = getattr(tqdm.tqdm, "_pml_ext_original", tqdm.tqdm)
    if not quiet:
        tqdm.tqdm = original
        return

    class QuietTqdm(original):
        _pml_ext_original = original

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("disable", True)
            super().__init__(*args, **kwargs)

    tqdm.tqdm = QuietTqdm


class EpochProgress:
    """One bar over a run's epochs, on a terminal only (without one, the final table says it all)."""

    def __init__(self, name: str, start_epoch: int, num_epochs: int):
        import tqdm

        self.bar = tqdm.tqdm(total=num_epochs, initial=start_epoch - 1, desc=name, unit="epoch",
                             disable=console_rank() != 0 or not sys.stderr.isatty(), leave=False)

    def update(self, epoch: int, score: str = "") -> None:
        if score:
            self.bar.set_postfix_str(score, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def print_user_error(exc: BaseException) -> int:
    """The console's single ``error: ...`` line; returns the exit status for user errors (2)."""
    message = " ".join(str(exc).split("\n"))
    print(f"error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def native_output_to_log(logger: logging.Logger = LOGGER) -> Iterator[None]:
    """What C/C++ libraries write to the process's stdout and stderr inside the block (FAISS's
    k-means warns once per NMI, ``WARNING clustering 90 points to 5 centroids ...``) goes to
    ``logger`` (run.log) at INFO, line by line, instead of the terminal.

    FAISS writes to file descriptors 1 and 2, below Python's ``sys.stderr``, so the descriptors
    themselves are pointed at a temporary file; the console's log handler keeps the terminal.
    """
    if not _native_to_log[0]:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except OSError:  # no descriptors to redirect (a closed stdout): nothing to capture
        yield
        return
    moved = [(h, h.stream) for h in _console if _writes_to(h.stream, 2)]
    terminal = os.fdopen(saved[2], "w", buffering=1, closefd=False)
    with tempfile.TemporaryFile() as capture:
        try:
            for handler, _ in moved:
                handler.setStream(terminal)
            for fd in saved:
                os.dup2(capture.fileno(), fd)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            for handler, stream in moved:
                handler.setStream(stream)
            terminal.close()
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip():
                    logger.info("native library output: %s", line.strip())


def _writes_to(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
        return False


def log_native_output(func: Callable) -> Callable:
    """``func`` with :func:`native_output_to_log` around every call (the runner wraps the accuracy
    calculator's ``get_accuracy``, where FAISS's k-means runs for NMI)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with native_output_to_log():
            return func(*args, **kwargs)

    return wrapper
