"""The test tiers: a test whose tool is missing is skipped with a one-line reason,
except under CI, where the same test fails (CI runs every tier)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: a Redis test: with no redis-server on PATH it can neither run nor pass
REDIS_TEST = "tests/test_shared_store.py::test_interrupt_on_b_stops_the_generation_on_a"


def run_without_tools(tmp_path: Path, ci: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # an empty PATH: no redis-server, no node; the interpreter is named by its full path
    env.update(PATH=str(tmp_path), PYTHONPATH=str(ROOT), **({"CI": ci} if ci is not None else {}))
    return subprocess.Popen([sys.executable, "-m", "pytest", REDIS_TEST, "-rs", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # two pytest processes: seconds of start-up each, for a rule CI relies on
def test_a_missing_tool_skips_outside_ci_and_fails_under_ci(tmp_path: Path) -> None:
    local, ci = run_without_tools(tmp_path, None), run_without_tools(tmp_path, "true")  # in parallel
    local_out, ci_out = local.communicate(timeout=120)[0], ci.communicate(timeout=120)[0]
    assert local.returncode == 0, local_out
    assert "1 skipped" in local_out and "needs redis-server (apt-get install redis-server)" in local_out, local_out
    assert ci.returncode == 1, ci_out  # the skip is decided at setup: the test errors there
    assert "1 error" in ci_out and "CI runs every tier: this test needs redis-server" in ci_out, ci_out
