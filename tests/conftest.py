import os

import pytest
import torch
from suite_options import (NO_CUDA, PB_CONFIGS, PB_CONFIGS_MISSING, REQUIRE_PB_CONFIGS, cuda_available,
                           requested_device, test_device)

# Two cores: keep torch from oversubscribing when tests spawn helpers.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    config.addinivalue_line("markers", "pb_configs: reads PB's config folder ../shared/pb_configs (skipped "
                                       f"without it; failed instead under {REQUIRE_PB_CONFIGS}=1)")
    config.addinivalue_line("markers", "cuda: runs only with a CUDA device (skipped with a reason on CPU)")
    try:
        requested_device()
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_report_header(config):
    asked, device = requested_device(), test_device()
    note = " (TEST_DEVICE=cuda, but no CUDA device here: falling back to cpu)" if asked != device.type else ""
    return f"pml_ext test device: {device}{note}; PB configs: {PB_CONFIGS if PB_CONFIGS.is_dir() else 'absent'}"


def pytest_runtest_setup(item):
    if item.get_closest_marker("pb_configs") and not PB_CONFIGS.is_dir():
        if os.environ.get(REQUIRE_PB_CONFIGS) == "1":
            pytest.fail(f"{REQUIRE_PB_CONFIGS}=1: {PB_CONFIGS_MISSING.split(';')[0]}", pytrace=False)
        pytest.skip(PB_CONFIGS_MISSING)
    if item.get_closest_marker("cuda") and not cuda_available():
        pytest.skip(NO_CUDA)


def pytest_terminal_summary(terminalreporter):
    # -ra lists every skip; this line says in one place how much of PB's own configs went untested.
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if PB_CONFIGS_MISSING in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("-", f"{len(skipped)} test(s) of PB's own config files skipped: "
                                        f"{PB_CONFIGS_MISSING}", yellow=True)


@pytest.fixture
def device() -> torch.device:
    """``TEST_DEVICE`` (cpu by default; cuda when asked for and present)."""
    return test_device()


@pytest.fixture(autouse=True)
def cuda_when_available_means_the_test_device(monkeypatch):
    # The runner's ``device: null`` and PML's trainers, testers and accuracy calculator pick
    # "cuda when available" through this one function: in the tests it picks TEST_DEVICE, so a
    # GPU machine runs them on the CPU unless TEST_DEVICE=cuda.
    from pytorch_metric_learning.utils import common_functions

    monkeypatch.setattr(common_functions, "use_cuda_if_available", test_device)
