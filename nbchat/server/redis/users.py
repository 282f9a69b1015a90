"""Each Hub user's bounds counted across every process sharing the store.

Each process bounds a user's turns itself (:class:`~nbchat.server.fairshare.UserQuota`); with several
processes a user would hold one share in each. :class:`SharedQuota` counts them in Redis instead, in one
script (:data:`~.scripts.USER_TURNS_SCRIPT`) that checks and counts at once: a new turn reserves a place
under a name of its own before it is made (its id comes with it), then the place becomes the turn's. What
a killed process held is not counted for ever: a turn counts only while its record is queued, or running
on a process whose lease is alive, so its places free when its lease runs out; an ended or expired turn
and a reservation never made into a turn drop out on the user's next request.
"""

from __future__ import annotations

import contextlib
import secrets

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..fairshare import UserQuota
from ..turn_manager import TurnManager
from .client import unavailable
from .schema import user_key
from .scripts import Scripts

#: how long a reserved place counts before its turn is made (a record's write can take seconds under load)
RESERVATION_MS = 30_000
#: a user's count is forgotten this long after their last turn began (it holds only the running ones)
USER_KEY_SECONDS = 3600


class SharedHold:
    """One reserved place: kept as the turn's once made, released when the turn was not made."""

    def __init__(self, redis: aioredis.Redis, owner: str, place: str) -> None:
        self._redis = redis
        self._key = user_key(owner, "turns")
        self._place = place

    async def keep(self, turn_id: str) -> None:
        # the turn is made: a failed write here only lets its place lapse (30 s), it must not fail the turn
        with contextlib.suppress(RedisError):
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._key, self._place)
            pipe.zadd(self._key, {turn_id: 0})  # its record says whether it counts, not its age
            await pipe.execute()

    async def release(self) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.zrem(self._key, self._place)


class SharedQuota:
    def __init__(self, redis: aioredis.Redis, scripts: Scripts, manager: TurnManager) -> None:
        self._redis = redis
        self._scripts = scripts
        self._manager = manager

    async def hold(self, owner: str, quota: UserQuota) -> SharedHold | None:
        """A place for a new turn of ``owner``; RequestError (429) over a bound; None when there is none."""
        if not quota.max_turns and not quota.per_minute:
            return None
        place = f"r:{secrets.token_urlsafe(9)}"
        args: list[str | int] = [quota.max_turns, f"{quota.per_minute:g}", place, USER_KEY_SECONDS, RESERVATION_MS]
        keys = [user_key(owner, "turns"), user_key(owner, "begun")]
        with unavailable():
            refused = await self._scripts.user_turns(keys=keys, args=args)
            # an end this process sent a moment ago may not be written yet: the turns it knows ended do not count
            ended = [str(i) for i in refused[1:] if (turn := self._manager.get(str(i))) and turn.end is not None]
            if refused and refused[0] == "turns" and ended:
                refused = await self._scripts.user_turns(keys=keys, args=[*args, *ended])
        if not refused:
            return SharedHold(self._redis, owner, place)
        if refused[0] == "turns":
            raise quota.over_turns(len(refused) - 1)
        raise quota.over_rate(int(refused[1]), int(refused[2]) / 1000)
