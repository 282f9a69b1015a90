"""Turn lifecycle on a real server: the grace period after a client vanishes,
reattaching within it, interrupts that cancel at once, and shutdown."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
from websockets.sync.client import connect as ws_connect

from nbchat.wire.contract import TURN_HEADER
from tests.helpers import TOKEN, RecordingBackend, ServerFactory, turns_of

H = {"token": TOKEN}
REQ = {"userMessage": {"role": "user", "content": "count"}}


def read_lines(lines: Iterator[str], n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for line in lines:
        if line:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def test_vanished_client_keeps_generating_through_grace_then_cancelled(make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=100_000, interval=0.01)
    server = make_server(backend, grace_period=1.5)
    with httpx.stream("POST", server.url + "/talkByStream", json=REQ, headers=H) as r:
        turn_id = r.headers[TURN_HEADER]
        read_lines(r.iter_lines(), 3)
    left = time.monotonic()
    produced_at_leave = backend.produced
    assert not backend.cancelled.wait(0.8), "cancelled before the grace period ended"
    assert backend.produced > produced_at_leave + 10, "generation did not go on during the grace period"
    assert backend.cancelled.wait(5), "generation was never cancelled"
    waited = time.monotonic() - left
    assert 1.2 < waited < 4.0, waited
    turn = turns_of(server).get(turn_id)
    assert turn is not None and turn.end is not None and turn.end.status.value == "[INTERRUPTED]"


def test_reattach_within_grace_gets_the_rest_and_generation_completes(make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=60, interval=0.01)
    server = make_server(backend, grace_period=5)
    with httpx.stream("POST", server.url + "/talkByStream", json=REQ, headers=H) as r:
        turn_id = r.headers["x-nbchat-turn"]
        first = read_lines(r.iter_lines(), 5)
    seen = [c["content"] for c in first]
    r = httpx.get(server.url + "/talkByStream", params={"turn": turn_id, "after": 5}, headers=H, timeout=10)
    lines = [json.loads(x) for x in r.text.splitlines() if x]
    assert lines[-1] == {"status": "[DONE]"}
    seqs = [c["seq"] for c in lines[:-1]]
    assert seqs == list(range(6, 61))
    assert seen + [c["content"] for c in lines[:-1]] == [f"<{i}>" for i in range(60)]
    assert backend.finished.is_set() and not backend.cancelled.is_set()


def test_interrupt_cancels_within_one_piece(make_server: ServerFactory) -> None:
    # pieces 100 ms apart: the interrupt's round trip takes a few ms, so at most
    # the piece already under way may still appear
    backend = RecordingBackend(count=100_000, interval=0.1)
    server = make_server(backend)
    with httpx.stream("POST", server.url + "/talkByStream", json=REQ, headers=H) as r:
        turn_id = r.headers["x-nbchat-turn"]
        lines = r.iter_lines()
        read_lines(lines, 3)
        produced = backend.produced
        ok = httpx.post(server.url + f"/turns/{turn_id}/interrupt", headers=H)
        assert ok.status_code == 200 and ok.json()["interrupted"] is True
        assert backend.cancelled.wait(2)
        assert backend.produced - produced <= 1
        rest = [json.loads(x) for x in lines if x]
    assert rest[-1] == {"status": "[INTERRUPTED]"}


def test_websocket_interrupt_frame(make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=100_000, interval=0.01)
    server = make_server(backend)
    url = server.url.replace("http://", "ws://") + f"/websocket/wsint?token={TOKEN}"
    with ws_connect(url) as ws:
        ws.send(json.dumps(REQ))
        for _ in range(3):
            ws.recv(timeout=5)
        ws.send("[INTERRUPT]")
        frames = []
        while (frame := ws.recv(timeout=5)) not in ("[INTERRUPTED]", "[DONE]"):
            frames.append(frame)
        assert frame == "[INTERRUPTED]"
        assert backend.cancelled.wait(2)
        ws.send(json.dumps({"userMessage": {"role": "user", "content": "next"}}))  # the socket carries on
        assert json.loads(ws.recv(timeout=5))["content"] == "<0>"


def test_shutdown_ends_running_turns_with_interrupted(make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=100_000, interval=0.01)
    server = make_server(backend)
    results: dict[str, object] = {}
    started = threading.Barrier(4)

    def ndjson() -> None:
        with httpx.stream("POST", server.url + "/talkByStream", json=REQ, headers=H, timeout=20) as r:
            lines = r.iter_lines()
            next(lines)
            started.wait()
            results["ndjson"] = [json.loads(x) for x in lines if x][-1]

    def sse() -> None:
        with httpx.stream("POST", server.url + "/createSse", json=REQ, headers=H, timeout=20) as r:
            lines = r.iter_lines()
            next(lines)
            started.wait()
            results["sse"] = [x for x in lines if x.startswith("id:")][-1]

    def ws() -> None:
        with ws_connect(server.url.replace("http://", "ws://") + f"/websocket/shut?token={TOKEN}") as sock:
            sock.send(json.dumps(REQ))
            sock.recv(timeout=5)
            started.wait()
            frames = []
            try:
                while True:
                    frames.append(sock.recv(timeout=10))
            except Exception:
                results["ws_close"] = sock.close_code
            results["ws"] = frames[-1]

    threads = [threading.Thread(target=f) for f in (ndjson, sse, ws)]
    for t in threads:
        t.start()
    started.wait()
    server.stop()
    for t in threads:
        t.join(15)
    assert results["ndjson"] == {"status": "[INTERRUPTED]"}
    assert results["sse"] == "id: [INTERRUPTED]"
    assert results["ws"] == "[INTERRUPTED]"
    assert results["ws_close"] == 1001
    assert not server.thread.is_alive()


def test_interrupt_right_after_the_request_still_ends_the_turn(make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=100_000, interval=0.01)
    server = make_server(backend)
    url = server.url.replace("http://", "ws://") + f"/websocket/early?token={TOKEN}"
    with ws_connect(url) as ws:
        for _ in range(5):
            ws.send(json.dumps(REQ))
            ws.send("[INTERRUPT]")  # before the turn's task has run a single step
            frames = []
            while (frame := ws.recv(timeout=5)) not in ("[INTERRUPTED]", "[DONE]"):
                frames.append(frame)
            assert frame == "[INTERRUPTED]"
