"""Auth, origin and CORS on a real server: HTTP and WebSocket alike."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from nbchat.server.serving import ServerHandle
from tests.helpers import TOKEN

BODY = {"userMessage": {"role": "user", "content": "hi"}}


def ws_url(server: ServerHandle, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


@pytest.mark.parametrize("headers,params", [
    ({}, {}),
    ({"token": "wrong"}, {}),
    ({"Authorization": "Bearer wrong"}, {}),
    ({}, {"token": "wrong"}),
    ({"Authorization": f"Basic {TOKEN}"}, {}),
])
def test_missing_or_wrong_token_is_401_json(echo_server: ServerHandle, headers: dict[str, str],
                                            params: dict[str, str]) -> None:
    for method, path in [("POST", "/talkByStream"), ("POST", "/createSse"), ("GET", "/createSse"),
                         ("POST", "/turns"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]:
        r = httpx.request(method, echo_server.url + path, json=BODY, headers=headers, params=params)
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("headers,params", [
    ({"token": TOKEN}, {}),
    ({"Authorization": f"Bearer {TOKEN}"}, {}),
    ({"authorization": f"bearer {TOKEN}"}, {}),
    ({}, {"token": TOKEN}),
])
def test_every_token_form_is_accepted(echo_server: ServerHandle, headers: dict[str, str],
                                      params: dict[str, str]) -> None:
    r = httpx.post(echo_server.url + "/talkByStream", json=BODY, headers=headers, params=params)
    assert r.status_code == 200
    assert r.text.endswith('{"status":"[DONE]"}\n')


def test_health_needs_no_token(echo_server: ServerHandle) -> None:
    r = httpx.get(echo_server.url + "/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_websocket_without_token_is_refused(echo_server: ServerHandle) -> None:
    with pytest.raises(InvalidStatus) as info:
        ws_connect(ws_url(echo_server, "/websocket/u1")).close()
    assert info.value.response.status_code == 401
    with ws_connect(ws_url(echo_server, "/websocket/u1") + f"?token={TOKEN}") as ws:
        ws.send('{"userMessage": {"role": "user", "content": "ok"}}')
        assert ws.recv(timeout=5).startswith('{"content":"ok"')


def test_foreign_origin_is_403_everywhere(echo_server: ServerHandle) -> None:
    evil = {"Origin": "http://evil.example", "token": TOKEN}
    for path in ["/talkByStream", "/health", "/createSse"]:
        r = httpx.post(echo_server.url + path, json=BODY, headers=evil)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(echo_server.url + "/talkByStream",
                        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403
    with pytest.raises(InvalidStatus) as info:
        ws_connect(ws_url(echo_server, "/websocket/u2") + f"?token={TOKEN}", origin="http://evil.example").close()
    assert info.value.response.status_code == 403


def test_own_origin_is_allowed(echo_server: ServerHandle) -> None:
    own = echo_server.url
    r = httpx.post(echo_server.url + "/talkByStream", json=BODY, headers={"Origin": own, "token": TOKEN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == own
    with ws_connect(ws_url(echo_server, "/websocket/u3") + f"?token={TOKEN}", origin=own) as ws:  # type: ignore[arg-type]
        ws.send('{"userMessage": {"role": "user", "content": "x"}}')
        assert ws.recv(timeout=5).startswith('{"content":"x"')


def test_allowed_origin_gets_cors_and_preflight(make_server) -> None:  # type: ignore[no-untyped-def]
    page = "http://127.0.0.1:9"
    server = make_server(allow_origins=(page,))
    pre = httpx.options(server.url + "/talkByStream", headers={
        "Origin": page, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "token, content-type, uid, last-event-id, authorization"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == page
    allowed = {h.strip() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert {"uid", "token", "authorization", "content-type", "last-event-id"} <= allowed
    assert "POST" in pre.headers["access-control-allow-methods"]
    r = httpx.post(server.url + "/talkByStream", json=BODY, headers={"Origin": page, "token": TOKEN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == page
    assert "X-NBChat-Turn" in r.headers["access-control-expose-headers"]
    with ws_connect(ws_url(server, "/websocket/u4") + f"?token={TOKEN}", origin=page) as ws:  # type: ignore[arg-type]
        ws.send('{"userMessage": {"role": "user", "content": "y"}}')
        assert ws.recv(timeout=5).startswith('{"content":"y"')


def test_star_allows_any_origin(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(allow_origins=("*",))
    r = httpx.post(server.url + "/talkByStream", json=BODY, headers={"Origin": "http://a.example", "token": TOKEN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://a.example"


def test_empty_token_turns_auth_off(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(token="")
    r = httpx.post(server.url + "/talkByStream", json=BODY)
    assert r.status_code == 200
