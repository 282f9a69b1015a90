"""What a hostile client tried, each against a real server on loopback: slow and
huge request heads, input that once answered 500, lone surrogates, WebSocket
desynchronisation, streams past the replay bound, ping floods, tokens in the
log, DNS rebinding, and the OpenAI route's 429."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import h11
import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from nbchat.backends.base import Backend, Finish, GenerationRequest
from nbchat.server.serving import ServerHandle
from tests.helpers import TOKEN, ServerFactory, StallBackend, turns_of

H = {"token": TOKEN}
ROOT = Path(__file__).resolve().parent.parent
DEEP = b"[" * 100_000 + b"]" * 100_000
TURN_POSTS = ["/talkByStream", "/createSse", "/turns", "/v1/chat/completions"]


def port_of(server: ServerHandle) -> int:
    return int(server.url.rsplit(":", 1)[1])


def ws(server: ServerHandle, uid: str):  # type: ignore[no-untyped-def]
    return ws_connect(server.url.replace("http://", "ws://") + f"/websocket/{uid}?token={TOKEN}", max_size=None)


def ask(content: str) -> dict[str, object]:
    return {"userMessage": {"role": "user", "content": content}}


def ndjson(r: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in r.text.splitlines() if line]


def ws_until_status(sock, limit: int = 100_000) -> list[str]:  # type: ignore[no-untyped-def]
    frames = []
    for _ in range(limit):
        frame = sock.recv(timeout=10)
        frames.append(frame)
        if frame.startswith("[") or frame == "TEMPERATURE_THRESHOLD":
            return frames
    raise AssertionError("no status")


# ---------------------------------------------------------------- 1, 2: request heads


def test_slow_heads_are_closed_at_the_deadline_and_health_answers(make_server: ServerFactory) -> None:
    server = make_server(header_timeout=0.5, max_connections=20)
    slow = []
    for _ in range(40):  # twice the cap: the cap makes room by closing the oldest slow heads
        s = socket.create_connection(("127.0.0.1", port_of(server)))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow.append(s)
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    start = time.monotonic()
    for s in slow:
        s.settimeout(5)
        data = s.recv(4096)  # a 408 (deadline or made room for another), then the close
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:60]
        s.close()
    assert time.monotonic() - start < 3
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_huge_head_is_refused_431_before_it_is_read(echo_server: ServerHandle) -> None:
    s = socket.create_connection(("127.0.0.1", port_of(echo_server)))
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    with contextlib.suppress(OSError):  # the server answers and closes before taking it all: the point
        s.sendall(head)
    s.settimeout(10)
    assert s.recv(4096).startswith(b"HTTP/1.1 431")
    s.close()
    assert httpx.get(echo_server.url + "/health").status_code == 200


def test_a_head_near_the_limit_with_a_body_in_the_same_read_is_served(make_server: ServerFactory) -> None:
    server = make_server(max_header_bytes=4096)
    body = json.dumps(ask("x" * 20_000)).encode()
    r = httpx.post(server.url + "/talkByStream", content=body, headers={**H, "X-Pad": "p" * 3000})
    assert r.status_code == 200 and ndjson(r)[-1] == {"status": "[DONE]"}


# ---------------------------------------------------------------- 3: no 500 on bad input


@pytest.mark.parametrize("path", TURN_POSTS)
def test_deeply_nested_json_is_400(echo_server: ServerHandle, path: str) -> None:
    r = httpx.post(echo_server.url + path, content=DEEP, headers=H)
    assert r.status_code == 400, r.text
    assert "nested" in r.text


@pytest.mark.parametrize("value", ["²", "١٢", "9" * 5000, "-1", "1.5"])
def test_positions_int_refuses_are_400(echo_server: ServerHandle, value: str) -> None:
    turn = httpx.post(echo_server.url + "/talkByStream", json=ask("hi"), headers=H).headers["x-nbchat-turn"]
    try:  # a header is Latin-1 on the wire: b"\xb2" reaches the server as "²"
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode()
    last_id = {"token": TOKEN.encode(), "Last-Event-ID": raw}
    for r in (httpx.get(echo_server.url + "/createSse", params={"turn": turn}, headers=last_id),
              httpx.get(echo_server.url + "/createSse", params={"turn": turn, "lastEventId": value}, headers=H),
              httpx.get(echo_server.url + "/talkByStream", params={"turn": turn, "after": value}, headers=H)):
        assert r.status_code == 400, (value, r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == "invalid_request"


def test_openai_role_that_is_a_list_is_400(echo_server: ServerHandle) -> None:
    r = httpx.post(echo_server.url + "/v1/chat/completions", headers=H,
                   json={"model": "m", "messages": [{"role": ["user"], "content": "hi"}]})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_deeply_nested_websocket_frame_gets_an_error_and_the_socket_stays(echo_server: ServerHandle) -> None:
    with ws(echo_server, "deep") as sock:
        sock.send(DEEP.decode())
        assert json.loads(sock.recv(timeout=5))["error"]["code"] == "invalid_json"
        assert sock.recv(timeout=5) == "[ERROR]"
        sock.send(json.dumps(ask("still here")))
        frames = ws_until_status(sock)
        assert frames[-1] == "[DONE]"
        assert "".join(json.loads(f)["content"] for f in frames[:-1]) == "still here"


# ---------------------------------------------------------------- 4: lone surrogates

LONE = '{"userMessage": {"role": "user", "content": "a\\ud800b"}}'


@pytest.mark.parametrize("path", ["/talkByStream", "/createSse", "/turns"])
def test_lone_surrogate_is_400_on_every_http_route(echo_server: ServerHandle, path: str) -> None:
    r = httpx.post(echo_server.url + path, content=LONE, headers=H)
    assert r.status_code == 400
    assert "surrogate" in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_lone_surrogate_is_400_on_the_openai_route(echo_server: ServerHandle, stream: bool) -> None:
    flag = "true" if stream else "false"
    body = '{"model": "m", "stream": ' + flag + ', "messages": [{"role": "user", "content": "\\udfff"}]}'
    r = httpx.post(echo_server.url + "/v1/chat/completions", content=body, headers=H)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_lone_surrogate_on_a_websocket_gets_one_status(echo_server: ServerHandle) -> None:
    with ws(echo_server, "lone") as sock:
        sock.send(LONE)
        assert json.loads(sock.recv(timeout=5))["error"]["code"] == "invalid_request"
        assert sock.recv(timeout=5) == "[ERROR]"


# ---------------------------------------------------------------- 5: the replay bound


class FloodBackend(Backend):
    """``count`` pieces of 64 characters, as fast as the loop allows."""

    name = "flood"

    def __init__(self, count: int) -> None:
        self.count = count

    @property
    def model_name(self) -> str:
        return "flood"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        for i in range(self.count):
            yield f"{i:063d}."
            if i % 64 == 0:
                await asyncio.sleep(0)


def raw_post(port: int, path: str, body: bytes) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small, and no autotuning: we read nothing yet
    s.connect(("127.0.0.1", port))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ntoken: {TOKEN}\r\ncontent-type: application/json\r\n"
              f"content-length: {len(body)}\r\n\r\n".encode() + body)
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))  # puts h11 in the right state
    conn.send(h11.EndOfMessage())
    status, headers, body = 0, {}, bytearray()
    s.settimeout(20)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(s.recv(1 << 16))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, headers, bytes(body)


def test_a_reader_behind_the_replay_bound_gets_an_error_status_and_a_resume_gets_410(
        make_server: ServerFactory) -> None:
    server = make_server(backend=FloodBackend(count=150_000), replay_max_bytes=256 * 1024)
    # ~14 MB of NDJSON: more than the socket buffers on both sides hold while we read nothing
    s = raw_post(port_of(server), "/talkByStream", json.dumps(ask("go")).encode())
    deadline = time.monotonic() + 30
    manager = turns_of(server)
    while not (manager.running() == [] and len(manager) == 1) and time.monotonic() < deadline:
        time.sleep(0.05)  # the turn runs on the server's thread: nothing to await from here
    status, headers, body = read_response(s)
    s.close()
    assert status == 200
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines[-1] == {"status": "[ERROR]"}, lines[-1]
    assert lines[-2]["error"]["code"] == "resume_unavailable"  # type: ignore[index]
    seqs = [line["seq"] for line in lines[:-2]]
    assert seqs == list(range(1, len(seqs) + 1))  # nothing skipped before the error
    r = httpx.get(server.url + "/talkByStream", params={"turn": headers["x-nbchat-turn"], "after": "0"}, headers=H)
    assert r.status_code == 410
    assert r.json()["error"]["code"] == "resume_unavailable"


@pytest.mark.parametrize("path", ["/talkByStream", "/createSse"])
def test_a_client_that_stops_reading_then_reads_gets_every_chunk_once(make_server: ServerFactory, path: str) -> None:
    """Chunks go out from the generating task while the client keeps up; once its socket is full a
    send has to wait, and what follows must come after it: every seq once, in order, then the status."""
    count = 60_000  # ~6 MB: past the socket buffers (4 MB at most here) while the client reads nothing
    server = make_server(backend=FloodBackend(count=count), replay_max_bytes=64 * 1024 * 1024)
    s = raw_post(port_of(server), path, json.dumps(ask("go")).encode())
    manager = turns_of(server)
    deadline = time.monotonic() + 30
    while not (len(manager) == 1 and manager.running() == []) and time.monotonic() < deadline:
        time.sleep(0.05)  # the whole turn is made while nothing is read
    status, _, body = read_response(s)
    s.close()
    assert status == 200
    text = body.decode()
    if path == "/createSse":
        ids = [line[4:] for line in text.splitlines() if line.startswith("id: ")]
        assert ids == [str(i) for i in range(1, count + 1)] + ["[DONE]"]
    else:
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["seq"] for line in lines[:-1]] == list(range(1, count + 1))
        assert lines[-1] == {"status": "[DONE]"}


def test_a_websocket_client_that_stops_reading_then_reads_gets_every_chunk_once(make_server: ServerFactory) -> None:
    server = make_server(backend=FloodBackend(count=20_000))
    with ws(server, "paused") as sock:
        sock.send(json.dumps(ask("go")))
        manager = turns_of(server)
        deadline = time.monotonic() + 30
        while not (len(manager) == 1 and manager.running() == []) and time.monotonic() < deadline:
            time.sleep(0.05)  # the whole turn is made while the client reads nothing
        frames = ws_until_status(sock, limit=30_000)
    assert frames[-1] == "[DONE]"
    assert [json.loads(f)["seq"] for f in frames[:-1]] == list(range(1, 20_001))


# ---------------------------------------------------------------- 6, 7: WebSocket requests


def test_resume_after_a_negative_seq_gets_one_status_and_the_socket_stays_in_step(echo_server: ServerHandle) -> None:
    with ws(echo_server, "neg") as sock:
        sock.send(json.dumps(ask("first")))
        assert ws_until_status(sock)[-1] == "[DONE]"
        sock.send(json.dumps({"resume": {"after": -5}}))
        assert json.loads(sock.recv(timeout=5))["error"]["code"] == "invalid_request"
        assert sock.recv(timeout=5) == "[ERROR]"
        sock.send(json.dumps(ask("second")))
        frames = ws_until_status(sock)
        assert frames[-1] == "[DONE]"
        assert "".join(json.loads(f)["content"] for f in frames[:-1]) == "second"


def test_empty_frame_twice_streams_the_queued_turn_once(make_server: ServerFactory) -> None:
    server = make_server(rate=200.0)
    message = "abcdefghij" * 20
    r = httpx.post(server.url + "/turns", json={**ask(message), "uid": "twice"}, headers=H)
    assert r.status_code == 200
    with ws(server, "twice") as sock:
        sock.send("")
        first = sock.recv(timeout=5)
        sock.send("")
        frames = [first, *ws_until_status(sock)]
        assert frames[-1] == "[DONE]"
        assert "".join(json.loads(f)["content"] for f in frames[:-1]) == message
        sock.send(json.dumps(ask("next")))  # the next frame must belong to the next turn, not a duplicate
        assert json.loads(sock.recv(timeout=5)) | {"ts": 0} == {"content": "next", "seq": 1, "ts": 0}


# ---------------------------------------------------------------- 9: ping flood


def ws_handshake(port: int, uid: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /websocket/{uid}?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 101")
    return s


def ping_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x89, 0x80 | len(payload)) + mask + masked


def queued_bytes(server: ServerHandle) -> int:
    return max((c.transport.get_write_buffer_size() for c in list(server.server.server_state.connections)
                if getattr(c, "transport", None) is not None), default=0)


def test_a_client_that_pings_and_never_reads_is_dropped_at_the_queued_bytes_limit(
        make_server: ServerFactory) -> None:
    server = make_server(max_queued_bytes=256 * 1024)
    s = ws_handshake(port_of(server), "pinger")
    burst = ping_frame(b"p" * 125) * 512  # 512 pongs of 127 bytes each per burst
    most, dropped = 0, False
    s.settimeout(5)
    for _ in range(400):  # up to ~26 MB of pings
        try:
            s.sendall(burst)
        except OSError:
            dropped = True
            break
        most = max(most, queued_bytes(server))
    s.close()
    assert dropped, f"still connected with {most} bytes queued"
    assert most <= 256 * 1024 + 512 * 1024  # the limit plus at most one read's worth of pongs
    assert httpx.get(server.url + "/health").status_code == 200


# ---------------------------------------------------------------- 10: the token stays out of the log


@pytest.fixture
def logged_server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nbchat", "serve", "--backend", "echo", "--port", "0",
                             f"--token={TOKEN}", "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = line.split(" at ", 1)[1].split("/?", 1)[0]
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def test_the_log_never_holds_a_token(logged_server: tuple[str, subprocess.Popen[str]]) -> None:
    url, proc = logged_server
    base = url.replace("http://", "ws://") + "/websocket/u"
    with ws_connect(f"{base}?token={TOKEN}") as sock:
        sock.send(json.dumps(ask("x")))
        assert ws_ctl_status(sock) == "[DONE]"
    wrong = "wrong-token-9876543210"
    for target, origin in ((f"{base}?token={wrong}", None), (f"{base}?token={TOKEN}", "http://evil.example")):
        with pytest.raises(Exception):  # noqa: B017 refused: 401 and 403
            ws_connect(target, origin=origin).close()  # type: ignore[arg-type]
    httpx.get(url + f"/health?token={TOKEN}")
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert "WebSocket" in err  # the lines are there, only without the token
    assert TOKEN not in err and wrong not in err, err


def ws_ctl_status(sock) -> str:  # type: ignore[no-untyped-def]
    return ws_until_status(sock)[-1]


# ---------------------------------------------------------------- 11: DNS rebinding


def test_own_origin_needs_a_host_that_names_this_server(make_server: ServerFactory) -> None:
    server = make_server(token="")
    port = port_of(server)
    evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    assert httpx.post(server.url + "/talkByStream", json=ask("x"), headers=evil).status_code == 403
    # a same-origin GET carries no Origin at all: the Host alone must be refused
    r = httpx.get(server.url + "/talkByStream", params={"uid": "u"}, headers={"Host": f"evil.example:{port}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    for own in (f"localhost:{port}", f"127.0.0.1:{port}"):
        r = httpx.post(server.url + "/talkByStream", json=ask("ok"), headers={"Host": own, "Origin": f"http://{own}"})
        assert r.status_code == 200 and ndjson(r)[-1] == {"status": "[DONE]"}


def test_a_public_bind_serves_any_host_name(make_server: ServerFactory) -> None:
    server = make_server(host="0.0.0.0")
    port = server.server.port
    r = httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": f"chat.example:{port}"})
    assert r.status_code == 200


# ---------------------------------------------------------------- 12: OpenAI's 429


def test_openai_429_is_in_openai_error_shape(make_server: ServerFactory) -> None:
    server = make_server(backend=StallBackend(), max_turns=1)
    stuck = threading.Thread(target=lambda: httpx.post(server.url + "/talkByStream", json=ask("a"), headers=H,
                                                       timeout=3), daemon=True)
    stuck.start()
    deadline = time.monotonic() + 5
    while not turns_of(server).running() and time.monotonic() < deadline:
        time.sleep(0.02)
    r = httpx.post(server.url + "/v1/chat/completions", headers=H,
                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] and err["message"]


# ---------------------------------------------------------------- the body limit follows the setting


def test_a_raised_body_limit_is_honoured_on_http_and_websocket(make_server: ServerFactory) -> None:
    server = make_server(backend=FloodBackend(count=3), max_body_bytes=3 * 1024 * 1024)
    body = json.dumps(ask("z" * (2 * 1024 * 1024)))  # over the old fixed 1 MiB, under the setting
    r = httpx.post(server.url + "/talkByStream", content=body, headers=H, timeout=30)
    assert r.status_code == 200 and ndjson(r)[-1] == {"status": "[DONE]"}
    with ws(server, "big") as sock:
        sock.send(body)
        assert ws_until_status(sock)[-1] == "[DONE]"
    too_big = json.dumps(ask("z" * (3 * 1024 * 1024))).encode()
    assert httpx.post(server.url + "/talkByStream", content=too_big, headers=H).status_code == 413
