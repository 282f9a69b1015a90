"""The test tiers: a test whose tool is missing is skipped with a one-line reason,
except under CI, where the same test fails (CI runs every tier)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from tests.conftest import MAX_WORKERS, pytest_xdist_auto_num_workers

ROOT = Path(__file__).resolve().parents[1]
#: a Redis test: with no redis-server on PATH it can neither run nor pass
REDIS_TEST = "tests/test_shared_store.py::test_interrupt_on_b_stops_the_generation_on_a"


def run_without_tools(tmp_path: Path, ci: str | None, workers: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # an empty PATH: no redis-server, no node; the interpreter is named by its full path
    env.update(PATH=str(tmp_path), PYTHONPATH=str(ROOT), **({"CI": ci} if ci is not None else {}))
    return subprocess.Popen([sys.executable, "-m", "pytest", REDIS_TEST, "-rs", "-q", "-p", "no:cacheprovider",
                             "-n", str(workers)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # two pytest processes: seconds of start-up each, for a rule CI relies on
@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "two-workers"])
def test_a_missing_tool_skips_outside_ci_and_fails_under_ci(tmp_path: Path, workers: int) -> None:
    local, ci = run_without_tools(tmp_path, None, workers), run_without_tools(tmp_path, "true", workers)
    local_out, ci_out = local.communicate(timeout=120)[0], ci.communicate(timeout=120)[0]
    assert local.returncode == 0, local_out
    assert "1 skipped" in local_out and "needs redis-server (apt-get install redis-server)" in local_out, local_out
    assert ci.returncode == 1, ci_out  # the skip is decided at setup: the test errors there
    assert "1 error" in ci_out and "CI runs every tier: this test needs redis-server" in ci_out, ci_out


def test_the_suite_runs_in_workers_and_named_tests_in_this_process() -> None:
    def workers(*args: str) -> int:
        return pytest_xdist_auto_num_workers(cast(pytest.Config, SimpleNamespace(args=list(args))))

    assert 1 <= workers("tests") <= MAX_WORKERS
    assert workers() == workers("tests")  # testpaths
    assert workers("tests/test_tiers.py") == workers("tests/test_tiers.py::test_x") == 0


def test_a_modules_tests_share_a_worker(request: pytest.FixtureRequest) -> None:
    group = request.node.get_closest_marker("xdist_group")
    assert group is not None and group.args == ("tests/test_tiers.py",)
