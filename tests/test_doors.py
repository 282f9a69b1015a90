"""Who may talk to the server and how a refusal reads, against real servers on loopback: a public
bind with auth off, DNS rebinding on a public bind, refusals a page can read, a WebSocket text
frame that is not UTF-8, and a refusal sent while another turn streams on the same socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from nbchat.wire.errors import ServerStartError
from tests.helpers import TOKEN, ServerFactory
from tests.load_limits import ROOT, serve

PAGE = "http://page.example:8888"


# ---------------------------------------------------------------- a public bind


def test_a_public_bind_with_auth_off_is_refused_and_says_why() -> None:
    done = subprocess.run([sys.executable, "-m", "nbchat", "serve", "--backend", "echo", "--port", "0", "--host",
                           "0.0.0.0", "--token", ""], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stdout == ""
    assert "--public-without-token" in done.stderr and "rebinding" in done.stderr and "Traceback" not in done.stderr


def test_a_public_bind_with_auth_off_is_refused_by_code_too(make_server: ServerFactory) -> None:
    with pytest.raises(ServerStartError, match="public-without-token"):
        make_server(host="0.0.0.0", token="")


def test_the_explicit_flag_allows_it_and_a_rebinding_origin_is_still_refused() -> None:
    with serve(extra=["--host", "0.0.0.0", "--public-without-token"], token="") as server:
        port, url = server.port, server.url
        ask = {"userMessage": {"role": "user", "content": "hi"}}
        evil = {"Host": f"rebind.evil:{port}", "Origin": f"http://rebind.evil:{port}"}
        r = httpx.post(url + "/talkByStream", json=ask, headers=evil)
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
        # the server's own origin under a name of this machine is still its own
        own = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"}
        assert httpx.post(url + "/talkByStream", json=ask, headers=own).status_code == 200


def test_an_origin_equal_to_a_public_host_name_is_not_the_servers_own(make_server: ServerFactory) -> None:
    server = make_server(host="0.0.0.0")
    port = server.server.port
    r = httpx.post(f"http://127.0.0.1:{port}/talkByStream", json={"userMessage": {"role": "user", "content": "x"}},
                   headers={"Host": f"rebind.evil:{port}", "Origin": f"http://rebind.evil:{port}", "token": TOKEN})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"


# ---------------------------------------------------------------- refusals a page can read


def test_401_and_403_to_an_admitted_origin_carry_cors_headers(make_server: ServerFactory) -> None:
    server = make_server(allow_origins=(PAGE,))
    port = server.server.port
    r = httpx.post(server.url + "/talkByStream", json={}, headers={"Origin": PAGE, "token": "wrong"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == PAGE
    assert r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(server.url + "/health", headers={"Origin": PAGE, "Host": f"elsewhere.example:{port}"})
    assert r.status_code == 403 and r.headers["access-control-allow-origin"] == PAGE
    # a foreign page learns nothing: no CORS header on its 403
    r = httpx.post(server.url + "/talkByStream", json={}, headers={"Origin": "http://evil.example", "token": TOKEN})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers


# ---------------------------------------------------------------- WebSocket frames


def ws_handshake(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /websocket/u?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_invalid_utf8_text_frames_close_1007_without_a_traceback(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("w") as err, serve(extra=["--log-level", "info"], token=TOKEN, log=err) as server:
        port = server.port
        for _ in range(5):
            s = ws_handshake(port)
            s.sendall(bytes([0x81, 0x82]) + b"\0\0\0\0" + b"\xff\xfe")  # a masked text frame, not UTF-8
            close = s.recv(16)
            assert close[:1] == b"\x88" and int.from_bytes(close[2:4], "big") == 1007, close
            s.close()
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    text = log.read_text()
    assert "Traceback" not in text and "UnicodeDecodeError" not in text, text[-2000:]


def test_a_refusal_while_a_turn_streams_comes_after_that_turns_status(make_server: ServerFactory) -> None:
    server = make_server(rate=100.0)
    url = server.url.replace("http://", "ws://") + f"/websocket/mix?token={TOKEN}"
    content = "abcdefgh" * 40  # 80 pieces at 100 a second
    with ws_connect(url) as sock:
        sock.send(json.dumps({"userMessage": {"role": "user", "content": content}}))
        first = sock.recv(timeout=10)
        assert json.loads(first)["seq"] == 1
        for bad in ("{", '{"resume": "x"}', "null"):
            sock.send(bad)
        frames = [first]
        while len([f for f in frames if not f.startswith('{"content"')]) < 7:  # the turn's status + 3 x 2
            frames.append(sock.recv(timeout=10))
    status = next(i for i, f in enumerate(frames) if not f.startswith('{"content"'))
    assert frames[status] == "[DONE]", frames[status - 2:status + 3]
    assert "".join(json.loads(f)["content"] for f in frames[:status]) == content
    rest = frames[status + 1:]
    assert [f for f in rest[1::2]] == ["[ERROR]"] * 3
    assert all(json.loads(f)["error"]["code"] in ("invalid_json", "invalid_request") for f in rest[::2])


# ---------------------------------------------------------------- retention under the turn cap


def test_a_turn_dropped_early_by_the_cap_says_so_and_health_reports_it(make_server: ServerFactory) -> None:
    server = make_server(max_turns=20, retain_seconds=120.0)
    ids = []
    for i in range(40):
        r = httpx.post(server.url + "/talkByStream", json={"userMessage": {"role": "user", "content": f"t{i}"}},
                       headers={"token": TOKEN})
        ids.append(r.headers["x-nbchat-turn"])
    r = httpx.get(server.url + "/talkByStream", params={"turn": ids[0], "after": "0"}, headers={"token": TOKEN})
    assert r.status_code == 410
    message = r.json()["error"]["message"]
    assert "120 s" in message and "20 turns are kept at once" in message and "dropped for room" in message, message
    r = httpx.post(server.url + f"/turns/{ids[0]}/interrupt", headers={"token": TOKEN})
    assert r.status_code == 404 and "20 turns" in r.json()["error"]["message"]
    retention = httpx.get(server.url + "/health").json()["retention"]
    assert retention["seconds"] == 120 and retention["max_turns"] == 20
    assert retention["evicted_early"] >= 20 and 0 <= retention["evicted_after_seconds"] < 120
    # the newest turns are all still there
    r = httpx.get(server.url + "/talkByStream", params={"turn": ids[-1], "after": "0"}, headers={"token": TOKEN})
    assert r.status_code == 200 and r.text.rstrip().endswith('{"status":"[DONE]"}')


# ---------------------------------------------------------------- a burst at a low descriptor limit


def test_a_burst_queued_while_the_server_is_stopped_never_runs_it_out_of_descriptors(tmp_path: Path) -> None:
    import resource
    import signal
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("this test opens 1,000 sockets: the hard descriptor limit is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))

    log = tmp_path / "server.log"
    socks: list[socket.socket] = []
    try:  # the server gets 256 descriptors: it admits 192 connections
        with log.open("w") as err, serve(extra=["--log-level", "info"], fd_limit=256, token=TOKEN, log=err) as server:
            server.proc.send_signal(signal.SIGSTOP)  # a server busy for a moment while a burst arrives
            for _ in range(1000):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", server.port))
                socks.append(s)
            time.sleep(0.5)  # the kernel completes the handshakes into the listen queue meanwhile
            server.proc.send_signal(signal.SIGCONT)
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
            assert len(os.listdir(f"/proc/{server.proc.pid}/fd")) < 256
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    text = log.read_text()
    assert "out of system resource" not in text and "Too many open files" not in text, text[-2000:]
