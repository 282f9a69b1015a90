"""What the shared store leaves in Redis and lets through to clients, against a real
``redis-server`` and real ``nbchat serve --store`` processes: every key carries an expiry
from its first write (a process SIGKILLed before its first heartbeat leaks nothing forever),
and a turn id that names another key is an unknown turn, with no Redis detail in any answer."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
import redis
from websockets.sync.client import connect as ws_connect

from tests.conftest import RedisProcess, ServeFactory
from tests.helpers import TOKEN

pytestmark = pytest.mark.redis

H = {"token": TOKEN}


def stream_turn(url: str, first: threading.Event, turns: list[str]) -> None:
    body = {"userMessage": {"role": "user", "content": "k" * 4000}}
    try:
        with httpx.stream("POST", url + "/talkByStream", json=body, headers=H, timeout=30) as r:
            turns.append(r.headers["x-nbchat-turn"])
            for _ in r.iter_lines():
                first.set()
    except httpx.HTTPError:
        pass  # the server is killed under it


def test_keys_of_a_process_killed_before_its_first_heartbeat_all_expire(redis_server: RedisProcess,
                                                                        serve_process: ServeFactory) -> None:
    # a 30 s lease: the first heartbeat (which extends every key's expiry) comes 10 s after start,
    # well after the kill below, so only the expiries set with the writes themselves are left
    server = serve_process("--store", redis_server.url, "--lease-seconds", "30", rate=20.0)
    started = time.monotonic()
    firsts = [threading.Event() for _ in range(20)]
    turns: list[str] = []
    threads = [threading.Thread(target=stream_turn, args=(server.url, first, turns), daemon=True)
               for first in firsts]
    for thread in threads:
        thread.start()
    for first in firsts:
        assert first.wait(8), "a turn streamed nothing"
    client = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 5
    # the process's writes cannot be awaited from here: look until every turn's stream is there
    while len(client.keys("nbchat:turn:*:log")) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    assert time.monotonic() - started < 10, "killed after the first heartbeat: the test proves nothing"
    for thread in threads:
        thread.join(10)
    keys = client.keys("nbchat:*")
    logs = [k for k in keys if k.endswith(b":log")]
    assert len(logs) == 20, keys
    ttls = {key: client.ttl(key) for key in keys}
    assert all(ttl > 0 for ttl in ttls.values()), {k: t for k, t in ttls.items() if t <= 0}
    assert max(ttls.values()) <= 200  # retain_seconds + the lease: nothing lives on for long
    client.close()


@pytest.mark.parametrize("suffix", [":log", ":readers", "x", ":log:"])
def test_a_turn_id_naming_another_key_is_an_unknown_turn(redis_server: RedisProcess, serve_process: ServeFactory,
                                                         suffix: str) -> None:
    server = serve_process("--store", redis_server.url, rate=0.0)
    r = httpx.post(server.url + "/talkByStream", json={"userMessage": {"role": "user", "content": "hi"}}, headers=H)
    crafted = r.headers["x-nbchat-turn"] + suffix
    answers = [httpx.get(server.url + "/talkByStream", params={"turn": crafted, "after": "0"}, headers=H),
               httpx.get(server.url + "/createSse", params={"turn": crafted}, headers=H),
               httpx.post(server.url + f"/turns/{crafted}/interrupt", headers=H)]
    assert [a.status_code for a in answers] == [410, 410, 404], [a.text for a in answers]
    with ws_connect(server.url.replace("http://", "ws://") + f"/websocket/c?token={TOKEN}") as sock:
        sock.send(json.dumps({"resume": {"after": 0, "turn": crafted}}))
        record, status = sock.recv(timeout=10), sock.recv(timeout=10)
    assert status == "[ERROR]" and json.loads(record)["error"]["code"] == "resume_unavailable"
    for text in [a.text for a in answers] + [record]:
        assert "WRONGTYPE" not in text and "Redis" not in text and "store_unavailable" not in text, text
