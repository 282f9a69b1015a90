"""A page's login: the Hub's OAuth flow through the proxy, as a browser logged in to the Hub follows it,
then streaming with the service's cookie alone; a page of another site cannot use that cookie."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
import websockets.sync.client

from nbchat.bench.hubrun import PASSWORD, LocalHub
from nbchat.clients import collect, connect
from nbchat.wire.errors import AuthError
from tests.hub.conftest import new_user

pytestmark = pytest.mark.hub

TURN = {"userMessage": {"role": "user", "content": "hello from a page"}}


def hub_login(hub: LocalHub, http: httpx.Client, name: str) -> None:
    """Log in at /hub/login with the DummyAuthenticator's form (and its XSRF field), as a browser does."""
    form = http.get(f"{hub.url}/hub/login")
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    assert xsrf is not None, form.text[:500]
    done = http.post(f"{hub.url}/hub/login", data={"username": name, "password": PASSWORD, "_xsrf": xsrf.group(1)},
                     follow_redirects=False)
    assert done.status_code == 302, done.text[:500]


@pytest.fixture
def browser(hub: LocalHub) -> Iterator[tuple[httpx.Client, str]]:
    """An HTTP client holding a Hub login (the Hub's cookie), and the user's name."""
    user = new_user(hub)
    with httpx.Client(timeout=30) as http:
        hub_login(hub, http, user.name)
        yield http, user.name


def test_a_page_without_the_service_cookie_is_sent_through_the_hubs_login(hub: LocalHub) -> None:
    with httpx.Client(timeout=30) as http:
        page = http.get(f"{hub.service_url}/", headers={"accept": "text/html"})
    assert page.status_code == 302
    assert "/hub/api/oauth2/authorize" in page.headers["location"]
    assert "code_challenge=" in page.headers["location"]  # PKCE


def test_the_oauth_flow_logs_a_hub_user_in_and_the_cookie_streams(hub: LocalHub,
                                                                  browser: tuple[httpx.Client, str]) -> None:
    http, name = browser
    page = http.get(f"{hub.service_url}/", headers={"accept": "text/html"}, follow_redirects=True)
    assert page.status_code == 200, page.text[:300]
    assert page.json()["name"] == name
    assert [r.status_code for r in page.history] == [302, 302, 302]  # the service, the Hub, the callback
    assert str(page.url) == f"{hub.service_url}/"
    pieces: list[str] = []
    with connect(hub.service_url, transport="stream", http_client=http) as client, client.stream("by cookie") as turn:
        end = collect(turn, lambda chunk: pieces.append(chunk.content))
    assert end.ok and "".join(pieces) == "by cookie"


def test_the_login_returns_to_the_page_that_asked(hub: LocalHub, browser: tuple[httpx.Client, str]) -> None:
    http, _ = browser
    page = http.get(f"{hub.service_url}/v1/models?x=1", headers={"sec-fetch-mode": "navigate"},
                    follow_redirects=True)
    assert page.status_code == 200
    assert str(page.url) == f"{hub.service_url}/v1/models?x=1"


def test_a_cookie_post_from_another_site_is_refused(hub: LocalHub, browser: tuple[httpx.Client, str]) -> None:
    http, _ = browser
    assert http.get(f"{hub.service_url}/", headers={"accept": "text/html"}, follow_redirects=True).status_code == 200
    own = http.post(f"{hub.service_url}/talkByStream", json=TURN, headers={"origin": hub.url,
                                                                         "sec-fetch-site": "same-origin"})
    assert own.status_code == 200 and own.text.rstrip().endswith('{"status":"[DONE]"}')
    foreign = http.post(f"{hub.service_url}/talkByStream", json=TURN, headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "origin_not_allowed"
    # a cross-site request that carries no Origin (a browser marks it by Sec-Fetch-Site) gets no cookie login
    blind = http.post(f"{hub.service_url}/talkByStream", json=TURN, headers={"sec-fetch-site": "cross-site"})
    assert blind.status_code == 401


def test_a_websocket_of_the_proxys_origin_streams_with_the_cookie(hub: LocalHub,
                                                                  browser: tuple[httpx.Client, str]) -> None:
    http, _ = browser
    assert http.get(f"{hub.service_url}/", headers={"accept": "text/html"}, follow_redirects=True).status_code == 200
    cookie = "; ".join(f"{c.name}={c.value}" for c in http.cookies.jar if c.path.startswith("/services/nbchat"))
    url = hub.service_url.replace("http://", "ws://") + "/websocket/page-1"
    with websockets.sync.client.connect(url, additional_headers={"cookie": cookie, "origin": hub.url}) as ws:
        ws.send('{"userMessage": {"role": "user", "content": "over a socket"}}')
        frames = [str(ws.recv(timeout=10))]
        while "[DONE]" not in frames[-1] and len(frames) < 50:
            frames.append(str(ws.recv(timeout=10)))
    assert frames[-1] == "[DONE]"
    assert "".join(json.loads(f)["content"] for f in frames[:-1]) == "over a socket"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(url, additional_headers={"cookie": cookie, "origin": "http://evil.example"})
    assert refused.value.response.status_code == 403


def test_a_callback_without_its_state_cookie_is_refused(hub: LocalHub, browser: tuple[httpx.Client, str]) -> None:
    http, _ = browser
    answer = http.get(f"{hub.service_url}/oauth_callback?code=abc&state=forged")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "oauth_state_mismatch"


def test_a_stale_cookie_does_not_let_a_client_in(hub: LocalHub) -> None:
    with httpx.Client(cookies={"service-nbchat": "forged|value"}) as http, \
            connect(hub.service_url, transport="stream", http_client=http) as client, \
            pytest.raises(AuthError, match="401"), client.stream("x") as turn:
        collect(turn)
