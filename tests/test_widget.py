"""``ChatWidget`` without a kernel: its comm is replaced by one that records every
message the kernel side would send to the browser, and the browser's clicks are
fed in as the custom messages the front end sends."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import nbchat
from nbchat.backends.base import Backend, Finish, GenerationRequest
from nbchat.notebook.conversation import Conversation
from nbchat.notebook.options import ChatOptions
from nbchat.notebook.widget import ChatWidget
from nbchat.server.serving import ServerHandle
from tests.helpers import TOKEN, RecordingBackend, ServerFactory


class RecordingComm:
    """Stands in for the widget's comm: keeps what would go to the browser."""

    comm_id = "recording"
    kernel = "recording"  # ipywidgets only sends when a comm has a kernel

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.on_send: Callable[[dict[str, Any]], None] | None = None
        self._receive: Callable[[dict[str, Any]], None] | None = None

    def send(self, data: dict[str, Any], buffers: Any = None, **_: Any) -> None:
        self.sent.append(data)
        if self.on_send is not None:
            self.on_send(data)

    def on_msg(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self._receive = callback

    def from_frontend(self, content: dict[str, Any]) -> None:
        """Deliver a custom message as the browser's side of the comm sends it."""
        assert self._receive is not None, "the widget did not listen on its comm"
        self._receive({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})

    def on_close(self, _callback: Any) -> None: ...

    def close(self, *_: Any, **__: Any) -> None: ...

    def custom(self, kind: str) -> list[dict[str, Any]]:
        return [m["content"] for m in self.sent if m.get("method") == "custom" and m["content"]["type"] == kind]

    def state_updates(self) -> list[dict[str, Any]]:
        return [m["state"] for m in self.sent if m.get("method") == "update"]

    def bytes(self) -> int:
        return sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in self.sent)


@pytest.fixture
def make_widget() -> Iterator[Callable[..., tuple[ChatWidget, RecordingComm]]]:
    widgets: list[ChatWidget] = []

    def make(server: ServerHandle, **options: Any) -> tuple[ChatWidget, RecordingComm]:
        conversation = Conversation(ChatOptions(server=server.url, token=TOKEN, max_tokens=None, **options))
        widget = ChatWidget(conversation=conversation)
        comm = RecordingComm()
        widget.comm = comm
        widgets.append(widget)
        return widget, comm

    yield make
    for widget in widgets:
        widget.close()


def click(widget: ChatWidget, content: dict[str, Any]) -> None:
    """What the front end's Send and Stop buttons do: a custom message to the kernel."""
    comm = widget.comm
    assert isinstance(comm, RecordingComm)
    comm.from_frontend(content)


async def test_traffic_grows_with_the_answer_not_with_its_square(
        make_widget: Callable[..., tuple[ChatWidget, RecordingComm]], echo_server: ServerHandle) -> None:
    sizes: dict[int, int] = {}
    for length in (4_000, 16_000):
        widget, comm = make_widget(echo_server)
        answer = "abc<def " * (length // 8)
        click(widget, {"type": "send", "text": answer})
        end = await widget.wait()
        assert end is not None and end.status.value == "[DONE]"
        assert "".join(d["text"] for d in comm.custom("delta")) == answer  # every character once
        sizes[length] = comm.bytes()
        # The echo's answer is the question: it goes with "start", the deltas carry the answer once, and
        # the history (question and answer) is synced once at the end; the rest is a little framing.
        assert sizes[length] < 4 * len(answer) + 3_000, sizes
    assert sizes[16_000] < 4.5 * sizes[4_000], sizes


async def test_deltas_are_coalesced_in_time(make_widget: Callable[..., tuple[ChatWidget, RecordingComm]],
                                            make_server: ServerFactory) -> None:
    widget, comm = make_widget(make_server(rate=400.0))  # 400 chunks a second for ~1.5 s
    began = time.monotonic()
    click(widget, {"type": "send", "text": "abcd" * 600})
    await widget.wait()
    elapsed = time.monotonic() - began
    deltas = len(comm.custom("delta"))
    assert 10 <= deltas <= elapsed / 0.05 + 2, (deltas, elapsed)


async def test_history_is_synced_once_per_turn(make_widget: Callable[..., tuple[ChatWidget, RecordingComm]],
                                               echo_server: ServerHandle) -> None:
    widget, comm = make_widget(echo_server)
    for question in ("one", "two"):
        click(widget, {"type": "send", "text": question})
        await widget.wait()
    history_updates = [s["messages"] for s in comm.state_updates() if "messages" in s]
    assert len(history_updates) == 2
    assert [m["content"] for m in history_updates[-1]] == ["one", "one", "two", "two"]
    assert [s.get("busy") for s in comm.state_updates() if "busy" in s] == [True, False, True, False]
    assert comm.custom("start") == [{"type": "start", "user": "one"}, {"type": "start", "user": "two"}]
    assert widget.stats.startswith("ws · first token") and widget.stats.endswith("[DONE]")


async def test_each_answer_keeps_its_provenance(make_widget: Callable[..., tuple[ChatWidget, RecordingComm]],
                                                echo_server: ServerHandle) -> None:
    widget, comm = make_widget(echo_server, temperature=0.4, system="be brief")
    widget.transport = "sse"
    click(widget, {"type": "send", "text": "where from?"})
    await widget.wait()
    synced = [s["messages"] for s in comm.state_updates() if "messages" in s][-1]
    record = synced[-1]["provenance"]
    assert (record["backend"], record["model"], record["server"]) == ("echo", "echo", echo_server.url)
    assert (record["transport"], record["temperature"], record["system"]) == ("sse", 0.4, "be brief")
    assert record["status"] == "[DONE]" and record["chunks"] == 3 and record["turn_id"]
    assert widget.conversation.exchanges[-1].provenance == record
    assert TOKEN not in json.dumps(comm.sent)  # nothing the browser gets (or a saved widget state keeps) has it


class BurstThenStall(Backend):
    """Two pieces at once, then nothing: the second lands inside the coalescing window."""

    name = "burst"

    @property
    def model_name(self) -> str:
        return "burst"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        yield "first "
        yield "second"
        await asyncio.Event().wait()


async def test_a_coalesced_tail_is_sent_without_waiting_for_more(
        make_widget: Callable[..., tuple[ChatWidget, RecordingComm]], make_server: ServerFactory) -> None:
    widget, comm = make_widget(make_server(BurstThenStall()))
    arrived = asyncio.Event()
    comm.on_send = lambda m: arrived.set() if "second" in m.get("content", {}).get("text", "") else None
    click(widget, {"type": "send", "text": "go"})
    await asyncio.wait_for(arrived.wait(), 5)  # a timer flushed it: no third piece ever comes
    assert "".join(d["text"] for d in comm.custom("delta")) == "first second" and widget.busy
    click(widget, {"type": "stop"})
    end = await widget.wait()
    assert end is not None and end.status.value == "[INTERRUPTED]"


@pytest.mark.parametrize("transport", ["ws", "sse", "stream"])
async def test_stop_mid_stream_interrupts_the_server_turn(
        make_widget: Callable[..., tuple[ChatWidget, RecordingComm]], make_server: ServerFactory,
        transport: str) -> None:
    backend = RecordingBackend(count=1000, interval=0.01)
    widget, comm = make_widget(make_server(backend), transport=transport)
    streaming = asyncio.Event()
    comm.on_send = lambda m: streaming.set() if m.get("content", {}).get("type") == "delta" else None
    click(widget, {"type": "send", "text": "count"})
    await asyncio.wait_for(streaming.wait(), 10)
    click(widget, {"type": "stop"})
    end = await widget.wait()
    assert end is not None and end.status.value == "[INTERRUPTED]"
    assert comm.custom("end")[-1]["status"] == "[INTERRUPTED]"
    assert await asyncio.to_thread(backend.cancelled.wait, 5)  # the model stopped generating
    assert backend.produced < 1000
    last = widget.messages[-1]
    assert last["status"] == "[INTERRUPTED]" and last["content"].startswith("<0>")
    assert "".join(d["text"] for d in comm.custom("delta")) == last["content"]  # the partial answer is kept
    assert widget.stats.endswith("[INTERRUPTED]") and not widget.busy


async def test_stop_while_connecting_still_interrupts(make_widget: Callable[..., tuple[ChatWidget, RecordingComm]],
                                                      make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=1000, interval=0.01)
    widget, _comm = make_widget(make_server(backend))
    click(widget, {"type": "send", "text": "count"})
    click(widget, {"type": "stop"})  # before the task has even connected
    end = await widget.wait()
    assert end is not None and end.status.value == "[INTERRUPTED]"


async def test_transport_picker_and_errors(make_widget: Callable[..., tuple[ChatWidget, RecordingComm]],
                                           echo_server: ServerHandle) -> None:
    widget, comm = make_widget(echo_server)
    widget.set_state({"transport": "stream"})  # what the picker's change sends
    click(widget, {"type": "send", "text": "via ndjson"})
    await widget.wait()
    assert widget.stats.startswith("stream · ")
    widget.conversation.options = widget.conversation.options.merged(token="wrong")
    click(widget, {"type": "send", "text": "refused"})
    assert await widget.wait() is None
    end = comm.custom("end")[-1]
    assert end["status"] == "[ERROR]" and "401" in end["error"] and "\n" not in end["error"]
    assert not widget.busy and "401" in widget.stats
    assert len(widget.conversation) == 1  # the failed turn is not part of the history
    widget.set_state({"transport": "pigeon"})
    click(widget, {"type": "send", "text": "by pigeon"})
    await widget.wait()
    assert "unknown transport 'pigeon'" in comm.custom("end")[-1]["error"] and not widget.busy


async def test_a_busy_widget_ignores_a_second_send(make_widget: Callable[..., tuple[ChatWidget, RecordingComm]],
                                                   make_server: ServerFactory) -> None:
    widget, comm = make_widget(make_server(RecordingBackend(count=20, interval=0.01)))
    assert widget.ask("first") is not None
    assert widget.ask("second") is None and widget.ask("   ") is None
    await widget.wait()
    assert len(comm.custom("start")) == 1


def test_chat_widget_is_exported_lazily_and_the_magic_shares_its_conversation() -> None:
    from IPython.core.getipython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    from nbchat.notebook.magics import ChatMagics

    shell = start_ipython() or get_ipython()
    magics = ChatMagics(shell)
    shell.register_magics(magics)
    widget = shell.run_line_magic("chat", "widget")
    assert isinstance(widget, nbchat.ChatWidget) and widget.conversation is magics.conversation
    widget.close()


def test_front_end_never_parses_model_output_as_html() -> None:
    notebook = pathlib.Path(nbchat.__file__).parent / "notebook"
    sources = [notebook / "widget.js", *sorted((notebook / "js").glob("*.js"))]
    assert len(sources) >= 5
    for path in [*sources, notebook / "static" / "widget.js"]:  # the bundle too: its libraries build nodes
        source = path.read_text(encoding="utf-8")
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                     "DOMParser", "createContextualFragment", "srcdoc"):
            assert sink not in code, (path.name, sink)
    widget = (notebook / "widget.js").read_text(encoding="utf-8")
    assert "requestAnimationFrame" in widget and "msg:custom" in widget
    render = (notebook / "js" / "dom.js").read_text(encoding="utf-8")
    assert "trust: false" in render and "katex.render(" in render and "renderToString" not in render
    assert "html: false" in (notebook / "js" / "parse.js").read_text(encoding="utf-8")
