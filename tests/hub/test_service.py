"""nbchat as a JupyterHub service, through the Hub's real proxy: each transport streams for a Hub user's
token; no token, a wrong one or one without the service's access scope is refused."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import websockets.sync.client

from nbchat.bench.hubrun import HubUserToken, LocalHub
from nbchat.clients import collect, connect
from nbchat.wire.contract import Transport
from nbchat.wire.errors import AuthError
from nbchat.wire.events import End
from tests.hub.conftest import MODEL, HubPool, new_user

pytestmark = pytest.mark.hub

MESSAGE = "Streaming through the Hub's proxy: 你好 🚀"


@pytest.mark.parametrize("transport", ["stream", "sse", "ws", "openai"])
def test_each_transport_streams_through_the_proxy_for_a_hub_user(hub: LocalHub, transport: Transport) -> None:
    user = new_user(hub)
    pieces: list[str] = []
    with connect(hub.service_url, token=user.token, transport=transport) as client, \
            client.stream(MESSAGE) as turn:
        end = collect(turn, lambda chunk: pieces.append(chunk.content))
    assert end.ok
    assert "".join(pieces) == MESSAGE  # the echo backend answers with the message itself
    assert len(pieces) > 1  # streamed in pieces, not buffered into one


def test_the_service_says_who_the_hub_says_you_are(hub: LocalHub) -> None:
    user = new_user(hub)
    answer = httpx.get(f"{hub.service_url}/", headers={"Authorization": f"token {user.token}"})
    assert answer.status_code == 200
    assert answer.json() == {"name": user.name, "admin": False}


def test_health_stays_open(hub: LocalHub) -> None:
    assert httpx.get(f"{hub.service_url}/health").json()["status"] == "ok"


@pytest.mark.parametrize("token", [None, "not-a-hub-token"])
@pytest.mark.parametrize("transport", ["stream", "sse", "ws", "openai"])
def test_no_token_or_a_wrong_one_is_refused_with_401(hub: LocalHub, token: str | None, transport: Transport) -> None:
    with connect(hub.service_url, token=token, transport=transport) as client, \
            pytest.raises(AuthError, match="401"), client.stream(MESSAGE) as turn:
        collect(turn)


@pytest.mark.parametrize("token", [None, "not-a-hub-token"])
def test_a_refusal_carries_the_protocols_error_body(hub: LocalHub, token: str | None) -> None:
    headers = {"Authorization": f"token {token}"} if token else {}
    answer = httpx.post(f"{hub.service_url}/talkByStream", headers=headers,
                        json={"userMessage": {"role": "user", "content": "hello"}})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert "JUPYTERHUB_API_TOKEN" in answer.json()["error"]["message"]


def test_a_websocket_handshake_without_credentials_gets_401(hub: LocalHub) -> None:
    url = hub.service_url.replace("http://", "ws://") + "/websocket/u1"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        websockets.sync.client.connect(url, open_timeout=10)
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("transport", ["stream", "sse", "ws", "openai"])
def test_a_user_without_the_access_scope_gets_403(hub: LocalHub, transport: Transport) -> None:
    outsider = new_user(hub, access=False)
    with connect(hub.service_url, token=outsider.token, transport=transport) as client, \
            pytest.raises(AuthError, match="403") as refused, client.stream(MESSAGE) as turn:
        collect(turn)
    assert "access:services!service=nbchat" in str(refused.value) and "Origin" not in str(refused.value)
    answer = httpx.get(f"{hub.service_url}/v1/models", headers={"Authorization": f"token {outsider.token}"})
    assert answer.status_code == 403
    assert "access:services!service=nbchat" in answer.json()["error"]["message"]


def test_paths_outside_the_prefix_are_not_served(hub: LocalHub) -> None:
    """Reached directly (not through the proxy), the service answers only under its prefix."""
    user = new_user(hub)
    direct = f"http://127.0.0.1:{hub.service_port}"
    answer = httpx.get(f"{direct}/v1/models", headers={"Authorization": f"token {user.token}"})
    assert answer.status_code == 404
    assert httpx.get(f"{direct}/services/nbchat/v1/models",
                     headers={"Authorization": f"token {user.token}"}).status_code == 200


@pytest.mark.model
def test_the_embedded_model_answers_each_user_through_the_fair_queue(hub_pool: HubPool) -> None:
    """The default path: the embedded model behind the Hub, with the defaults of --jupyterhub (a fair queue of one
    slot); two users asking at once both get their answer."""
    hub = hub_pool.get(service_args=MODEL)
    users = [new_user(hub), new_user(hub)]

    def ask(user: HubUserToken) -> tuple[End, str]:
        pieces: list[str] = []
        with connect(hub.service_url, token=user.token, transport="sse", timeout=120) as client, \
                client.stream("Name a colour.", max_tokens=16, temperature=0.0) as turn:
            end = collect(turn, lambda chunk: pieces.append(chunk.content))
        return end, "".join(pieces)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, users))
    for end, text in answers:
        assert end.ok and text.strip()
    health = httpx.get(f"{hub.service_url}/health").json()
    assert health["backend"] == "smollm2" and health["generating"] == 0 and health["queued"] == 0


def test_the_hubs_public_name_is_served_and_its_pages_admitted(hub: LocalHub) -> None:
    """Behind the proxy the Host is the Hub's public name, which the service cannot know: it is not refused, and a
    page of that origin is the service's own; another origin is not."""
    user = new_user(hub)
    headers = {"Authorization": f"token {user.token}", "host": "hub.example.org"}
    turn = {"userMessage": {"role": "user", "content": "hello"}}
    own = httpx.post(f"{hub.service_url}/talkByStream", json=turn, headers={**headers,
                                                                          "origin": "http://hub.example.org"})
    assert own.status_code == 200 and own.text.rstrip().endswith('{"status":"[DONE]"}')
    other = httpx.post(f"{hub.service_url}/talkByStream", json=turn, headers={**headers,
                                                                            "origin": "http://evil.example"})
    assert other.status_code == 403 and other.json()["error"]["code"] == "origin_not_allowed"
