"""A Hub user's bounds counted in Redis (several processes' turns together): what a killed process held frees
when its lease runs out, and a place reserved for a turn never made lapses."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from nbchat.backends.echo import EchoBackend
from nbchat.server.config import Settings
from nbchat.server.fairshare import UserQuota
from nbchat.server.redis import users
from nbchat.server.redis.schema import lease_key, meta_key, user_key
from nbchat.server.redis.scripts import Scripts
from nbchat.server.turn_ids import new_turn_id
from nbchat.server.turn_manager import TurnManager
from nbchat.wire.errors import RequestError
from tests.conftest import RedisProcess

pytestmark = pytest.mark.redis


async def test_the_turns_of_a_killed_process_stop_counting(redis_server: RedisProcess,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    shared = users.SharedQuota(client, Scripts(client), TurnManager(EchoBackend(), Settings()))
    quota = UserQuota(max_turns=2, per_minute=0)
    try:
        await client.set(lease_key("alive"), "1")
        await client.set(lease_key("killed"), "1", px=1000)
        held = []
        for process in ("alive", "killed"):  # one turn running on each of two processes
            hold = await shared.hold("u", quota)
            assert hold is not None
            turn_id = new_turn_id()
            await client.hset(meta_key(turn_id), mapping={"state": "running", "owner": process})
            await hold.keep(turn_id)
            held.append(turn_id)
        with pytest.raises(RequestError, match="at most 2 at once") as refused:
            await shared.hold("u", quota)
        assert refused.value.status == 429
        await asyncio.sleep(1.1)  # the killed process's lease runs out: a lease cannot be awaited
        assert await shared.hold("u", quota) is not None  # its turn no longer counts
        assert await client.zscore(user_key("u", "turns"), held[1]) is None  # and is gone from the count
        # a place reserved for a turn never made counts only while young
        with pytest.raises(RequestError):
            await shared.hold("u", quota)  # the alive turn and the place just reserved
        monkeypatch.setattr(users, "RESERVATION_MS", 100)
        await asyncio.sleep(0.2)
        assert await shared.hold("u", quota) is not None
    finally:
        await client.aclose()
