"""The clients against small real servers on loopback that answer with canned
bytes: error mapping, streams cut or stalled, awkward splits, interrupts,
resume requests and socket reuse, without the nbchat server (and without
mocking httpx or websockets)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.sync.server import Server, ServerConnection, serve

from nbchat.bench.procs import free_port
from nbchat.clients import TRANSPORTS, aconnect, connect
from nbchat.clients.websocket import ws_url
from nbchat.wire.errors import (
    AuthError,
    NBChatConnectionError,
    NBChatError,
    PayloadTooLarge,
    RequestError,
    ResumeError,
    StreamTimeout,
)
from nbchat.wire.events import Chunk, End, ErrorInfo, Status
from nbchat.wire.protocol import chunk_record, dumps, encode_ndjson, encode_sse_event

HTTP_TRANSPORTS = ["sse", "stream", "openai"]
TEXT = "你好，世界！\"quotes\" \\ back\r\nslash 🚀👩‍💻 " * 3
PIECES = [TEXT[i:i + 5] for i in range(0, len(TEXT), 5)]
CHUNKS = [Chunk(p, seq=n, server_time=1.5) for n, p in enumerate(PIECES, start=1)]


# ---------------------------------------------------------------- a canned HTTP server


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CannedHTTP

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        url = urlsplit(self.path)
        self.server.requests.append(Recorded(self.command, url.path, parse_qs(url.query),
                                             {k.lower(): v for k, v in self.headers.items()}, body))
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.routes[url.path](self)

    def answer(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode() if obj is not None else b""
        self.send_response(status)
        for name, value in {"content-type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, parts: list[bytes], *, end: bool = True, wait: threading.Event | None = None,
               tail: Sequence[bytes] = ()) -> None:
        """A chunked 200 answer sent in ``parts`` (each its own write); optionally wait
        for ``wait``, then ``tail``; ``end=False`` drops the connection mid-body."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-nbchat-turn", "t1")
        self.end_headers()
        for part in parts:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        if wait is not None:
            wait.wait(10)
        for part in tail:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        if end:
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.close_connection = True


class CannedHTTP(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Callable[[Handler], None]] = {}
        self.requests: list[Recorded] = []
        self.release = threading.Event()  # frees handlers that hold a stream open

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client closing its keep-alive connection is expected here, not worth a traceback


@pytest.fixture
def http() -> Iterator[CannedHTTP]:
    server = CannedHTTP()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def body_of(transport: str, events: list[Chunk | End]) -> bytes:
    if transport == "sse":
        return b"".join(encode_sse_event(e) for e in events)
    if transport == "stream":
        return b"".join(encode_ndjson(e) for e in events)
    out = []
    for e in events:
        if isinstance(e, Chunk):
            obj: object = {"choices": [{"delta": {"content": e.content}, "finish_reason": None}],
                           "x_nbchat": {"seq": e.seq, "ts": e.server_time}}
        else:
            obj = {"choices": [{"delta": {}, "finish_reason": "stop"}]}
        out.append(b"data: " + dumps(obj).encode() + b"\n\n")
        if isinstance(e, End):
            out.append(b"data: [DONE]\n\n")
    return b"".join(out)


PATHS = {"sse": "/createSse", "stream": "/talkByStream", "openai": "/v1/chat/completions"}




# ---------------------------------------------------------------- HTTP transports


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_awkwardly_split_stream_decodes_and_names_the_turn(http: CannedHTTP, transport: str) -> None:
    data = body_of(transport, [*CHUNKS, End(Status.DONE)])
    http.routes[PATHS[transport]] = lambda h: h.stream([data[i:i + 3] for i in range(0, len(data), 3)])
    with connect(http.url, token="T", transport=transport) as client:
        turn = client.stream("hi")
        events = list(turn)
    assert events == [*CHUNKS, End(Status.DONE)]
    assert turn.turn_id == "t1" and turn.last_seq == len(CHUNKS)
    assert all(isinstance(e, Chunk) and e.received > 0 for e in events[:-1])
    sent = http.requests[0]
    assert sent.headers["authorization"] == "Bearer T"
    body = json.loads(sent.body)
    if transport == "openai":
        assert body["messages"] == [{"role": "user", "content": "hi"}] and body["stream"] is True
    else:
        assert body["userMessage"] == {"role": "user", "content": "hi"} and body["uid"] == client.uid


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
@pytest.mark.parametrize(("status", "error"), [(401, AuthError), (403, AuthError), (413, PayloadTooLarge),
                                               (400, RequestError), (404, RequestError), (409, RequestError),
                                               (500, NBChatError)])
def test_http_status_maps_to_the_error_tree(http: CannedHTTP, transport: str, status: int,
                                            error: type[Exception]) -> None:
    code = {401: "unauthorized", 413: "payload_too_large"}.get(status, "invalid_request")
    http.routes[PATHS[transport]] = lambda h: h.answer(status, {"error": {"code": code, "message": "nope"}})
    with connect(http.url, transport=transport) as client, pytest.raises(error) as info:
        client.stream("hi")
    assert type(info.value) is error
    if isinstance(info.value, RequestError):
        assert info.value.status == status and info.value.code == code
    if status == 401:
        assert "nbchat serve" in str(info.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connection_refused_says_what_to_do(transport: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with connect(url, transport=transport, timeout=5) as client, pytest.raises(NBChatConnectionError) as info:
        client.stream("hi")
    assert f"is the server running at {url}" in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_stream_cut_mid_way_is_a_connection_error(http: CannedHTTP, transport: str) -> None:
    data = body_of(transport, CHUNKS[:3])
    http.routes[PATHS[transport]] = lambda h: h.stream([data[:-7], data[-7:]], end=False)
    with connect(http.url, transport=transport) as client:
        turn = client.stream("hi")
        seen = []
        with pytest.raises(NBChatConnectionError, match="resume"):
            for event in turn:
                seen.append(event)
    assert seen == CHUNKS[:3]
    assert turn.last_seq == 3


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_clean_end_without_a_status_is_a_connection_error(http: CannedHTTP, transport: str) -> None:
    http.routes[PATHS[transport]] = lambda h: h.stream([body_of(transport, CHUNKS[:2])])
    with connect(http.url, transport=transport) as client, pytest.raises(NBChatConnectionError):
        list(client.stream("hi"))


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_a_stalled_stream_times_out(http: CannedHTTP, transport: str) -> None:
    http.routes[PATHS[transport]] = lambda h: h.stream([body_of(transport, CHUNKS[:1])], wait=h.server.release)
    with connect(http.url, transport=transport, timeout=0.3) as client, pytest.raises(StreamTimeout):
        list(client.stream("hi"))


def test_no_answer_at_all_times_out_rather_than_failing_to_connect(http: CannedHTTP) -> None:
    http.routes["/talkByStream"] = lambda h: h.server.release.wait(10) and None
    with connect(http.url, transport="stream", timeout=0.3) as client, pytest.raises(StreamTimeout):
        client.stream("hi")


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_interrupt_posts_to_the_turn_and_the_stream_ends_interrupted(http: CannedHTTP, transport: str) -> None:
    stopped = threading.Event()
    end = body_of(transport, [End(Status.INTERRUPTED)]) if transport != "openai" else (
        b'data: {"error": {"message": "stopped", "type": "server_error", "code": "interrupted"}}\n\n'
        b"data: [DONE]\n\n")
    http.routes[PATHS[transport]] = lambda h: h.stream([body_of(transport, CHUNKS[:2])], wait=stopped, tail=[end])

    def interrupt(h: Handler) -> None:
        stopped.set()
        h.answer(200, {"id": "t1", "interrupted": True})

    http.routes["/turns/t1/interrupt"] = interrupt
    with connect(http.url, transport=transport) as client:
        turn = client.stream("hi")
        events = [next(turn)]
        asker = threading.Thread(target=turn.interrupt)  # from another thread, as a Stop button would
        asker.start()
        events += list(turn)
        asker.join(5)
    assert events == [*CHUNKS[:2], End(Status.INTERRUPTED)]
    assert [r.path for r in http.requests if r.method == "POST"][-1] == "/turns/t1/interrupt"


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_a_stream_cut_after_an_interrupt_reattaches_for_the_rest(http: CannedHTTP, transport: str) -> None:
    stopped = threading.Event()
    path = PATHS[transport]
    rest = body_of("sse" if transport == "sse" else "stream", [*CHUNKS[2:4], End(Status.INTERRUPTED)])

    def route(h: Handler) -> None:
        if h.command == "POST":  # the turn: two chunks, then the connection drops (as a Ctrl-C cuts a read)
            h.stream([body_of(transport, CHUNKS[:2])], wait=stopped, end=False)
        else:
            h.stream([rest])

    def interrupt(h: Handler) -> None:
        h.answer(200, {"id": "t1", "interrupted": True})
        stopped.set()

    http.routes[path] = http.routes["/talkByStream"] = route
    http.routes["/turns/t1/interrupt"] = interrupt
    with connect(http.url, transport=transport) as client:
        turn = client.stream("hi")
        events = [next(turn), next(turn)]
        turn.interrupt()
        events += list(turn)
    assert events == [*CHUNKS[:4], End(Status.INTERRUPTED)]
    resumed = [r for r in http.requests if r.method == "GET"]
    assert len(resumed) == 1 and resumed[0].path == ("/createSse" if transport == "sse" else "/talkByStream")


@pytest.mark.parametrize("transport", ["sse", "stream"])
def test_resume_asks_for_the_seqs_after(http: CannedHTTP, transport: str) -> None:
    http.routes[PATHS[transport]] = lambda h: h.stream([body_of(transport, [*CHUNKS[3:], End(Status.DONE)])])
    with connect(http.url, transport=transport) as client:
        resumed = client.resume(3, turn_id="t9")
        assert resumed.last_seq == 3  # until more arrives, the seq it resumed after
        events = list(resumed)
        list(client.resume(5))  # no id given: the last turn this client streamed
    assert events == [*CHUNKS[3:], End(Status.DONE)]
    first, second = http.requests
    assert first.method == "GET" and first.query["turn"] == ["t9"]
    if transport == "sse":
        assert first.headers["last-event-id"] == "3" and second.headers["last-event-id"] == "5"
    else:
        assert first.query["after"] == ["3"] and second.query["after"] == ["5"]
    assert second.query["turn"] == ["t1"]  # from the first answer's X-NBChat-Turn


@pytest.mark.parametrize("status", [204, 404, 410])
def test_resume_failures_are_resume_errors(http: CannedHTTP, status: int) -> None:
    body = None if status == 204 else {"error": {"code": "resume_unavailable", "message": "expired"}}
    http.routes["/createSse"] = lambda h: h.answer(status, body)
    with connect(http.url, transport="sse") as client, pytest.raises(ResumeError):
        client.resume(3, turn_id="gone")


def test_openai_resume_goes_through_the_ndjson_endpoint(http: CannedHTTP) -> None:
    http.routes["/talkByStream"] = lambda h: h.stream([body_of("stream", [*CHUNKS[2:], End(Status.DONE)])])
    with connect(http.url, transport="openai") as client:
        assert list(client.resume(2, turn_id="t1")) == [*CHUNKS[2:], End(Status.DONE)]
    assert http.requests[0].query == {"turn": ["t1"], "after": ["2"]}


def test_unknown_transport_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ws, sse, stream, openai"):
        connect("http://127.0.0.1:1", transport="carrier-pigeon")


def test_websocket_url_keeps_the_prefix_and_quotes_the_uid() -> None:
    assert ws_url("http://h:1/", "a b") == "ws://h:1/websocket/a%20b"
    assert ws_url("https://h/jupyter/proxy/8765", "u") == "wss://h/jupyter/proxy/8765/websocket/u"


async def test_async_http_errors_and_cut(http: CannedHTTP) -> None:
    data = body_of("stream", CHUNKS[:2])
    http.routes["/talkByStream"] = lambda h: h.stream([data], end=False)
    http.routes["/createSse"] = lambda h: h.answer(401, {"error": {"code": "unauthorized", "message": "no"}})
    async with aconnect(http.url, transport="stream") as client:
        turn = await client.stream("hi")
        with pytest.raises(NBChatConnectionError):
            [e async for e in turn]
    async with aconnect(http.url, transport="sse") as client:
        with pytest.raises(AuthError):
            await client.stream("hi")
    async with aconnect(f"http://127.0.0.1:{free_port()}", transport="ws") as client:
        with pytest.raises(NBChatConnectionError, match="is the server running"):
            await client.stream("hi")


# ---------------------------------------------------------------- a canned WebSocket server


@dataclass
class CannedWS:
    server: Server
    script: Callable[[ServerConnection], None] = lambda ws: None
    connections: int = 0
    received: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"

    def recv(self, ws: ServerConnection) -> str:
        frame = ws.recv(timeout=10)
        assert isinstance(frame, str)
        self.received.append(frame)
        return frame


@pytest.fixture
def wsserver() -> Iterator[CannedWS]:
    canned: CannedWS

    def handler(ws: ServerConnection) -> None:
        canned.connections += 1
        canned.script(ws)

    def process_request(ws: ServerConnection, request: Any) -> Any:
        if request.headers.get("authorization") == "Bearer wrong":
            return ws.respond(HTTPStatus.UNAUTHORIZED, '{"error": {"code": "unauthorized", "message": "bad"}}')
        return None

    canned = CannedWS(serve(handler, "127.0.0.1", 0, process_request=process_request))
    thread = threading.Thread(target=canned.server.serve_forever, daemon=True)
    thread.start()
    yield canned
    canned.server.shutdown()
    thread.join(5)


def send_turn(ws: ServerConnection, chunks: list[Chunk], status: str | None = "[DONE]") -> None:
    for chunk in chunks:
        ws.send(dumps(chunk_record(chunk)))
    if status is not None:
        ws.send(status)


def test_websocket_reuses_one_socket_for_successive_turns(wsserver: CannedWS) -> None:
    def script(ws: ServerConnection) -> None:
        for _ in range(3):
            wsserver.recv(ws)
            send_turn(ws, CHUNKS)

    wsserver.script = script
    with connect(wsserver.url, token="T", transport="ws") as client:
        results = [list(client.stream(f"q{i}")) for i in range(3)]
    assert results == [[*CHUNKS, End(Status.DONE)]] * 3
    assert wsserver.connections == 1
    assert json.loads(wsserver.received[1])["userMessage"]["content"] == "q1"


def test_websocket_skips_what_is_left_of_an_abandoned_turn(wsserver: CannedWS) -> None:
    def script(ws: ServerConnection) -> None:
        wsserver.recv(ws)
        send_turn(ws, CHUNKS[:1], status=None)  # the first turn goes on ...
        wsserver.recv(ws)
        send_turn(ws, CHUNKS[1:3], status="[INTERRUPTED]")  # ... until the next question stops it
        send_turn(ws, CHUNKS[:2])

    wsserver.script = script
    with connect(wsserver.url, transport="ws") as client:
        first = client.stream("a")
        assert next(first) == CHUNKS[0]
        assert list(client.stream("b")) == [*CHUNKS[:2], End(Status.DONE)]


def test_websocket_closing_a_turn_mid_way_drops_the_socket_and_the_next_turn_reopens_it(wsserver: CannedWS) -> None:
    def script(ws: ServerConnection) -> None:
        wsserver.recv(ws)
        send_turn(ws, CHUNKS[:2], status=None if wsserver.connections == 1 else "[DONE]")
        ws.wait_closed()

    wsserver.script = script
    with connect(wsserver.url, transport="ws") as client:
        turn = client.stream("a")
        assert next(turn) == CHUNKS[0]
        turn.close()
        assert list(client.stream("b")) == [*CHUNKS[:2], End(Status.DONE)]
    assert wsserver.connections == 2


def test_websocket_interrupt_and_resume_frames(wsserver: CannedWS) -> None:
    def script(ws: ServerConnection) -> None:
        wsserver.recv(ws)
        send_turn(ws, CHUNKS[:2], status=None)
        assert wsserver.recv(ws) == "[INTERRUPT]"
        ws.send("[INTERRUPTED]")
        wsserver.recv(ws)
        send_turn(ws, CHUNKS[2:4])

    wsserver.script = script
    with connect(wsserver.url, transport="ws") as client:
        turn = client.stream("a")
        events = [next(turn)]
        asker = threading.Thread(target=turn.interrupt)
        asker.start()
        events += list(turn)
        asker.join(5)
        assert events == [*CHUNKS[:2], End(Status.INTERRUPTED)]
        assert list(client.resume(2, turn_id="t7")) == [*CHUNKS[2:4], End(Status.DONE)]
    assert json.loads(wsserver.received[-1]) == {"resume": {"after": 2, "turn": "t7"}}


@pytest.mark.parametrize(("code", "error"), [(1008, AuthError), (1009, PayloadTooLarge),
                                             (1011, NBChatConnectionError), (1001, NBChatConnectionError)])
def test_websocket_close_codes_map_to_errors(wsserver: CannedWS, code: int, error: type[Exception]) -> None:
    def script(ws: ServerConnection) -> None:
        wsserver.recv(ws)
        send_turn(ws, CHUNKS[:1], status=None)
        ws.close(code, "bye")

    wsserver.script = script
    with connect(wsserver.url, transport="ws") as client, pytest.raises(error):
        list(client.stream("a"))


def test_websocket_rejected_request_and_refused_handshake(wsserver: CannedWS) -> None:
    def script(ws: ServerConnection) -> None:
        wsserver.recv(ws)
        ws.send(dumps({"error": {"code": "invalid_request", "message": "'userMessage' is required"}}))
        ws.send("[ERROR]")
        wsserver.recv(ws)
        ws.send(dumps({"error": {"code": "resume_unavailable", "message": "expired"}}))
        ws.send("[ERROR]")

    wsserver.script = script
    with connect(wsserver.url, transport="ws") as client:
        with pytest.raises(RequestError) as info:
            list(client.stream("a"))
        assert info.value.code == "invalid_request"
        with pytest.raises(ResumeError):
            list(client.resume(4))
    with connect(wsserver.url, token="wrong", transport="ws") as client, pytest.raises(AuthError, match="token"):
        client.stream("a")


def test_websocket_stalled_stream_times_out(wsserver: CannedWS) -> None:
    done = threading.Event()

    def script(ws: ServerConnection) -> None:
        wsserver.recv(ws)
        done.wait(10)

    wsserver.script = script
    with connect(wsserver.url, transport="ws", timeout=0.3) as client, pytest.raises(StreamTimeout):
        list(client.stream("a"))
    done.set()


async def test_async_websocket_stream_interrupt_and_close_code(wsserver: CannedWS) -> None:
    def script(ws: ServerConnection) -> None:
        wsserver.recv(ws)
        send_turn(ws, CHUNKS[:2], status=None)
        assert wsserver.recv(ws) == "[INTERRUPT]"
        ws.send(dumps({"error": {"code": "backend_error", "message": "x"}}))
        ws.send("[ERROR]")
        wsserver.recv(ws)
        ws.close(1008)

    wsserver.script = script
    async with aconnect(wsserver.url, transport="ws") as client:
        turn = await client.stream("a")
        events = [await anext(turn)]
        await turn.interrupt()
        events += [e async for e in turn]
        assert events == [*CHUNKS[:2], End(Status.ERROR, ErrorInfo("backend_error", "x"))]
        with pytest.raises(AuthError):
            [e async for e in await client.stream("b")]
