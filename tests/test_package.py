"""Package habits: a light import, lint and types clean (the static checks are in the
``static`` tier: the README's fast layer leaves them to ``ruff check nbchat tests && mypy``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["starlette", "uvicorn", "httpx", "websockets", "llama_cpp", "IPython", "ipywidgets", "anywidget",
         "matplotlib", "openai"]


def test_import_nbchat_is_light() -> None:
    code = ("import sys, json, nbchat; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


@pytest.mark.static
def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("needs ruff: pip install -e '.[test]'")  # fails under CI (conftest)
    out = subprocess.run([ruff, "check", "nbchat", "tests"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.static
def test_mypy_strict_is_clean() -> None:
    pytest.importorskip("mypy", reason="needs mypy: pip install -e '.[test]'")
    out = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
