"""Each Hub user's share: turns at once and per minute, refused over the bound with 429 in each transport's
shape, while another user goes on."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets.sync.client

from nbchat.bench.hubrun import HubUserToken, LocalHub
from tests.hub.conftest import SLOW_ECHO, HubPool, new_user

pytestmark = pytest.mark.hub

LONG = "a turn that streams for a few seconds at twenty pieces a second " * 3


@pytest.fixture(scope="module")
def bounded_hub(hub_pool: HubPool) -> LocalHub:
    return hub_pool.get(service_args=(*SLOW_ECHO, "--max-user-turns", "1", "--user-turns-per-minute", "4",
                                      "--fair-slots", "2"))


def auth(user: HubUserToken) -> dict[str, str]:
    return {"Authorization": f"token {user.token}"}


def body(content: str) -> dict[str, object]:
    return {"userMessage": {"role": "user", "content": content}}


def test_a_second_turn_at_once_is_refused_with_429_on_every_transport(bounded_hub: LocalHub) -> None:
    hub, alice, bob = bounded_hub, new_user(bounded_hub), new_user(bounded_hub)
    with httpx.stream("POST", f"{hub.service_url}/talkByStream", headers=auth(alice), json=body(LONG),
                      timeout=60) as first:
        assert first.status_code == 200
        ndjson = httpx.post(f"{hub.service_url}/talkByStream", headers=auth(alice), json=body("again"))
        openai = httpx.post(f"{hub.service_url}/v1/chat/completions", headers=auth(alice),
                            json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        url = hub.service_url.replace("http://", "ws://") + "/websocket/w1"
        with websockets.sync.client.connect(url, additional_headers=auth(alice)) as ws:
            ws.send(json.dumps(body("and again")))
            frames = [str(ws.recv(timeout=10)), str(ws.recv(timeout=10))]
        other = httpx.post(f"{hub.service_url}/talkByStream", headers=auth(bob), json=body("bob's"))
        first.read()
    assert ndjson.status_code == 429
    assert ndjson.json()["error"]["code"] == "user_turn_limit"
    assert "at most 1 at once per user" in ndjson.json()["error"]["message"]
    assert openai.status_code == 429
    assert openai.json()["error"]["type"] == "requests" and openai.json()["error"]["code"] == "user_turn_limit"
    assert json.loads(frames[0])["error"]["code"] == "user_turn_limit" and frames[1] == "[ERROR]"
    assert other.status_code == 200 and other.text.rstrip().endswith('{"status":"[DONE]"}')  # bob is not held
    assert first.text.rstrip().endswith('{"status":"[DONE]"}')  # nor is alice's first turn


def test_turns_over_the_users_rate_are_refused_with_429(bounded_hub: LocalHub) -> None:
    hub, carol = bounded_hub, new_user(bounded_hub)
    codes = [httpx.post(f"{hub.service_url}/talkByStream", headers=auth(carol), json=body("hi"), timeout=30)
             for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 200, 429]
    assert codes[-1].json()["error"]["code"] == "user_rate_limit"
    assert "try again in" in codes[-1].json()["error"]["message"]


def test_health_shows_the_fair_queue(bounded_hub: LocalHub) -> None:
    health = httpx.get(f"{bounded_hub.service_url}/health").json()
    assert health["generating"] == 0 and health["queued"] == 0


def test_the_bounds_hold_with_the_defaults(hub_pool: HubPool) -> None:
    """--jupyterhub bounds users by default: three turns at once."""
    hub = hub_pool.get(service_args=SLOW_ECHO)
    dave = new_user(hub)
    streams = [httpx.stream("POST", f"{hub.service_url}/talkByStream", headers=auth(dave), json=body(LONG),
                            timeout=60) for _ in range(3)]
    opened = [s.__enter__() for s in streams]
    try:
        assert [r.status_code for r in opened] == [200, 200, 200]
        fourth = httpx.post(f"{hub.service_url}/talkByStream", headers=auth(dave), json=body("x"))
        assert fourth.status_code == 429 and "at most 3 at once" in fourth.json()["error"]["message"]
    finally:
        for s in streams:
            s.__exit__(None, None, None)


@pytest.mark.redis
def test_a_users_bounds_hold_across_workers_sharing_redis(workers_hub: LocalHub) -> None:
    """Two workers count one user's turns together: the third at once is refused whichever worker takes it, and
    the fifth in a minute; the places free when the turns end."""
    hub = workers_hub
    erin, frank = new_user(hub), new_user(hub)
    streams = [httpx.stream("POST", f"{hub.service_url}/talkByStream", headers=auth(erin), json=body(LONG),
                            timeout=60) for _ in range(2)]
    opened = [s.__enter__() for s in streams]
    try:
        assert [r.status_code for r in opened] == [200, 200]
        # each on a connection of its own, so the workers take them in turn as the kernel hands them out
        refused = [httpx.post(f"{hub.service_url}/talkByStream", headers=auth(erin), json=body("x"), timeout=30)
                   for _ in range(6)]
        other = httpx.post(f"{hub.service_url}/talkByStream", headers=auth(frank), json=body("frank's"), timeout=30)
        for r in opened:
            r.read()
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    assert [r.status_code for r in refused] == [429] * 6
    assert {r.json()["error"]["code"] for r in refused} == {"user_turn_limit"}
    assert other.status_code == 200 and other.text.rstrip().endswith('{"status":"[DONE]"}')
    after = [httpx.post(f"{hub.service_url}/talkByStream", headers=auth(erin), json=body("y"), timeout=30)
             for _ in range(3)]
    assert [r.status_code for r in after] == [200, 200, 429]  # two places free again; then four begun this minute
    assert after[-1].json()["error"]["code"] == "user_rate_limit"
