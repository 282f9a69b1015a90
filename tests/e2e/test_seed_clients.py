"""The seed's own browser clients (native WebSocket, event-source-polyfill,
native EventSource, a fetch reader) in headless Chromium against
`nbchat serve --backend echo`: the shared check, run as a test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT.parent / "shared" / "checks" / "seed_clients.py"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.skipif(not CHECK.exists(), reason=f"the shared checks are not beside this checkout ({CHECK})")
def test_seed_browser_clients_get_the_exact_text_and_done() -> None:
    nbchat = shutil.which("nbchat")
    assert nbchat is not None, "nbchat is not on PATH: pip install -e ."
    out = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed, 0 failed" in out.stdout
