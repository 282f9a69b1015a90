"""The shared store's heartbeat: this process's lease, its turns' keys kept alive, their interrupts
and the streams attached to them in other processes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ...wire.events import ErrorInfo, Status
from ..config import Settings
from ..turn import Turn, TurnState
from ..turn_manager import TurnManager
from .client import POLL_SECONDS, store_error
from .schema import CHANNEL, WATCH_CHANNEL, lease_key, log_key, meta_key, readers_key, turn_of
from .scripts import Scripts
from .writer import Writer

log = logging.getLogger("nbchat.server.redis")


@dataclass(frozen=True)
class Heartbeat:
    """Every lease/3 s: renew this process's lease, and look at the turns generating here in one command."""

    _redis: aioredis.Redis
    _scripts: Scripts
    _manager: TurnManager
    _settings: Settings
    _process: str
    _writer: Writer

    @property
    def interval(self) -> float:
        return self._settings.lease_seconds / 3

    @property
    def ttl(self) -> int:
        """Seconds a running turn's keys live without a heartbeat (a queued one's: pending_seconds)."""
        return max(1, int(self._settings.retain_seconds + self._settings.lease_seconds))

    async def renew_lease(self) -> None:
        await self._redis.set(lease_key(self._process), "1", px=int(self._settings.lease_seconds * 1000))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew_lease()
                await self.check_turns()
            except RedisError as exc:
                log.warning("the turn store (Redis) failed: %s", exc)
                for turn in self._manager.running():
                    end = store_error(exc)
                    turn.interrupt(end.status, end.error)
            except Exception:  # the heartbeat must outlive a bug in one pass
                log.exception("turn store heartbeat failed")

    async def check_turns(self) -> None:
        """For each turn generating here: keep its keys alive, apply a missed interrupt, end it when its
        record is gone, and count the streams attached on every live process for its grace period."""
        # Running ones only: a turn being created is here before its record is written (under load the
        # write can take seconds), and a look at it then would find no record and end it as lost.
        self._writer.forget_watches()
        turns = [t for t in self._manager.running() if t.state is TurnState.RUNNING]
        if not turns:
            return
        keys = [key for t in turns for key in (meta_key(t.id), log_key(t.id), readers_key(t.id))]
        results = await self._scripts.check(keys=keys, args=[self.ttl])
        found = {int(n) - 1: ((state or None, interrupt or None), dict(zip(flat[::2], flat[1::2], strict=True)))
                 for n, state, interrupt, flat in results}
        others = sorted({p for _, readers in found.values() for p in readers if p != self._process})
        alive = {self._process}
        if others:
            pipe = self._redis.pipeline(transaction=False)
            for process in others:
                pipe.exists(lease_key(process))
            alive.update(p for p, live in zip(others, await pipe.execute(), strict=True) if live)
        nothing: tuple[tuple[str | None, str | None], dict[str, str]] = (("running", None), {})
        for i, turn in enumerate(turns):
            (state, interrupt), readers = found.get(i, nothing)
            if self._check_turn(turn, state, interrupt, readers, alive):
                self._writer.watch(turn.id, self._settings.lease_seconds)

    @staticmethod
    def _check_turn(turn: Turn, state: str | None, interrupt: str | None, readers: dict[str, str],
                    alive: set[str]) -> int:
        """The streams attached to the turn in other processes (0 when it ends here)."""
        if state is None:
            turn.interrupt(Status.ERROR, ErrorInfo(
                "turn_lost", "the turn's record is gone from the store (did Redis restart?); ask again"))
            return 0
        if interrupt:
            turn.interrupt(Status(interrupt))
            return 0
        elsewhere = sum(int(n) for p, n in readers.items() if p in alive)
        turn.count_elsewhere(elsewhere)
        return elsewhere

    async def listen(self) -> None:
        """Interrupts sent to any process, for the turns generating here (the heartbeat finds the
        ``interrupt`` field should a message be lost), and the streams that came to them elsewhere (the
        heartbeat counts those should a message be lost)."""
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL, WATCH_CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=POLL_SECONDS)
                        if message is None:
                            continue
                        if message["channel"] == WATCH_CHANNEL:
                            self._writer.watch(str(message["data"]), self._settings.lease_seconds)
                        else:
                            self._on_interrupt(str(message["data"]))
            except RedisError as exc:
                log.warning("listening for interrupts failed (retrying): %s", exc)
                await asyncio.sleep(POLL_SECONDS / 2)

    def _on_interrupt(self, key: str) -> None:
        turn = self._manager.get(turn_of(key))
        if turn is not None and turn.end is None:
            turn.interrupt()
