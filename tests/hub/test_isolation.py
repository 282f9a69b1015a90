"""Each Hub user's turns are that user's: another user asking for the same uid or the turn's id gets
nothing of it and cannot stop it; the admin scope may. The same across processes sharing Redis."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets.sync.client

from nbchat.bench.hubrun import HubUserToken, LocalHub
from tests.hub.conftest import SLOW_ECHO, HubPool, new_user

pytestmark = pytest.mark.hub

#: at 20 pieces a second the echo backend takes about 3 s over it: the others ask while it runs
SECRET = "alice's private question, streamed slowly enough to be asked about " * 4


def auth(user: HubUserToken) -> dict[str, str]:
    return {"Authorization": f"token {user.token}"}


def turn_body(content: str, uid: str | None = None) -> dict[str, object]:
    return {"userMessage": {"role": "user", "content": content}, **({"uid": uid} if uid else {})}


def read_ndjson(response: httpx.Response) -> tuple[str, str]:
    """The answer's text and its final status."""
    text, status = [], ""
    for line in response.iter_lines():
        record = json.loads(line)
        text.append(record.get("content", ""))
        status = record.get("status", status)
    return "".join(text), status


@pytest.fixture(params=["memory", pytest.param("redis-2-workers", marks=pytest.mark.redis)])
def slow_hub(request: pytest.FixtureRequest, hub_pool: HubPool) -> LocalHub:
    if request.param == "memory":
        return hub_pool.get(service_args=SLOW_ECHO)
    hub: LocalHub = request.getfixturevalue("workers_hub")
    return hub


def foreign_reads(hub: LocalHub, intruder: HubUserToken, turn_id: str, uid: str) -> list[tuple[str, int, str]]:
    """What another user gets when asking for the turn by id or uid, on every transport."""
    base, answers = hub.service_url, []
    for path in (f"/talkByStream?turn={turn_id}&after=0", f"/createSse?turn={turn_id}", f"/createSse?uid={uid}",
                 f"/talkByStream?uid={uid}&after=0"):
        answer = httpx.get(base + path, headers=auth(intruder), timeout=30)
        answers.append((path, answer.status_code, answer.text))
    stop = httpx.post(f"{base}/turns/{turn_id}/interrupt", headers=auth(intruder), timeout=30)
    answers.append(("interrupt", stop.status_code, stop.text))
    url = base.replace("http://", "ws://") + f"/websocket/{uid}"
    with websockets.sync.client.connect(url, additional_headers=auth(intruder)) as ws:
        ws.send(json.dumps({"resume": {"after": 0, "turn": turn_id}}))
        answers.append(("ws resume", 0, str(ws.recv(timeout=10))))
    return answers


def test_another_user_gets_nothing_of_a_turn_and_cannot_stop_it(slow_hub: LocalHub) -> None:
    alice, bob = new_user(slow_hub), new_user(slow_hub)
    with httpx.stream("POST", f"{slow_hub.service_url}/talkByStream", headers=auth(alice), timeout=60,
                      json=turn_body(SECRET, uid="shared")) as mine:
        assert mine.status_code == 200
        turn_id = mine.headers["x-nbchat-turn"]
        answers = foreign_reads(slow_hub, bob, turn_id, "shared")
        # bob's own turn on the same uid supersedes nothing of alice's
        own = httpx.post(f"{slow_hub.service_url}/talkByStream", headers=auth(bob), json=turn_body("bob's", "shared"))
        text, status = read_ndjson(mine)
    for what, code, body in answers:
        assert "private" not in body, what
        assert code in (0, 204, 404, 410), (what, code, body)
    assert answers[-1][2].startswith("{") and "error" in answers[-1][2]  # the WebSocket's error record
    assert [code for what, code, _ in answers if what == "interrupt"] == [404]
    assert (text, status) == (SECRET, "[DONE]")  # alice's turn ran to its end, untouched
    assert own.status_code == 200 and read_ndjson(own) == ("bob's", "[DONE]")


def test_a_queued_turns_uid_is_the_users_own(slow_hub: LocalHub) -> None:
    alice, bob = new_user(slow_hub), new_user(slow_hub)
    queued = httpx.post(f"{slow_hub.service_url}/turns", headers=auth(alice), json=turn_body("queued", "q1"))
    assert queued.status_code == 200 and queued.json()["uid"] == "q1"  # the user's own uid, not the stored one
    assert httpx.get(f"{slow_hub.service_url}/createSse?uid=q1", headers=auth(bob)).status_code == 204
    started = httpx.get(f"{slow_hub.service_url}/talkByStream?uid=q1&after=0", headers=auth(alice), timeout=30)
    assert read_ndjson(started) == ("queued", "[DONE]")


def test_the_admin_scope_may_read_and_stop_any_turn(slow_hub: LocalHub) -> None:
    alice, admin = new_user(slow_hub), new_user(slow_hub, admin=True)
    with httpx.stream("POST", f"{slow_hub.service_url}/talkByStream", headers=auth(alice), timeout=60,
                      json=turn_body(SECRET)) as mine:
        turn_id = mine.headers["x-nbchat-turn"]
        with httpx.stream("GET", f"{slow_hub.service_url}/talkByStream?turn={turn_id}&after=0", headers=auth(admin),
                          timeout=60) as watched:
            assert watched.status_code == 200
            first = json.loads(next(watched.iter_lines()))
            stop = httpx.post(f"{slow_hub.service_url}/turns/{turn_id}/interrupt", headers=auth(admin))
        text, status = read_ndjson(mine)
    assert SECRET.startswith(first["content"])
    assert stop.status_code == 200 and stop.json()["interrupted"] is True
    assert status == "[INTERRUPTED]" and SECRET.startswith(text) and text != SECRET
