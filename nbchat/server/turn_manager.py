"""The registry of turns for one app: by id and by uid, the room under the turn cap, and the
expiry of ended turns after their retention (see :class:`~nbchat.server.turn.Turn` for a turn itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ..backends.base import Backend
from ..wire.errors import RequestError
from ..wire.events import TurnRequest
from .config import Settings
from .expiry import Deadlines
from .recording import Recorder
from .turn import Turn, TurnHooks, TurnState


class TurnManager:
    """The registry of turns for one app: by id, and the latest by uid."""

    def __init__(self, backend: Backend, settings: Settings, recorder: Recorder | None = None,
                 hooks: TurnHooks | None = None) -> None:
        self.backend = backend
        self.settings = settings
        #: what a store that keeps turns beyond this process hears from them (None: nothing to tell)
        self.hooks = hooks
        #: writes each turn's chunks to a file (``nbchat serve --record``)
        self.recorder = recorder
        self._turns: dict[str, Turn] = {}
        self._by_uid: dict[str, Turn] = {}
        self._expiry = Deadlines(self._expire)
        self._drained: asyncio.Event | None = None
        self.closing = False
        #: ended turns forgotten before their retention ran out, to make room under ``max_turns``
        self.evicted_early = 0
        #: how long the latest of those had been ended (seconds): the retention the cap allowed then
        self.evicted_after: float | None = None
        #: what a turn waits for before it generates (a fair queue, :mod:`.fairshare`); None: nothing
        self.admission: Callable[[Turn], contextlib.AbstractAsyncContextManager[None]] | None = None

    def __len__(self) -> int:
        return len(self._turns)

    def admitted(self, turn: Turn) -> contextlib.AbstractAsyncContextManager[None]:
        return self.admission(turn) if self.admission is not None else contextlib.nullcontext()

    def create(self, request: TurnRequest, uid: str | None = None, *, start: bool = True,
               turn_id: str | None = None) -> Turn:
        if self.closing:
            raise RequestError("the server is shutting down", code="shutting_down", status=503)
        self._make_room()
        uid = uid if uid is not None else request.uid
        turn = Turn(self, request, uid, turn_id)
        self._turns[turn.id] = turn
        if uid is not None:
            previous = self._by_uid.get(uid)
            if previous is not None and previous.end is None:
                previous.interrupt()  # one current turn per uid: a new question supersedes the old
            self._by_uid[uid] = turn
        if start:
            turn.start()
        else:
            self._expire_later(turn, self.settings.pending_seconds)
        return turn

    def get(self, turn_id: str) -> Turn | None:
        return self._turns.get(turn_id)

    def latest(self, uid: str) -> Turn | None:
        return self._by_uid.get(uid)

    def running(self) -> list[Turn]:
        return [t for t in self._turns.values() if t.end is None]

    def _make_room(self) -> None:
        """At the limit, forget the oldest ended turns. The registry is in creation order, so they are
        found from its front: a sort of every turn here cost milliseconds per new turn at the limit."""
        excess = len(self._turns) - self.settings.max_turns + 1
        if excess <= 0:
            return
        oldest: list[str] = []
        for turn_id, turn in self._turns.items():
            if turn.end is not None:
                oldest.append(turn_id)
                if len(oldest) == excess:
                    break
        if oldest:
            self.evicted_early += len(oldest)
            ended_at = self._turns[oldest[-1]].ended_at
            self.evicted_after = 0.0 if ended_at is None else time.monotonic() - ended_at
        for turn_id in oldest:
            self.forget(turn_id)
        if len(self._turns) >= self.settings.max_turns:
            raise RequestError("too many turns at once; try again shortly", code="too_many_turns", status=429)

    def turn_ended(self, turn: Turn) -> None:
        """Called by a turn when it ends: it is kept for ``retain_seconds``, then forgotten (sooner when
        ``max_turns`` turns are kept and a new one needs room: see :meth:`retention_note`)."""
        self._expire_later(turn, self.settings.retain_seconds)

    def retention_note(self) -> str:
        """Why a turn may be gone, for the 410/404 a client gets: the retention, and how the turn cap
        shortened it when it did (at 100 new turns a second, 10,000 turns last 100 s, not 120)."""
        note = (f"ended turns are kept {self.settings.retain_seconds:g} s, or less while {self.settings.max_turns} "
                "turns are kept at once: the oldest ended ones then make room")
        if self.evicted_after is not None:
            note += f"; the latest dropped for room had ended {self.evicted_after:.0f} s before"
        return note

    def retention(self) -> dict[str, float | int | None]:
        """The retention as configured and as the turn cap let it be (reported by ``/health``)."""
        return {"seconds": self.settings.retain_seconds, "max_turns": self.settings.max_turns,
                "evicted_early": self.evicted_early,
                "evicted_after_seconds": None if self.evicted_after is None else round(self.evicted_after, 1)}

    def _expire_later(self, turn: Turn, seconds: float) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule
            self._expiry.set(turn.id, seconds)

    def _expire(self, turn_id: str) -> None:
        turn = self._turns.get(turn_id)
        if turn is None:
            return
        if turn.state is TurnState.PENDING:
            turn.interrupt()
        if turn.end is None:
            return
        if turn.attached == 0:
            self.forget(turn_id)
        else:
            turn.expired = True  # a stream still reads it: forgotten when the last one detaches

    def forget(self, turn_id: str) -> None:
        """Drop a turn from the registry now (its expiry too); a store whose publication failed undoes a create."""
        turn = self._turns.pop(turn_id, None)
        self._expiry.drop(turn_id)
        if turn is not None and turn.uid is not None and self._by_uid.get(turn.uid) is turn:
            del self._by_uid[turn.uid]

    async def shutdown(self) -> None:
        """End every running or pending turn with [INTERRUPTED] and wait for the generations to stop."""
        self.closing = True
        turns = self.running()
        for turn in turns:
            turn.interrupt()
        tasks = [t.generation for t in turns if t.generation is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        self._expiry.clear()

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until no stream is attached: the last statuses went out."""
        if not any(t.attached for t in self._turns.values()):
            return
        self._drained = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)

    def turn_detached(self, turn: Turn) -> None:
        """Called by a turn when a stream leaves it: an expired turn goes with its last reader."""
        if turn.expired and turn.attached == 0:
            self.forget(turn.id)
        if self._drained is not None and not any(t.attached for t in self._turns.values()):
            self._drained.set()
