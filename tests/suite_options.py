"""The test suite's two environment switches, read in one place (conftest.py and the tests import them).

- ``TEST_DEVICE``: ``cpu`` (default) or ``cuda``. The loss, miner, index and runner tests put
  their tensors, models and runs on this device (the ``device`` fixture; "cuda when available"
  defaults and child processes follow it too, conftest.py and :func:`subprocess_env`); ``cuda``
  falls back to ``cpu`` on a machine without CUDA, and the run's header says so.
- ``PML_EXT_REQUIRE_PB_CONFIGS=1``: the tests of powerful-benchmarker's own config files fail,
  instead of skipping, when the folder ``../shared/pb_configs`` beside the repository is absent
  (CI sets it, so a missing folder cannot pass as a shorter run).
"""
from __future__ import annotations

import os
import pathlib

import torch

PB_CONFIGS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "pb_configs"
REQUIRE_PB_CONFIGS = "PML_EXT_REQUIRE_PB_CONFIGS"
PB_CONFIGS_MISSING = (f"PB's config folder is absent: expected ../shared/pb_configs beside the repository "
                      f"({PB_CONFIGS}); set {REQUIRE_PB_CONFIGS}=1 to fail instead of skipping")
NO_CUDA = "needs a CUDA device; this machine has none (run with TEST_DEVICE=cuda on a GPU machine)"


def cuda_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def requested_device() -> str:
    """``TEST_DEVICE``, checked: ``cpu`` or ``cuda``."""
    value = os.environ.get("TEST_DEVICE", "cpu").strip().lower() or "cpu"
    if value not in ("cpu", "cuda"):
        raise ValueError(f"TEST_DEVICE: {value!r} is not cpu or cuda")
    return value


def test_device() -> torch.device:
    """The device the tests run on: ``cuda`` when asked for and present, else ``cpu``."""
    return torch.device("cuda" if requested_device() == "cuda" and cuda_available() else "cpu")


test_device.__test__ = False  # a helper, not a test


def subprocess_env(**extra: str) -> dict:
    """The environment for a test's child processes (runs under torchrun, the CLI): this one plus
    ``extra``, with the GPUs hidden unless the tests run on cuda (a child cannot be monkeypatched)."""
    env = dict(os.environ, **extra)
    if test_device().type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env
