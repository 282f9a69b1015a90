"""The kernel's half of ``ChatWidget(direct=True)``, without a kernel or a browser.

The page's messages (hello, done) are fed in as custom messages; what the
kernel sends back is recorded. The browser half is tested in
``e2e/test_direct_page.py`` and, in JupyterLab, in ``e2e/test_jupyterlab.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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
    widget = ChatWidget(Conversation(), direct=True, kernel_server=kernel_server, transport="sse")
    comm = RecordingComm()
    widget.comm = comm
    yield widget, comm
    widget.close()


async def wait_for(comm: RecordingComm, kind: str) -> dict[str, Any]:
    import asyncio

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


async def test_stop_is_forwarded_to_the_page(direct: tuple[ChatWidget, RecordingComm]) -> None:
    widget, comm = direct
    widget.stop()
    assert comm.custom("stop") == [{"type": "stop"}]


def test_an_unknown_route_is_refused() -> None:
    with pytest.raises(ValueError, match="route must be one of"):
        ChatWidget(Conversation(), direct=True, route="tunnel")
