"""What the browser tests share: Debian's Chromium, driven by Playwright (no downloaded browser), one
JupyterLab server for the session, and where their screenshots go."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nbchat.bench.chromium import CHROMIUM, launch
from nbchat.bench.longpage import Lab, lab_server

#: ``NBCHAT_DOCS_IMG=1``: the screenshots the docs show are written to docs/img (to refresh them on purpose)
DOCS_IMG_ENV = "NBCHAT_DOCS_IMG"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
#: seconds for JupyterLab, a page or a kernel to start on a busy 2-core machine
START_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module (Playwright's sync API allows one instance at a time, and marks its
    loop as the running one between calls: it must be gone before the next module's asyncio tests)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs {CHROMIUM}")
    with sync_playwright() as pw:
        chromium = launch(pw)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One JupyterLab server for every module (each names its notebooks and workspaces its own way)."""
    if shutil.which("jupyter") is None:
        pytest.skip("needs JupyterLab (pip install -e '.[lab]')")
    with lab_server(tmp_path_factory.mktemp("lab"), START_TIMEOUT) as running:
        yield running


@pytest.fixture(scope="module")
def lab(jupyterlab: Lab) -> Iterator[Lab]:
    """The session's JupyterLab for one module; the kernels the module started are shut down after it."""
    yield jupyterlab
    shut_down_kernels(jupyterlab)


def shut_down_kernels(lab: Lab) -> None:
    """End every session and kernel of ``lab`` (each kernel may hold an nbchat server and a model process)."""
    with httpx.Client(base_url=lab.url, headers={"Authorization": f"token {lab.token}"}, timeout=60) as api:
        for session in api.get("/api/sessions").raise_for_status().json():
            api.delete(f"/api/sessions/{session['id']}")
        for kernel in api.get("/api/kernels").raise_for_status().json():
            api.delete(f"/api/kernels/{kernel['id']}")


@pytest.fixture(scope="session")
def docs_img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a screenshot the docs show goes: docs/img when ``NBCHAT_DOCS_IMG=1``, else a temporary directory,
    so that an ordinary run leaves the committed images alone."""
    if os.environ.get(DOCS_IMG_ENV) == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        return DOCS_IMG
    return tmp_path_factory.mktemp("docs-img")
