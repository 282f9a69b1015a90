"""The shared store: several nbchat processes keep one turn log in Redis.

A turn generates in the process that started it (its *owner*), exactly as
in the memory store: its pieces fan out to the streams attached in that
process from its own replay buffer. Its chunks are also copied to a Redis
Stream, one entry per write (:class:`~.writer.Writer`, the turns' hooks:
once a second, or at once while a stream in another process reads the
turn), so a stream attached in any other process reads it from there
(:class:`~.reader.RemoteReader`: from its position on, then blocking for new
entries). The keys and entries are described in :mod:`.schema`.

An interrupt sent to any process is published on ``nbchat:interrupt``; the
owner cancels at once (and finds the ``interrupt`` field on its next
heartbeat should the message be lost). A queued turn is claimed by the
process whose stream starts it. A reader that finds the owner's lease gone
ends the turn with ``[ERROR]`` (``process_lost``). A stream key's entry bound
(``stream_max_entries``) and the keys' TTLs replace the memory bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
from typing import Any

from redis.exceptions import RedisError

from ...backends import Backend
from ...wire.errors import RequestError, ResumeError
from ...wire.events import End, ErrorInfo, Status, TurnRequest
from ...wire.requests import encode_turn_request, parse_turn_request
from ..config import Settings
from ..fairshare import UserQuota
from ..recording import Recorder
from ..store import Reader, TurnInfo, TurnStore, UserHold, info_of
from ..turn import Turn, TurnState
from ..turn_ids import is_turn_id, new_turn_id
from ..turn_manager import TurnManager
from .client import COMMAND_CONNECTIONS, READ_CONNECTIONS, Batched, connect, unavailable
from .heartbeat import Heartbeat
from .reader import RemoteReader
from .schema import (
    CHANNEL,
    WATCH_CHANNEL,
    entry_seq,
    first_seq,
    is_end,
    lease_key,
    log_key,
    meta_key,
    readers_key,
    uid_key,
)
from .scripts import Scripts
from .users import SharedQuota
from .writer import LAZY_SECONDS, Writer


class RedisStore(TurnStore):
    """Turns shared through Redis by every process given the same ``--store`` URL."""

    def __init__(self, backend: Backend, settings: Settings, recorder: Recorder | None = None) -> None:
        self.settings = settings
        self.process = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        #: commands
        self.redis = connect(settings.store, COMMAND_CONNECTIONS)
        #: blocking reads of streams attached here to turns generating elsewhere: one connection each
        self.reads = connect(settings.store, READ_CONNECTIONS)
        self._scripts = Scripts(self.redis)
        #: writes a new turn's record: the creates of one pass of the loop in one pipeline
        self.write_record = Batched(self.redis, self._scripts.create)
        # A stream attached elsewhere is counted by the owner's next heartbeat: up to one interval and
        # the pass itself after it attached, so the grace period waits two intervals more.
        self.writer = Writer(self._scripts, settings, counting_delay=2 * settings.lease_seconds / 3)
        self.manager = TurnManager(backend, settings, recorder, hooks=self.writer)
        self.heartbeat = Heartbeat(self.redis, self._scripts, self.manager, settings, self.process, self.writer)
        self.users = SharedQuota(self.redis, self._scripts, self.manager)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def ttl(self) -> int:
        return self.heartbeat.ttl

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self.redis.ping()
            await self.heartbeat.renew_lease()
        except RedisError as exc:
            await self._close_clients()
            raise RuntimeError(f"cannot reach the turn store at {self.settings.store}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self.heartbeat.run(), name="nbchat-store-heartbeat"),
                       loop.create_task(self.heartbeat.listen(), name="nbchat-store-interrupts")]

    async def shutdown(self) -> None:
        await self.manager.shutdown()
        await self.writer.drain()

    async def aclose(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in [*self._loops, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError):
            await self.redis.delete(lease_key(self.process))
        await self._close_clients()

    async def _close_clients(self) -> None:
        # A client made on a pool of its own does not close that pool by default: its sockets would leak.
        await self.redis.aclose(close_connection_pool=True)
        await self.reads.aclose(close_connection_pool=True)

    # ------------------------------------------------------------ the store

    async def create(self, request: TurnRequest, uid: str | None = None, *, start: bool = True) -> TurnInfo:
        uid = uid if uid is not None else request.uid
        turn_id = new_turn_id()
        turn = self.manager.create(request, uid, start=False, turn_id=turn_id) if start else None
        ttl = self.ttl if start else max(1, int(self.settings.pending_seconds))
        record = [uid or "", "running" if start else "pending", self.process if start else "",
                  json.dumps(encode_turn_request(request), ensure_ascii=False),
                  ttl, max(ttl, int(self.settings.pending_seconds)), turn_id]
        try:
            with unavailable():
                previous = await self.write_record(keys=[meta_key(turn_id), *([uid_key(uid)] if uid else [])],
                                                      args=record)
                if previous and previous != turn_id:
                    await self.interrupt(str(previous))  # one current turn per uid, on whichever process it runs
        except RequestError:
            if turn is not None:
                self.manager.forget(turn_id)
            raise
        if turn is None:
            return TurnInfo(turn_id, uid, TurnState.PENDING)
        turn.start()
        return info_of(turn)

    async def hold_user_turn(self, owner: str, quota: UserQuota) -> UserHold | None:
        return await self.users.hold(owner, quota)

    async def get(self, turn_id: str) -> TurnInfo | None:
        turn = self.manager.get(turn_id)
        if turn is not None:
            return info_of(turn)
        if not is_turn_id(turn_id):
            return None  # not one this server makes: it could name another key (``<id>:log``)
        with unavailable():
            state, uid = await self.redis.hmget(meta_key(turn_id), ["state", "uid"])
        if state is None:
            return None
        return TurnInfo(turn_id, str(uid) if uid else None, TurnState(state))

    async def latest(self, uid: str) -> TurnInfo | None:
        with unavailable():
            turn_id = await self.redis.get(uid_key(uid))
        return None if turn_id is None else await self.get(str(turn_id))

    async def open(self, turn_id: str, after: int) -> Reader:
        turn = self.manager.get(turn_id)
        if turn is None and not is_turn_id(turn_id):
            raise ResumeError(f"unknown turn {turn_id[:40]!r}")
        if turn is None:
            with unavailable():
                turn = await self._claim_if_queued(turn_id, after)
        if turn is not None:
            sub = turn.subscribe(after)
            turn.start()
            return sub
        with unavailable():
            await self.redis.publish(WATCH_CHANNEL, turn_id)  # its owner writes it at once from now on
            await self._check_position(turn_id, after)
        return RemoteReader(self, turn_id, after)

    async def interrupt(self, turn_id: str, status: Status = Status.INTERRUPTED) -> TurnInfo | None:
        turn = self.manager.get(turn_id)
        if turn is not None:
            turn.interrupt(status)
            return info_of(turn)
        if not is_turn_id(turn_id):
            return None
        with unavailable():
            found = await self._scripts.interrupt(keys=[meta_key(turn_id), log_key(turn_id)],
                                          args=[status.value, "", "", self.ttl, CHANNEL])
        if not found:
            return None
        return TurnInfo(turn_id, found[1] or None, TurnState(found[0]))

    # ------------------------------------------------------------ helpers

    async def _claim_if_queued(self, turn_id: str, after: int) -> Turn | None:
        """Start a queued turn here (its stream attached here); None when it runs elsewhere or ended."""
        state = await self.redis.hget(meta_key(turn_id), "state")
        if state is None:
            raise ResumeError(f"unknown turn {turn_id!r} (it may have expired)")
        if state != "pending":
            return None
        if after > 0:
            raise ResumeError(f"turn {turn_id} has not reached seq {after} yet")
        claimed = await self._scripts.claim(keys=[meta_key(turn_id)], args=[self.process])
        if claimed[0] != "claimed":
            return None
        request = parse_turn_request(json.loads(claimed[1]))
        try:
            turn = self.manager.create(request, claimed[2] or None, start=False, turn_id=turn_id)
        except RequestError as exc:  # too many turns here, or shutting down: end it rather than orphan it
            await self._abandon_claimed(turn_id, exc)
            raise
        await self.redis.expire(meta_key(turn_id), self.ttl)
        return turn

    async def _abandon_claimed(self, turn_id: str, exc: RequestError) -> None:
        await self._scripts.end(keys=[meta_key(turn_id), log_key(turn_id)],
                                args=[Status.ERROR.value, exc.code, str(exc), self.ttl])

    async def _check_position(self, turn_id: str, after: int) -> None:
        first, last_seq, ended = await self._log_bounds(turn_id)
        if after > last_seq and not ended:
            # The owner writes a turn nobody reads elsewhere every LAZY_SECONDS; the watch published
            # before this made it write at once: wait for that write, not a whole LAZY_SECONDS.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LAZY_SECONDS + 1.0
            while after > last_seq and not ended and loop.time() < deadline:
                await asyncio.sleep(0.01)
                first, last_seq, ended = await self._log_bounds(turn_id)
        if after > 0 and after > last_seq and not ended:
            raise ResumeError(f"turn {turn_id} has not reached seq {after} yet")
        if first > after + 1 and after < last_seq:
            raise ResumeError(f"turn {turn_id} no longer holds seq {after + 1}: its stream starts at {first}")

    async def _log_bounds(self, turn_id: str) -> tuple[int, int, bool]:
        """The first and last seq the turn's stream holds (0 when empty), and whether its end is there."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(log_key(turn_id), count=1)
        pipe.xrevrange(log_key(turn_id), count=1)
        first, last = await pipe.execute()
        ended = bool(last) and is_end(last[0][1])
        last_seq = entry_seq(last[0][0]) - (1 if ended else 0) if last else 0
        return (first_seq(first[0][1]) if first else 0), last_seq, ended

    async def check_owner(self, turn_id: str) -> End | None:
        """An End when the turn cannot go on: its record is gone; ends it when its owner's lease ran out."""
        state, owner = await self.redis.hmget(meta_key(turn_id), ["state", "owner"])
        if state is None:
            return End(status=Status.ERROR, error=ErrorInfo(
                "turn_lost", "the turn is gone from the store (it expired, or the store restarted); ask again"))
        if state == "running" and owner and owner != self.process:
            await self._scripts.abandon(keys=[meta_key(turn_id), log_key(turn_id), lease_key(str(owner))],
                                args=[Status.ERROR.value, "process_lost",
                                      "the process generating this turn stopped (its lease ran out); ask again",
                                      self.ttl, owner])
        return None  # an end it wrote is read on the next pass

    def count_reader(self, turn_id: str, delta: int) -> None:
        """Count a stream attached here to a turn generating elsewhere (its owner's grace period sees it).
        In a task of its own: a stream cancelled by its client's disconnect still counts itself out."""
        async def write() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hincrby(readers_key(turn_id), self.process, delta)
            pipe.expire(readers_key(turn_id), self.ttl)
            with contextlib.suppress(RedisError):
                await pipe.execute()

        task = asyncio.get_running_loop().create_task(write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def check_turns(self) -> None:
        """One heartbeat's look at the turns generating here (see :meth:`Heartbeat.check_turns`)."""
        await self.heartbeat.check_turns()
