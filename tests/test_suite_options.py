"""The suite's switches (tests/suite_options.py): a missing PB config folder is reported, or fails
the run under ``PML_EXT_REQUIRE_PB_CONFIGS=1``; ``TEST_DEVICE`` is checked.

Oracle: pytest itself, run on a copy of tests/ placed where no ``../shared/pb_configs`` exists,
and its exit status and summary.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from suite_options import PB_CONFIGS_MISSING, REQUIRE_PB_CONFIGS

TESTS = pathlib.Path(__file__).parent
PB_TEST = "tests/test_runner_config.py::test_with_daml_gives_pbs_documented_result"


@pytest.fixture(scope="module")
def clone_without_pb_configs(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("alone") / "repo"  # ../shared/pb_configs is not beside it
    shutil.copytree(TESTS, root / "tests", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copytree(TESTS / "data" / "pb_configs", root / "tests" / "data" / "pb_configs")
    return root


def pytest_in(root: pathlib.Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in (REQUIRE_PB_CONFIGS, "TEST_DEVICE")}
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-ra", *args], cwd=root,
                          env=environment, capture_output=True, text=True, timeout=600)


def test_without_the_folder_pb_tests_skip_with_one_reason_and_a_summary_line(clone_without_pb_configs):
    result = pytest_in(clone_without_pb_configs, PB_TEST)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 skipped" in result.stdout
    # the reason names the folder of that clone (PB_CONFIGS_MISSING names this one's)
    reason = PB_CONFIGS_MISSING.split("(")[0]
    assert f"1 test(s) of PB's own config files skipped: {reason}" in result.stdout
    assert f"{reason}({clone_without_pb_configs.parent / 'shared' / 'pb_configs'})" in result.stdout


def test_required_and_missing_the_pb_tests_fail(clone_without_pb_configs):
    result = pytest_in(clone_without_pb_configs, PB_TEST, **{REQUIRE_PB_CONFIGS: "1"})
    assert result.returncode == 1 and "1 error" in result.stdout, result.stdout[-2000:]
    assert f"{REQUIRE_PB_CONFIGS}=1: PB's config folder is absent" in result.stdout


def test_an_unknown_test_device_is_a_usage_error(clone_without_pb_configs):
    result = pytest_in(clone_without_pb_configs, "--collect-only", "-q", PB_TEST, TEST_DEVICE="tpu")
    assert result.returncode == 4 and "TEST_DEVICE: 'tpu' is not cpu or cuda" in result.stderr
