"""Copies the events of the turns generating in this process to their streams in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError
from redis.typing import EncodableT

from ...wire.events import End
from ..config import Settings
from ..turn import Turn
from .client import store_error
from .schema import Batch, end_args, log_key, meta_key, readers_key
from .scripts import Scripts

log = logging.getLogger("nbchat.server.redis")

#: the shortest time between two writes of one process's events (a stream in another process
#: sees a chunk up to this much later than one in the owner's process)
FLUSH_SECONDS = 0.005
#: a turn that no stream in another process reads is written this often, and when it ends
LAZY_SECONDS = 1.0


class Writer:
    """The shared store's :class:`~nbchat.server.turn.TurnHooks`. A turn's new chunks go to Redis as one
    entry per write (:data:`~.scripts.APPEND_SCRIPT`, which writes many turns in one command): at once
    (every :data:`FLUSH_SECONDS` at most) for a turn that a stream in another process reads or that
    ended, and every :data:`LAZY_SECONDS` for all the others together. Nobody but the owner reads those
    meanwhile; a stream that comes to one in another process says so first (:meth:`watch`)."""

    def __init__(self, scripts: Scripts, settings: Settings, counting_delay: float) -> None:
        self._scripts = scripts
        self._settings = settings
        #: a stream attached elsewhere is counted by the next heartbeat (see Turn.count_elsewhere)
        self.counting_delay = counting_delay
        #: each turn's chunks not yet written, and its end once it came
        self._pending: dict[Turn, Pending] = {}
        #: the same turns by id, for a watch message (which names the id only)
        self._pending_ids: dict[str, Turn] = {}
        #: the pending turns to write at once (ended, or watched)
        self._now: set[Turn] = set()
        #: turn id -> until when a stream in another process reads it (monotonic clock)
        self._watched: dict[str, float] = {}
        self._urgent = asyncio.Event()
        self._next_all = 0.0
        self._task: asyncio.Task[None] | None = None

    def appended(self, turn: Turn, content: str, seq: int, server_time: float | None, trimmed: int) -> None:
        pending = self._pending.get(turn)
        if pending is None:
            pending = self._track(turn, seq)
        pending.add(content, seq, server_time, trimmed)
        if turn.id in self._watched:
            self._soon(turn)

    def ended(self, turn: Turn, end: End) -> None:
        pending = self._pending.get(turn)
        if pending is None:
            pending = self._track(turn, turn.last_seq + 1)
        pending.end = end
        self._soon(turn)

    def _track(self, turn: Turn, first: int) -> Pending:
        """A turn with events to write from ``first`` on; the writing task started if it is not running."""
        pending = self._pending[turn] = Pending(first)
        self._pending_ids[turn.id] = turn
        self._running()
        return pending

    def _soon(self, turn: Turn) -> None:
        """Write the turn's pending events with the next command (it ended, or another process reads it)."""
        self._now.add(turn)
        self._urgent.set()
        self._running()

    def _running(self) -> None:
        # checked where a turn comes and where one must be written soon, not per chunk
        if self._task is None or self._task.done():
            self._next_all = time.monotonic() + LAZY_SECONDS
            self._task = asyncio.get_running_loop().create_task(self._run())

    def watch(self, turn_id: str, seconds: float) -> None:
        """A stream in another process reads the turn (for ``seconds`` at least): write it at once."""
        self._watched[turn_id] = max(self._watched.get(turn_id, 0.0), time.monotonic() + seconds)
        turn = self._pending_ids.get(turn_id)
        if turn is not None:
            self._soon(turn)

    def forget_watches(self) -> None:
        """Drop the watches that ran out (the heartbeat renews those of turns still read elsewhere)."""
        now = time.monotonic()
        self._watched = {turn_id: until for turn_id, until in self._watched.items() if until > now}

    async def drain(self) -> None:
        """Write everything now, and wait until it is written."""
        self._next_all = 0.0
        self._urgent.set()
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        while self._pending:
            self._urgent.clear()
            await self._write(self._ready())
            # What comes meanwhile waits for the next command: at load, hundreds of turns per command
            # (each costs the client a task and a timeout); a watched turn's chunk still goes at once.
            await asyncio.sleep(FLUSH_SECONDS)
            if self._pending and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), max(0.0, self._next_all - time.monotonic()))

    def _ready(self) -> list[tuple[Turn, Pending]]:
        """The turns to write now (no longer pending): every one once in LAZY_SECONDS, else those at once."""
        if time.monotonic() >= self._next_all:
            self._next_all = time.monotonic() + LAZY_SECONDS
            ready, self._pending, self._pending_ids, self._now = list(self._pending.items()), {}, {}, set()
            return ready
        now, self._now = self._now, set()
        ready = [(turn, self._pending.pop(turn)) for turn in now if turn in self._pending]
        for turn, _ in ready:
            del self._pending_ids[turn.id]
        return ready

    async def _write(self, ready: list[tuple[Turn, Pending]]) -> None:
        if not ready:
            return
        settings = self._settings
        keys, entries = append_args(ready)
        try:
            failed = await self._scripts.append(keys=keys, args=[settings.stream_max_entries,
                                                                 max(1, int(settings.retain_seconds)), *entries])
        except RedisError as exc:
            self._fail({turn for turn, _ in ready}, exc)
            return
        if failed:
            lost = {keys[int(n) - 1] for n in failed}  # Lua numbers the keys from 1
            self._fail({turn for turn, _ in ready if log_key(turn.id) in lost},
                       RedisError("the store refused the turn's entries"))

    @staticmethod
    def _fail(turns: set[Turn], exc: RedisError) -> None:
        # A turn whose write failed cannot be resumed elsewhere: end it here with [ERROR] too.
        for turn in turns:
            log.warning("turn %s: writing to the store failed: %s", turn.id, exc)
            end = store_error(exc)
            turn.interrupt(end.status, end.error)


class Pending(Batch):
    """A turn's chunks not yet written, and its end once it came."""

    __slots__ = ("end",)

    def __init__(self, first: int) -> None:
        super().__init__(first)
        self.end: End | None = None


def append_args(ready: list[tuple[Turn, Pending]]) -> tuple[list[str], list[EncodableT]]:
    """:data:`~.scripts.APPEND_SCRIPT`'s keys and entries for each turn's pending events (its chunks,
    then its end if it came); entries name keys by number, from 1."""
    keys: list[str] = []
    entries: list[EncodableT] = []
    for turn, pending in ready:
        keys.append(log_key(turn.id))
        log = len(keys)
        if pending.contents:
            entries += ["b", log, *pending.args()]
        if pending.end is not None:
            keys += [meta_key(turn.id), readers_key(turn.id)]
            entries += ["e", log, log + 1, log + 2, *end_args(pending.end, turn.last_seq + 1)]
    return keys, entries
