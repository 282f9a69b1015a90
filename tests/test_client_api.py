"""The client API a Python caller meets: options on stream(), turns as context
managers that end the turn on leaving, End.ok / raise_for_status(), collect(),
the caller's own http_client, "ndjson" as a transport name, and start failures
as NBChatError. Real servers on loopback ports, except where the point is the
caller's own httpx transport."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import io
import socket
import threading
import time

import httpx
import pytest

from nbchat.cli.main import main
from nbchat.clients import (
    TRANSPORTS,
    AsyncChatClient,
    AsyncTurnStream,
    ChatClient,
    NDJSONClient,
    acollect,
    aconnect,
    collect,
    connect,
)
from nbchat.server.config import Settings
from nbchat.server.serving import start_server_thread
from nbchat.wire.contract import DEFAULT_MAX_TOKENS, TURN_HEADER
from nbchat.wire.errors import NBChatError, ServerStartError, TurnError
from nbchat.wire.events import Chunk, End, ErrorInfo, Message, Status, TurnRequest
from tests.helpers import LONG_MESSAGE, TOKEN, CapturingBackend, RecordingBackend, ServerFactory

# Far below the server's grace period (30 s): a turn left early must stop at once, not when that expires.
STOPS_WITHIN = 5.0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stream_takes_the_options_of_a_turn(make_server: ServerFactory, transport: str) -> None:
    backend = CapturingBackend()
    server = make_server(backend)
    history = [Message("user", "earlier"), Message("assistant", "reply")]
    with connect(server.url, token=TOKEN, transport=transport) as client:  # type: ignore[arg-type]
        with client.stream("now", system="be brief", conversation=history, temperature=0.25,
                           max_tokens=9) as turn:
            assert collect(turn).ok
        with client.stream("plain") as turn:
            collect(turn)
    sent, plain = backend.requests
    assert sent.messages == [Message("system", "be brief"), *history, Message("user", "now")]
    assert (sent.temperature, sent.max_tokens) == (0.25, 9)
    # A temperature the caller did not set is not sent: the backend samples as suits its model.
    assert (plain.messages, plain.temperature, plain.max_tokens) == (
        [Message("user", "plain")], None, DEFAULT_MAX_TOKENS)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_conversation_takes_openai_shaped_dicts(make_server: ServerFactory, transport: str) -> None:
    backend = CapturingBackend()
    server = make_server(backend)
    history = [{"role": "user", "content": "earlier"}, Message("assistant", "reply")]
    with connect(server.url, token=TOKEN, transport=transport) as client:  # type: ignore[arg-type]
        assert collect(client.stream("now", conversation=history)).ok
    assert backend.requests[0].messages == [Message("user", "earlier"), Message("assistant", "reply"),
                                            Message("user", "now")]


async def test_the_async_client_takes_openai_shaped_dicts(make_server: ServerFactory) -> None:
    backend = CapturingBackend()
    server = make_server(backend)
    history = [{"role": "system", "content": "be brief"}]
    async with aconnect(server.url, token=TOKEN, transport="ws") as client, \
            client.stream("now", conversation=history) as turn:
        assert (await acollect(turn)).ok
    assert backend.requests[0].messages == [Message("system", "be brief"), Message("user", "now")]


@pytest.mark.parametrize("bad", [[{"role": "user"}], [{"role": "robot", "content": "x"}], ["hello"], [3],
                                 "hello", {"role": "user", "content": "x"}])
def test_conversation_of_anything_else_is_a_type_error_naming_it(bad: object) -> None:
    with connect("http://127.0.0.1:9", transport="sse") as client, pytest.raises(TypeError, match="conversation"):
        client.stream("now", conversation=bad)  # type: ignore[arg-type]


def test_options_go_with_a_string_not_with_a_turn_request(echo_server: object) -> None:
    with connect("http://127.0.0.1:9", transport="sse") as client, pytest.raises(TypeError):
        client.stream(TurnRequest(Message("user", "hi")), temperature=0.1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_leaving_the_block_early_stops_the_server_generating(make_server: ServerFactory, transport: str) -> None:
    backend = RecordingBackend(count=10_000, interval=0.01)
    server = make_server(backend)
    with connect(server.url, token=TOKEN, transport=transport) as client:  # type: ignore[arg-type]
        with client.stream("go") as turn:
            for event in turn:
                assert isinstance(event, Chunk)
                break
        assert backend.cancelled.wait(STOPS_WITHIN), "the turn went on generating after the with block"
    assert not backend.finished.is_set()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_async_with_stream_stops_the_server_generating(make_server: ServerFactory, transport: str) -> None:
    backend = RecordingBackend(count=10_000, interval=0.01)
    server = make_server(backend)
    async with aconnect(server.url, token=TOKEN, transport=transport) as client:  # type: ignore[arg-type]
        async with client.stream("go") as turn:
            assert isinstance(turn, AsyncTurnStream)
            async for event in turn:
                assert isinstance(event, Chunk)
                break
        assert await asyncio.to_thread(backend.cancelled.wait, STOPS_WITHIN)
        # awaiting stream() still works, and a turn read to its end is left alone on exit
        async with client.stream("again") as turn:
            pass
        assert turn.end is None


def _fill_the_socket_and_drop(client: ChatClient) -> float:
    """Read one chunk of a fast answer, let the unread frames fill the client's queue, drop the turn:
    how long the drop took."""
    turn = client.stream(LONG_MESSAGE * 4)
    next(iter(turn))
    time.sleep(0.3)  # the server streams on meanwhile; the client's reader stops once its queue is full
    began = time.monotonic()
    turn.close()
    return time.monotonic() - began


def test_dropping_a_websocket_turn_mid_stream_does_not_wait_out_the_close_handshake(
        make_server: ServerFactory) -> None:
    server = make_server(rate=2000.0)
    with connect(server.url, token=TOKEN, transport="ws") as client:
        took = [_fill_the_socket_and_drop(client) for _ in range(2)]
        # websockets waits 10 s for a close frame queued behind frames nobody reads; the socket is let go sooner
        assert max(took) < 3, took
        again = client.stream("still here")  # the client opens a new socket for the next turn
        assert next(e for e in again if isinstance(e, End)).status is Status.DONE


async def test_the_async_websocket_client_drops_a_turn_mid_stream_without_waiting_out_the_handshake(
        make_server: ServerFactory) -> None:
    server = make_server(rate=2000.0)
    async with aconnect(server.url, token=TOKEN, transport="ws") as client:
        turn = await client.stream(LONG_MESSAGE * 4)
        await turn.__anext__()
        await asyncio.sleep(0.3)
        began = time.monotonic()
        await turn.aclose()
        assert time.monotonic() - began < 3


def test_end_ok_and_raise_for_status() -> None:
    assert End(Status.DONE).ok and End(Status.TOKENS).ok
    assert End(Status.DONE).raise_for_status() == End(Status.DONE)
    with pytest.raises(TurnError) as caught:
        End(Status.ERROR, ErrorInfo("backend_error", "it broke")).raise_for_status()
    assert (caught.value.status, caught.value.code) == ("[ERROR]", "backend_error")
    assert "it broke" in str(caught.value) and isinstance(caught.value, NBChatError)
    for status in (Status.INTERRUPTED, Status.MODEL_TIMEOUT, Status.TEMPERATURE_THRESHOLD):
        assert not End(status).ok


# (the OpenAI route answers such a temperature with a 400, as OpenAI does)
@pytest.mark.parametrize("transport", ["ws", "sse", "stream"])
def test_a_refused_temperature_raises_for_status(echo_server: object, transport: str) -> None:
    from nbchat.server.serving import ServerHandle

    assert isinstance(echo_server, ServerHandle)
    with connect(echo_server.url, token=TOKEN, transport=transport) as client:  # type: ignore[arg-type]
        end = collect(client.stream("hot", temperature=5.0))
    assert end.status is Status.TEMPERATURE_THRESHOLD and not end.ok
    with pytest.raises(TurnError):
        end.raise_for_status()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_collect_reads_on_to_interrupted_after_ctrl_c(make_server: ServerFactory, transport: str) -> None:
    backend = RecordingBackend(count=10_000, interval=0.01)
    server = make_server(backend)
    seen: list[str] = []

    def on_chunk(chunk: Chunk) -> None:
        seen.append(chunk.content)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a kernel interrupt lands while a chunk is handled

    with connect(server.url, token=TOKEN, transport=transport) as client:  # type: ignore[arg-type]
        turn = client.stream("go")
        end = collect(turn, on_chunk)
    assert end.status is Status.INTERRUPTED
    assert turn.end == end, "collect gave up instead of reading the server's [INTERRUPTED]"
    assert seen[:3] == ["<0>", "<1>", "<2>"]
    assert backend.cancelled.wait(STOPS_WITHIN)


async def test_acollect_interrupts_the_turn_when_cancelled(make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=10_000, interval=0.01)
    server = make_server(backend)
    first = asyncio.Event()
    async with aconnect(server.url, token=TOKEN, transport="sse") as client:
        turn = await client.stream("go")
        task = asyncio.ensure_future(acollect(turn, lambda chunk: first.set()))
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await asyncio.to_thread(backend.cancelled.wait, STOPS_WITHIN)


def test_nbchat_chat_reads_on_to_interrupted_after_ctrl_c(make_server: ServerFactory,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    backend = RecordingBackend(count=10_000, interval=0.01)
    server = make_server(backend)
    started = threading.Event()
    original = backend.generate

    async def generate(request):  # type: ignore[no-untyped-def]
        started.set()
        async for piece in original(request):
            yield piece

    backend.generate = generate  # type: ignore[method-assign]
    # Ctrl-C lands in the main thread once the answer is streaming, as it would in a terminal.
    timer = threading.Thread(target=lambda: started.wait(10) and _ctrl_c_after(0.3), daemon=True)
    timer.start()
    code = main(["chat", "--server", server.url, "--token", TOKEN, "--transport", "ndjson", "tell me"])
    timer.join()
    out, err = capsys.readouterr()
    assert code == 130
    assert "<0><1>" in out
    assert "-- [INTERRUPTED] | ndjson" in err, err
    assert backend.cancelled.wait(STOPS_WITHIN)


def _ctrl_c_after(seconds: float) -> bool:
    threading.Event().wait(seconds)
    _thread.interrupt_main()
    return True


def test_ndjson_names_the_fetch_stream(echo_server: object) -> None:
    from nbchat.server.serving import ServerHandle

    assert isinstance(echo_server, ServerHandle)
    with connect(echo_server.url, token=TOKEN, transport="ndjson") as client:
        assert isinstance(client, NDJSONClient)
        pieces: list[str] = []
        assert collect(client.stream(LONG_MESSAGE, max_tokens=None), lambda c: pieces.append(c.content)).ok
    assert "".join(pieces) == LONG_MESSAGE
    with pytest.raises(ValueError, match="unknown transport"):
        connect(echo_server.url, transport="pigeon")  # type: ignore[arg-type]


def test_the_callers_own_http_client_carries_the_requests() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = b'{"content":"hi","seq":1}\n{"status":"[DONE]"}\n'
        return httpx.Response(200, content=body, headers={TURN_HEADER: "t1", "content-type": "application/x-ndjson"})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    with connect("http://nbchat.test/prefix", token="secret", transport="stream", http_client=http) as client:
        pieces: list[str] = []
        end = collect(client.stream("hello"), lambda c: pieces.append(c.content))
    assert end.ok and pieces == ["hi"]
    assert str(seen[0].url) == "http://nbchat.test/prefix/talkByStream"
    assert seen[0].headers["authorization"] == "Bearer secret"
    assert not http.is_closed, "closing nbchat's client closed the caller's own httpx client"
    http.close()
    with pytest.raises(TypeError):
        connect("http://nbchat.test", transport="ws", http_client=httpx.Client())


async def test_the_async_client_closes_with_aclose_only() -> None:
    assert not hasattr(AsyncChatClient, "close") and not hasattr(AsyncTurnStream, "close")
    client = aconnect("http://127.0.0.1:9", transport="sse")
    await client.aclose()


def test_a_server_that_cannot_start_raises_an_nbchat_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with contextlib.redirect_stderr(io.StringIO()), pytest.raises(ServerStartError) as caught:
            start_server_thread(Settings(port=port, token=TOKEN, backend="echo"), timeout=30)
    assert isinstance(caught.value, NBChatError) and "did not start" in str(caught.value)
