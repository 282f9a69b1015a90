"""Copies the events of the turns generating in this process to their streams in Redis."""

from __future__ import annotations

import asyncio
import json
import logging

from redis.exceptions import RedisError

from ...wire.events import End, Event
from ..config import Settings
from ..turns import Turn
from .client import store_error
from .schema import entry, log_key, meta_key, readers_key
from .scripts import Scripts

log = logging.getLogger("nbchat.server.redis")

#: the shortest time between two writes of one process's events (a stream in another process
#: sees a chunk up to this much later than one in the owner's process)
FLUSH_SECONDS = 0.005


class Writer:
    """The shared store's :class:`~nbchat.server.turns.TurnHooks`: everything the turns publish while one
    write is out goes in the next command (:data:`~.scripts.APPEND_SCRIPT`), so a busy process writes
    many chunks per round trip, in order."""

    def __init__(self, scripts: Scripts, settings: Settings, counting_delay: float) -> None:
        self._scripts = scripts
        self._settings = settings
        #: a stream attached elsewhere is counted by the next heartbeat (see Turn.count_elsewhere)
        self.counting_delay = counting_delay
        self._queue: list[tuple[Turn, Event]] = []
        self._task: asyncio.Task[None] | None = None

    def published(self, turn: Turn, event: Event) -> None:
        self._queue.append((turn, event))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def _flush(self) -> None:
        settings = self._settings
        while self._queue:
            batch, self._queue = self._queue, []
            keys, entries = append_args(batch)
            try:
                failed = await self._scripts.append(keys=keys, args=[settings.stream_max_entries,
                                                                     max(1, int(settings.retain_seconds)), entries])
            except RedisError as exc:
                self._fail({turn for turn, _ in batch}, exc)
                continue
            if failed:
                lost = {keys[int(n) - 1] for n in failed}  # Lua numbers the keys from 1
                self._fail({turn for turn, _ in batch if log_key(turn.id) in lost},
                           RedisError("the store refused the turn's entries"))
            # What comes meanwhile waits for the next command: at load, hundreds of events per command
            # (each costs the client a task and a timeout); a quiet turn's chunk still goes at once.
            await asyncio.sleep(FLUSH_SECONDS)

    @staticmethod
    def _fail(turns: set[Turn], exc: RedisError) -> None:
        # A turn whose write failed cannot be resumed elsewhere: end it here with [ERROR] too.
        for turn in turns:
            log.warning("turn %s: writing to the store failed: %s", turn.id, exc)
            end = store_error(exc)
            turn.interrupt(end.status, end.error)


def append_args(batch: list[tuple[Turn, Event]]) -> tuple[list[str], str]:
    """:data:`~.scripts.APPEND_SCRIPT`'s keys and entries (JSON) for ``batch``; entries name keys by
    number, from 1."""
    numbers: dict[str, int] = {}

    def number(key: str) -> int:
        return numbers.setdefault(key, len(numbers) + 1)

    rows: list[list[object]] = []
    for turn, event in batch:
        row = entry(number(log_key(turn.id)), event, turn.last_seq + 1)
        if type(event) is End:
            row += [number(meta_key(turn.id)), number(readers_key(turn.id))]
        rows.append(row)
    return list(numbers), json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
