"""The kernel's half of ``ChatWidget(direct=True)``, without a kernel or a browser.

The page's messages (hello, done) are fed in as custom messages; what the
kernel sends back is recorded. The browser half is tested in
``e2e/test_direct_page.py`` and, in JupyterLab, in ``e2e/test_jupyterlab.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import traitlets

from nbchat.notebook.conversation import Conversation
from nbchat.notebook.kernel_server import KernelServer
from nbchat.notebook.widget import ChatWidget
from tests.test_widget import RecordingComm, click

PAGE_ORIGIN = "http://127.0.0.1:8888"


@pytest.fixture
def kernel_server() -> Iterator[KernelServer]:
    server = KernelServer(backend="echo", rate=0.0)
    yield server
    server.stop()


@pytest.fixture
def direct(kernel_server: KernelServer) -> Iterator[tuple[ChatWidget, RecordingComm]]:
    with fresh_direct(kernel_server, transport="sse") as made:
        yield made


def block_until(comm: RecordingComm, kind: str, seconds: float = 30.0, count: int = 1) -> list[dict[str, Any]]:
    """Block the event loop, as a cell's ``time.sleep`` blocks the kernel's, until ``kind`` was sent
    ``count`` times."""
    deadline = time.monotonic() + seconds
    while len(comm.custom(kind)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return comm.custom(kind)


@contextmanager
def fresh_direct(kernel_server: KernelServer, **options: Any) -> Iterator[tuple[ChatWidget, RecordingComm]]:
    """A direct widget just made (its endpoint being resolved), with a comm that records what it sends."""
    comm = RecordingComm()
    # the comm is given, not set after: the endpoint thread starts with the widget and may send at once
    widget = ChatWidget(Conversation(), direct=True, kernel_server=kernel_server, comm=comm, **options)
    try:
        yield widget, comm
    finally:
        widget.close()


async def wait_for(comm: RecordingComm, kind: str) -> dict[str, Any]:
    for _ in range(300):  # the endpoint is resolved in a thread: give it up to 30 s (the echo server starts fast)
        found = comm.custom(kind)
        if found:
            return found[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind!r} message; sent: {comm.sent}")


async def test_hello_gets_the_endpoint_and_admits_the_page_origin(direct: tuple[ChatWidget, RecordingComm],
                                                                   kernel_server: KernelServer) -> None:
    widget, comm = direct
    click(widget, {"type": "hello", "origin": PAGE_ORIGIN})
    endpoint = (await wait_for(comm, "endpoint"))["endpoint"]
    assert endpoint["token"] and endpoint["loopback"] is True and endpoint["port"] > 0
    assert (await wait_for(comm, "context"))["request"] == {"conversation": [], "maxTokens": 512}
    async with httpx.AsyncClient() as client:  # the page's origin is admitted now; another is not
        ok = await client.get(endpoint["url"] + "/v1/models",
                              headers={"Origin": PAGE_ORIGIN, "token": endpoint["token"]})
        foreign = await client.get(endpoint["url"] + "/v1/models",
                                   headers={"Origin": "http://evil.example", "token": endpoint["token"]})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == PAGE_ORIGIN
    assert foreign.status_code == 403


async def test_the_token_never_enters_the_widget_state(direct: tuple[ChatWidget, RecordingComm]) -> None:
    widget, comm = direct
    click(widget, {"type": "hello", "origin": PAGE_ORIGIN})
    token = (await wait_for(comm, "endpoint"))["endpoint"]["token"]
    widget.ask("hello")
    assert comm.custom("ask")[-1]["text"] == "hello"
    # what a saved notebook keeps is the synced state: it must not hold the token
    assert token not in json.dumps(widget.get_state())
    assert all(token not in json.dumps(update) for update in comm.state_updates())


async def test_ask_goes_to_the_page_and_its_answer_joins_the_conversation(
        direct: tuple[ChatWidget, RecordingComm]) -> None:
    widget, comm = direct
    widget.conversation.record("earlier", "from %%chat", "[DONE]")
    click(widget, {"type": "hello", "origin": PAGE_ORIGIN})
    await wait_for(comm, "endpoint")
    pending = widget.ask("next question")
    assert pending is not None and not pending.done()
    request = comm.custom("ask")[-1]["request"]
    assert request["conversation"] == [{"role": "user", "content": "earlier"},
                                       {"role": "assistant", "content": "from %%chat"}]
    metrics = {"transport": "sse", "route": "proxy", "chunks": 3, "ttft_ms": 12.5}
    click(widget, {"type": "done", "user": "next question", "answer": "an answer", "status": "[INTERRUPTED]",
                   "metrics": metrics, "stats": "sse proxy · ..."})
    assert (await widget.wait()) is not None and widget.last_end is not None
    assert widget.last_end.status.value == "[INTERRUPTED]" and widget.last_metrics == metrics
    assert [(e.user, e.answer) for e in widget.conversation.exchanges][-1] == ("next question", "an answer")
    assert widget.messages[-1] == {"role": "assistant", "content": "an answer", "status": "[INTERRUPTED]"}
    # the page's next Send builds on the conversation as it is now
    assert comm.custom("context")[-1]["request"]["conversation"][-1] == {"role": "assistant", "content": "an answer"}


async def test_the_endpoint_and_an_ask_reach_the_page_while_the_kernel_is_busy(kernel_server: KernelServer) -> None:
    """Run All: show the widget, then ask and block the loop (time.sleep); nothing the page needs may wait."""
    with fresh_direct(kernel_server, transport="stream") as (widget, comm):
        pending = widget.ask("while the kernel sleeps")
        assert block_until(comm, "ask"), comm.sent  # the kernel's loop stays blocked for all of this
        # the page needs the endpoint and the conversation before the ask: they come first, in that order
        kinds = [m["content"]["type"] for m in comm.sent if m.get("method") == "custom"]
        first_ask = kinds.index("ask")
        assert "endpoint" in kinds[:first_ask] and "context" in kinds[:first_ask], kinds
        assert comm.custom("endpoint")[-1]["endpoint"]["token"] == kernel_server.endpoint().token
        ask = comm.custom("ask")[-1]
        assert ask["text"] == "while the kernel sleeps" and isinstance(ask["id"], int)
        assert pending is not None and not pending.done()


async def test_until_the_page_is_heard_from_what_it_needs_is_sent_again(kernel_server: KernelServer) -> None:
    with fresh_direct(kernel_server) as (widget, comm):
        widget.ask("hello")
        # a page that loaded the widget's module late still gets the endpoint and the ask
        asks = block_until(comm, "ask", count=3)
        assert len(asks) >= 3 and len({a["id"] for a in asks}) == 1, asks  # the same ask: the page starts it once
        click(widget, {"type": "hello", "origin": PAGE_ORIGIN})
        # the resending thread sees the page was heard from: nothing more within a pause longer than its longest
        counts = []
        for _ in range(6):  # a starved thread (a busy machine) may still send one batch it had begun
            counts.append(len(comm.sent))
            await asyncio.sleep(1.5)
            if len(comm.sent) == counts[-1]:
                break
        else:
            raise AssertionError(f"still sending after the page said hello: {counts}")


async def test_a_failed_start_is_told_to_the_page_while_the_kernel_is_busy() -> None:
    def broken(_settings: Any) -> Any:
        raise OSError("no free port, say")

    with fresh_direct(KernelServer(start=broken)) as (_widget, comm):
        assert block_until(comm, "failed", 5)[-1]["error"] == "OSError: no free port, say"


async def test_local_jupyter_servers_are_admitted_before_the_page_says_hello(
        kernel_server: KernelServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jpserver-1.json").write_text(json.dumps({"url": "http://localhost:8899/", "pid": 1}))
    (tmp_path / "jpserver-2.json").write_text(json.dumps({"url": "http://example.org:8888/", "pid": 2}))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    with fresh_direct(kernel_server) as (_widget, comm):
        endpoint = block_until(comm, "endpoint")[-1]["endpoint"]
        async with httpx.AsyncClient() as client:
            statuses = [(await client.get(endpoint["url"] + "/v1/models", headers={"Origin": origin,
                                                                                   "token": endpoint["token"]})
                         ).status_code for origin in ("http://127.0.0.1:8899", "http://localhost:8899",
                                                      "http://example.org:8888", "http://127.0.0.1:8900")]
        assert statuses == [200, 200, 403, 403]  # only loopback Jupyter servers of this machine


def test_openai_is_refused_in_direct_mode_and_not_offered() -> None:
    with pytest.raises(ValueError, match="cannot stream browser-direct: use one of ws, sse, stream"):
        ChatWidget(Conversation(), direct=True, transport="openai")
    with fresh_direct(KernelServer(start=_never), transport="fetch") as (widget, _comm):
        assert widget.transport == "stream" and widget.transports == ["ws", "sse", "stream"]
        with pytest.raises(traitlets.TraitError, match="cannot stream browser-direct"):
            widget.transport = "openai"
    relayed = ChatWidget(Conversation(), transport="openai")
    assert relayed.transports == ["ws", "sse", "stream", "openai"]
    relayed.close()


def _never(_settings: Any) -> Any:
    raise OSError("not started in this test")


async def test_stop_is_forwarded_to_the_page(direct: tuple[ChatWidget, RecordingComm]) -> None:
    widget, comm = direct
    widget.stop()
    assert comm.custom("stop") == [{"type": "stop"}]


def test_an_unknown_route_is_refused() -> None:
    with pytest.raises(ValueError, match="route must be one of"):
        ChatWidget(Conversation(), direct=True, route="tunnel")


@pytest.mark.parametrize(("server", "what"), [(None, "starting the nbchat server in the kernel"),
                                              ("http://127.0.0.1:9", "resolving")])
def test_the_page_hears_the_kernel_server_is_starting_only_when_it_is(
        kernel_server: KernelServer, monkeypatch: pytest.MonkeyPatch, server: str | None, what: str) -> None:
    """As the magic says it: a widget given a server (or NBCHAT_URL) starts no server in the kernel."""
    import nbchat.notebook.direct as direct

    monkeypatch.delenv("NBCHAT_URL", raising=False)
    resolved = threading.Event()

    def resolve(*args: Any) -> Any:  # the endpoint stays unresolved until the test has read the page's note
        resolved.wait(30)
        raise OSError("not needed here")

    monkeypatch.setattr(direct, "resolve_endpoint", resolve)
    comm = RecordingComm()
    widget = ChatWidget(Conversation(), direct=True, server=server, token="t" if server else None,
                        kernel_server=kernel_server, comm=comm)
    try:
        assert {m["what"] for m in block_until(comm, "pending", 10)} == {what}
    finally:
        resolved.set()
        widget.close()
