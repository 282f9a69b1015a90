"""A stream in this process reading a turn that generates in another one, from the shared log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ...wire.events import Chunk, End, ErrorInfo, Event, Status
from ..subscription import Direct, Live
from .client import POLL_SECONDS, store_error
from .schema import decode_entry, first_seq, log_key

log = logging.getLogger("nbchat.server.redis")

#: entries one read takes at most
READ_COUNT = 1000


class Source(Protocol):
    """What a remote reader needs of the store (:class:`~.store.RedisStore`)."""

    #: the client for blocking reads (one connection per read)
    reads: aioredis.Redis

    def count_reader(self, turn_id: str, delta: int) -> None: ...

    async def check_owner(self, turn_id: str) -> End | None: ...


class RemoteReader:
    """Reads the turn's stream from its position on, then blocks for new entries; a reader that finds
    nothing for a while asks the store whether the turn and its owner are still there."""

    def __init__(self, store: Source, turn_id: str, after: int) -> None:
        self.store = store
        self._turn_id = turn_id
        self.pos = after
        self.done = False

    @property
    def turn_id(self) -> str:
        return self._turn_id

    async def __aenter__(self) -> RemoteReader:
        self.store.count_reader(self._turn_id, +1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.store.count_reader(self._turn_id, -1)

    async def next_batch(self, timeout: float | None = None, direct: Direct | None = None,
                         live: Live | None = None) -> list[Event]:
        # ``direct`` and ``live`` are for a turn generating here; this one's entries come by reads, in batches.
        if self.done:
            return []
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - loop.time()))
            try:
                found = await self.store.reads.xread({log_key(self._turn_id): f"{self.pos}-0"},
                                                     count=READ_COUNT, block=max(1, int(wait * 1000)))
                events = self._decode(found) if found else await self._check_owner()
            except RedisError as exc:
                log.warning("turn %s: reading from the store failed: %s", self._turn_id, exc)
                events = [store_error(exc)]
            if events:
                self.done = self.done or not isinstance(events[-1], Chunk)
                return events
            if deadline is not None and loop.time() >= deadline:
                return []

    def _decode(self, found: Any) -> list[Event]:
        events: list[Event] = []
        for _key, entries in found:
            for _entry_id, fields in entries:
                if first_seq(fields) > self.pos + 1:
                    behind = ErrorInfo("resume_unavailable", f"seq {self.pos + 1} is no longer in the turn's stream "
                                       f"(it starts at {first_seq(fields)}): the stream fell behind the store's bound")
                    return [*events, End(status=Status.ERROR, error=behind)]
                for event in decode_entry(fields):
                    if type(event) is Chunk:
                        if event.seq <= self.pos:  # a batch read from inside: what this stream already has
                            continue
                        self.pos = event.seq
                    events.append(event)
                    if type(event) is End:
                        return events
        return events

    async def _check_owner(self) -> list[Event]:
        """Nothing new for a while: is the turn still there, and its owner alive?"""
        lost = await self.store.check_owner(self._turn_id)
        return [] if lost is None else [lost]

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.done:
            for ev in await self.next_batch():
                yield ev
