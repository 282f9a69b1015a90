"""The page's own JavaScript, under Node's built-in test runner (``tests/js/*.test.mjs``).

DirectTurn's readers against fake fetch / WebSocket / EventSource servers, the
page's metrics, and the renderer's streaming-equals-one-shot property. They
import the modules in ``nbchat/notebook/js/`` as they are (the renderer needs
the npm libraries ``js/build.sh`` installs; ``npm ci`` runs here when they are
missing). Node is Debian's ``nodejs`` (``.ci/run`` installs it with npm): a
machine without it skips this test, and fails it under CI (``tests/conftest.py``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "nbchat" / "notebook" / "js"
TESTS = sorted((ROOT / "tests" / "js").glob("*.test.mjs"))


def _npm_ci() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: apt-get install -y npm (it brings nodejs; .ci/run installs it)")
    # the libraries the modules import; not the build tools (esbuild, @jupyterlab/builder and its webpack)
    subprocess.run([npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS, check=True,
                   timeout=600)


@pytest.mark.node
def test_the_page_modules_pass_their_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: apt-get install -y nodejs npm (.ci/run installs them)")
    if not (JS / "node_modules" / "markdown-it").is_dir():
        _npm_ci()
    assert len(TESTS) >= 3, TESTS
    done = subprocess.run([node, "--test", *map(str, TESTS)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = dict(re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", done.stdout, re.M))
    assert done.returncode == 0 and summary.get("fail") == "0", done.stdout[-6000:] + done.stderr[-2000:]
    assert int(summary["pass"]) == int(summary["tests"]) >= 25, summary
    assert summary.get("skipped") == "0" and summary.get("todo") == "0", summary
