"""Bad input gets a clear 4xx JSON error (or the right close code), never a 500,
nothing is generated, and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from nbchat.server.serving import ServerHandle
from tests.helpers import TOKEN, turns_of

H = {"token": TOKEN}
TURN_PATHS = ["/talkByStream", "/createSse", "/turns"]

BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (b"\xff\xfe\x00garbage", "invalid_utf8"),
    (b'"a string"', "invalid_request"),
    (b"[1, 2]", "invalid_request"),
    (b"{}", "invalid_request"),
    (b'{"userMessage": "hi"}', "invalid_request"),
    (b'{"userMessage": {"role": "robot", "content": "hi"}}', "invalid_request"),
    (b'{"userMessage": {"role": "user", "content": 5}}', "invalid_request"),
    (b'{"userMessage": {"role": "user", "content": "hi"}, "conversation": {}}', "invalid_request"),
    (b'{"userMessage": {"role": "user", "content": "hi"}, "conversation": [1]}', "invalid_request"),
    (b'{"userMessage": {"role": "user", "content": "hi"}, "temperature": "hot"}', "invalid_request"),
    (b'{"userMessage": {"role": "user", "content": "hi"}, "temperature": NaN}', "invalid_json"),
    (b'{"userMessage": {"role": "user", "content": "hi"}, "maxTokens": 0}', "invalid_request"),
    (b'{"userMessage": {"role": "user", "content": "hi"}, "maxTokens": 2.5}', "invalid_request"),
    (b'{"userMessage": {"role": "user", "content": "hi"}, "model": 3}', "invalid_request"),
]


def turns_now(server: ServerHandle) -> int:
    return len(turns_of(server))


@pytest.mark.parametrize("path", TURN_PATHS)
@pytest.mark.parametrize("body,code", BAD_BODIES)
def test_bad_bodies_are_400_and_generate_nothing(echo_server: ServerHandle, path: str, body: bytes, code: str) -> None:
    before = turns_now(echo_server)
    r = httpx.post(echo_server.url + path, content=body, headers={**H, "content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["message"]
    assert turns_now(echo_server) == before
    assert httpx.get(echo_server.url + "/health").status_code == 200


@pytest.mark.parametrize("path", [*TURN_PATHS, "/v1/chat/completions"])
def test_oversized_body_is_413(echo_server: ServerHandle, path: str) -> None:
    big = json.dumps({"userMessage": {"role": "user", "content": "x" * (1024 * 1024 + 10)}}).encode()
    r = httpx.post(echo_server.url + path, content=big, headers=H)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    def chunked():  # no Content-Length: the limit must hold while reading
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = httpx.post(echo_server.url + path, content=chunked(), headers=H)
    assert r.status_code == 413


def test_unknown_uid_and_turn(echo_server: ServerHandle) -> None:
    r = httpx.get(echo_server.url + "/createSse", headers={**H, "uid": "nobody-here"})
    assert r.status_code == 204
    r = httpx.get(echo_server.url + "/talkByStream", params={"uid": "nobody-here"}, headers=H)
    assert r.status_code == 204
    r = httpx.post(echo_server.url + "/turns/no-such-turn/interrupt", headers=H)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_turn"
    for path in ["/createSse", "/talkByStream"]:
        r = httpx.get(echo_server.url + path, params={"turn": "no-such-turn"}, headers=H)
        assert r.status_code == 410
        assert r.json()["error"]["code"] == "resume_unavailable"
    r = httpx.get(echo_server.url + "/createSse", headers={**H, "uid": "u", "last-event-id": "abc"})
    assert r.status_code in (204, 400)
    r = httpx.get(echo_server.url + "/nowhere", headers=H)
    assert r.status_code == 404
    assert "error" in r.json()
    r = httpx.put(echo_server.url + "/talkByStream", headers=H)
    assert r.status_code == 405


def test_post_turns_needs_uid(echo_server: ServerHandle) -> None:
    r = httpx.post(echo_server.url + "/turns", json={"userMessage": {"role": "user", "content": "x"}}, headers=H)
    assert r.status_code == 400
    assert "uid" in r.json()["error"]["message"]


@pytest.mark.parametrize("body,param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 2.5}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": -0.1}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
])
def test_openai_bad_requests_are_400_in_openai_shape(echo_server: ServerHandle, body: dict[str, object],
                                                     param: str) -> None:
    r = httpx.post(echo_server.url + "/v1/chat/completions", json=body, headers=H)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["message"]


def ws(server: ServerHandle, uid: str):  # type: ignore[no-untyped-def]
    return ws_connect(server.url.replace("http://", "ws://") + f"/websocket/{uid}?token={TOKEN}",
                      max_size=None)


@pytest.mark.parametrize("frame,code", [
    ("{not json", "invalid_json"),
    ('{"userMessage": 1}', "invalid_request"),
    ("[1]", "invalid_request"),
    ("", "no_pending_turn"),
    ('{"resume": {"after": 0}}', "resume_unavailable"),
    ('{"resume": "x"}', "invalid_request"),
])
def test_bad_websocket_frames_get_an_error_record_and_the_socket_stays(echo_server: ServerHandle, frame: str,
                                                                        code: str) -> None:
    with ws(echo_server, "bad-ws-" + code) as sock:
        sock.send(frame)
        err = json.loads(sock.recv(timeout=5))
        assert err["error"]["code"] == code
        assert sock.recv(timeout=5) == "[ERROR]"
        sock.send('{"userMessage": {"role": "user", "content": "still here"}}')
        frames = [sock.recv(timeout=5) for _ in range(4)]
        assert frames[-1] == "[DONE]"
        assert "".join(json.loads(f)["content"] for f in frames[:-1]) == "still here"


def test_binary_websocket_frame_is_rejected(echo_server: ServerHandle) -> None:
    with ws(echo_server, "bin") as sock:
        sock.send(b"\x00\x01")
        assert json.loads(sock.recv(timeout=5))["error"]["code"] == "unsupported_frame"
        assert sock.recv(timeout=5) == "[ERROR]"


def test_oversized_websocket_frame_closes_1009(echo_server: ServerHandle) -> None:
    with ws(echo_server, "big") as sock:
        sock.send("x" * (2 * 1024 * 1024))
        with pytest.raises(ConnectionClosed) as info:
            sock.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert httpx.get(echo_server.url + "/health").status_code == 200


def test_websocket_request_over_1mib_in_one_frame_below_transport_limit_closes_1009(echo_server: ServerHandle) -> None:
    body = json.dumps({"userMessage": {"role": "user", "content": "y" * (1024 * 1024 + 100)}})
    with ws(echo_server, "big2") as sock:
        sock.send(body)
        with pytest.raises(ConnectionClosed) as info:
            sock.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
