"""The contract's details seen on the wire, with raw HTTP and WebSocket
(independent of nbchat's own clients): headers, SSE ids, keep-alives,
the seed's queue-then-stream flow, resume and 204s."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from nbchat.server.serving import ServerHandle
from nbchat.wire.protocol import decode_sse_message
from nbchat.wire.sse import SSEDecoder, SSEMessage
from tests.helpers import LONG_MESSAGE, TOKEN, RecordingBackend, ServerFactory, StallBackend, turns_of

H = {"token": TOKEN}


def turn_request(content: str, **extra: object) -> dict[str, object]:
    return {"userMessage": {"role": "user", "content": content}, "conversation": [], **extra}


def sse_messages(body: bytes) -> list[SSEMessage]:
    return SSEDecoder().feed(body)


def sse_text(messages: list[SSEMessage]) -> str:
    return "".join(json.loads(m.data)["content"] for m in messages if m.id and m.id.isdigit())


def test_sse_headers_ids_and_status(echo_server: ServerHandle) -> None:
    r = httpx.post(echo_server.url + "/createSse", json=turn_request(LONG_MESSAGE),
                   headers={**H, "Accept-Encoding": "gzip, br"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in r.headers
    msgs = sse_messages(r.content)
    assert [m.id for m in msgs[:-1]] == [str(i) for i in range(1, len(msgs))]
    assert msgs[-1].id == "[DONE]" and msgs[-1].data == "[DONE]"
    assert sse_text(msgs) == LONG_MESSAGE


def test_ndjson_headers_and_lines(echo_server: ServerHandle) -> None:
    r = httpx.post(echo_server.url + "/talkByStream", json=turn_request(LONG_MESSAGE),
                   headers={**H, "Accept-Encoding": "gzip"})
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in r.headers
    lines = [json.loads(x) for x in r.content.split(b"\n") if x]
    assert lines[-1] == {"status": "[DONE]"}
    assert [x["seq"] for x in lines[:-1]] == list(range(1, len(lines)))
    assert "".join(x["content"] for x in lines[:-1]) == LONG_MESSAGE


def test_seed_flow_queue_then_websocket_and_sse_get(echo_server: ServerHandle) -> None:
    uid = "seed-uid"
    r = httpx.post(echo_server.url + "/turns", json=turn_request("over the socket", uid=uid), headers=H)
    assert r.status_code == 200 and r.json()["uid"] == uid and r.json()["id"]
    with ws_connect(echo_server.url.replace("http", "ws") + f"/websocket/{uid}?token={TOKEN}") as ws:
        ws.send("")
        frames = []
        while (f := ws.recv(timeout=5)) != "[DONE]":
            frames.append(json.loads(f)["content"])
    assert "".join(frames) == "over the socket"
    httpx.post(echo_server.url + "/turns", json=turn_request("over SSE", uid=uid), headers=H)
    r = httpx.get(echo_server.url + "/createSse", headers={**H, "uid": uid})
    msgs = sse_messages(r.content)
    assert sse_text(msgs) == "over SSE" and msgs[-1].id == "[DONE]"
    # a reconnect whose last id is the status: nothing left, 204 stops the browser
    r = httpx.get(echo_server.url + "/createSse", headers={**H, "uid": uid, "last-event-id": "[DONE]"})
    assert r.status_code == 204
    r = httpx.get(echo_server.url + "/createSse", params={"uid": uid, "lastEventId": "[DONE]", "token": TOKEN})
    assert r.status_code == 204


@pytest.mark.parametrize("style", ["header", "query"])
def test_sse_resume_at_random_points(echo_server: ServerHandle, style: str) -> None:
    rng = random.Random(7)
    uid = f"resume-{style}"
    turn_id = httpx.post(echo_server.url + "/turns", json=turn_request(LONG_MESSAGE, uid=uid), headers=H).json()["id"]
    full = sse_messages(httpx.get(echo_server.url + "/createSse", headers={**H, "uid": uid}).content)
    n = len(full) - 1
    for _ in range(5):
        cut = rng.randrange(0, n + 1)
        if style == "header":
            r = httpx.get(echo_server.url + "/createSse", headers={**H, "uid": uid, "last-event-id": str(cut)})
        else:
            r = httpx.get(echo_server.url + "/createSse", params={"turn": turn_id, "lastEventId": cut}, headers=H)
        rest = sse_messages(r.content)
        assert [m.id for m in rest] == [str(i) for i in range(cut + 1, n + 1)] + ["[DONE]"]
        assert sse_text(full[:cut]) + sse_text(rest) == LONG_MESSAGE


def test_ndjson_resume_at_random_points(echo_server: ServerHandle) -> None:
    rng = random.Random(11)
    r = httpx.post(echo_server.url + "/talkByStream", json=turn_request(LONG_MESSAGE), headers=H)
    turn_id = r.headers["x-nbchat-turn"]
    full = [json.loads(x) for x in r.content.split(b"\n") if x]
    for _ in range(5):
        cut = rng.randrange(0, len(full))
        again = httpx.get(echo_server.url + "/talkByStream", params={"turn": turn_id, "after": cut}, headers=H)
        rest = [json.loads(x) for x in again.content.split(b"\n") if x]
        assert full[:cut] + rest == full


def test_websocket_resume_on_a_new_socket(make_server: ServerFactory) -> None:
    server = make_server(rate=1000.0)  # ~370 pieces: the socket drops 17 in, while the turn generates
    url = server.url.replace("http", "ws") + f"/websocket/wsres?token={TOKEN}"
    seen: list[dict[str, object]] = []
    with ws_connect(url) as ws:
        ws.send(json.dumps(turn_request(LONG_MESSAGE)))
        for _ in range(17):
            seen.append(json.loads(ws.recv(timeout=5)))
    with ws_connect(url) as ws:  # the first socket is gone; the turn goes on through the grace period
        ws.send(json.dumps({"resume": {"after": seen[-1]["seq"]}}))
        while (f := ws.recv(timeout=5)) != "[DONE]":
            seen.append(json.loads(f))
    assert [c["seq"] for c in seen] == list(range(1, len(seen) + 1))
    assert "".join(str(c["content"]) for c in seen) == LONG_MESSAGE


def test_sse_keepalive_comment_while_nothing_else_goes_out(make_server: ServerFactory) -> None:
    server = make_server(StallBackend(before=1), keepalive_seconds=0.2, model_timeout=1.2)
    r = httpx.post(server.url + "/createSse", json=turn_request("x"), headers=H, timeout=10)
    comments = [line for line in r.text.split("\n") if line.startswith(":")]
    assert len(comments) >= 3
    msgs = sse_messages(r.content)
    assert msgs[-1].id == "[MODEL_TIMEOUT]"


def test_sse_error_record_precedes_error_status(make_server: ServerFactory) -> None:
    from tests.helpers import FailBackend

    server = make_server(FailBackend())
    msgs = sse_messages(httpx.post(server.url + "/createSse", json=turn_request("x"), headers=H).content)
    assert msgs[-1].id == "[ERROR]"
    err = decode_sse_message(msgs[-2], 0.0)
    assert getattr(err, "code", None) == "backend_error"
    assert "on purpose" in getattr(err, "message", "")


def test_a_new_question_for_a_uid_supersedes_the_running_one(make_server: ServerFactory) -> None:
    backend = RecordingBackend(count=10_000, interval=0.01)
    server = make_server(backend)
    first = httpx.post(server.url + "/turns", json=turn_request("a", uid="u"), headers=H).json()["id"]
    with httpx.stream("GET", server.url + "/createSse", headers={**H, "uid": "u"}) as r:
        lines = r.iter_lines()
        next(lines)
        httpx.post(server.url + "/turns", json=turn_request("b", uid="u"), headers=H)
        ids = [x for x in lines if x.startswith("id:")]
    assert ids[-1] == "id: [INTERRUPTED]"
    assert turns_of(server).get(first).end.status.value == "[INTERRUPTED]"
