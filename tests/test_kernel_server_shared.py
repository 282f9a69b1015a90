"""One in-kernel server per kernel: ``%%chat`` and every ``ChatWidget`` made without a server stream
from the same one, whether or not the extension is loaded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.getipython import get_ipython
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import start_ipython

from nbchat.notebook.conversation import Conversation
from nbchat.notebook.kernel_server import KernelServer, kernel_server, set_kernel_server
from nbchat.notebook.magics import ChatMagics
from nbchat.notebook.widget import ChatWidget
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from tests.test_widget import RecordingComm


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Settings]]:
    """The kernel's server, on the echo backend, counting how often it is started."""
    monkeypatch.delenv("NBCHAT_URL", raising=False)
    monkeypatch.delenv("NBCHAT_TOKEN", raising=False)
    started: list[Settings] = []

    def start(settings: Settings) -> ServerHandle:
        started.append(settings)
        return start_server_thread(settings)

    shared = KernelServer(backend="echo", rate=0.0, start=start)
    old = set_kernel_server(shared)
    yield started
    shared.stop()
    set_kernel_server(old)


async def _ask_two_widgets() -> list[dict[str, Any]]:
    widgets = [ChatWidget(Conversation()) for _ in range(2)]
    try:
        for widget in widgets:
            widget.comm = RecordingComm()
            widget.ask("hello")
            end = await widget.wait()
            assert end is not None and end.status.value == "[DONE]", widget.stats
        return [widget.messages[-1]["provenance"] for widget in widgets]
    finally:
        for widget in widgets:
            widget.close()


def test_two_widgets_and_the_magic_share_one_server(starts: list[Settings]) -> None:
    shared = kernel_server()
    assert ChatWidget(Conversation()).kernel_server is shared
    records = asyncio.run(_ask_two_widgets())
    shell = start_ipython() or get_ipython()
    assert isinstance(shell, InteractiveShell)
    magics = ChatMagics(shell)  # as %load_ext nbchat makes it, after the widgets
    shell.register_magics(magics)
    assert magics.kernel_server is shared
    result = shell.run_cell("%%chat\nhello from the magic")
    assert result.success, result.error_in_exec
    records.append(shell.user_ns["_chat_provenance"])
    urls = {record["server"] for record in records}
    assert len(urls) == 1 and urls == {shared.endpoint().url.rstrip("/")}, records
    assert len(starts) == 1  # one server, one port, one model for the kernel


def test_a_server_handed_in_still_wins(starts: list[Settings]) -> None:
    own = KernelServer(backend="echo", rate=0.0)
    assert ChatWidget(Conversation(), kernel_server=own).kernel_server is own
    assert ChatMagics(None, kernel_server=own).kernel_server is own
    assert not starts
