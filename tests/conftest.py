"""Shared fixtures: real nbchat servers on loopback ports, in background threads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nbchat.backends import Backend
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread

TOKEN = "test-token-0123456789"

# A long message that exercises what breaks naive clients: Chinese and emoji
# (multi-byte UTF-8 split across network chunks), quotes, backslashes, JSON
# escapes, CR/LF and a lone "data: " that a split-on-prefix parser would eat.
LONG_MESSAGE = (
    "你好，世界！这是一个流式输出测试。 Streaming \"quotes\", a \\ backslash, a tab\t,\n"
    "a second line\r\nwith CRLF, emoji 🚀🙂👩‍💻, accents: déjà vu, naïve; data: not a field\n\n"
    "{\"json\": [1, 2]} </script> ` ``` code ``` "
) * 8

ServerFactory = Callable[..., ServerHandle]


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
