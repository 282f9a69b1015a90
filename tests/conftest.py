"""Shared fixtures: real nbchat servers on loopback ports, in background threads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nbchat.backends import Backend
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from tests.helpers import TOKEN, ServerFactory


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """Start servers with given settings (echo backend by default); all stop at teardown."""
    handles: list[ServerHandle] = []

    def make(backend: Backend | None = None, **overrides: Any) -> ServerHandle:
        options: dict[str, Any] = {"port": 0, "token": TOKEN, "backend": "echo", "rate": 0.0, **overrides}
        handle = start_server_thread(Settings(**options), backend)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ServerHandle]:
    """One fast echo server shared by a module's read-only tests."""
    handle = start_server_thread(Settings(port=0, token=TOKEN, backend="echo", rate=0.0))
    yield handle
    handle.stop()
