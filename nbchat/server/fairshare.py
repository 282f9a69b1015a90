"""A fair share of one model among a Hub's users.

:class:`FairGate` stands between the turns and the backend: at most ``slots``
turns generate at once, and the others wait in one queue per user, served
user by user in turn (round robin) instead of first come, first served. One
user's twenty parallel requests then hold one place in the rotation, not the
twenty places ahead of everybody else. Waiting happens before a turn's model
watchdog starts, so a turn does not time out for being queued.

:class:`UserQuota` bounds what one user may ask for: turns held at once
(running or queued here) and turns begun per minute; over either, the request
is refused with 429 (:class:`~nbchat.wire.errors.RequestError`), which each
transport reports in its own shape.

Both count in this process; with a shared store (``--store redis://…``) the
store counts them instead, across every process (:mod:`.redis.users`), so
with ``--workers N`` a user still holds one share, not N.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..wire.errors import RequestError
from .config import Settings
from .turn import Turn
from .turn_manager import TurnManager

WINDOW = 60.0


class FairGate:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.active = 0
        #: each waiting user's turns, first come first; the dict's order is the rotation
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @contextlib.asynccontextmanager
    async def turn(self, owner: str) -> AsyncIterator[None]:
        """Hold one of the slots while the body generates; wait for it among ``owner``'s turns."""
        if self.active < self.slots and not self._waiting:
            self.active += 1
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(owner, deque()).append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted as it was cancelled: hand the slot on
                else:
                    self._withdraw(owner, granted)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self.active -= 1
        while self.active < self.slots and self._waiting:
            owner, queue = self._waiting.popitem(last=False)
            granted = queue.popleft()
            if queue:
                self._waiting[owner] = queue  # the user goes to the back of the rotation
            if not granted.done():
                granted.set_result(None)
                self.active += 1

    def _withdraw(self, owner: str, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(owner)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(granted)
        if not queue:
            del self._waiting[owner]


class UserQuota:
    """Turns one user may hold at once and begin per minute (0: no bound)."""

    def __init__(self, max_turns: int, per_minute: float) -> None:
        self.max_turns = max_turns
        self.per_minute = per_minute
        self._begun: dict[str, deque[float]] = {}

    def admit(self, user: str, held: int) -> None:
        """Count a new turn of ``user``, who holds ``held`` turns; RequestError (429) when over a bound."""
        if self.max_turns and held >= self.max_turns:
            raise self.over_turns(held)
        if not self.per_minute:
            return
        now = time.monotonic()
        begun = self._begun.setdefault(user, deque())
        while begun and begun[0] <= now - WINDOW:
            begun.popleft()
        if len(begun) >= self.per_minute:
            raise self.over_rate(len(begun), begun[0] + WINDOW - now)
        begun.append(now)
        if len(self._begun) > 10_000:  # forget users idle for a minute, so the map stays small
            self._begun = {u: d for u, d in self._begun.items() if d and d[-1] > now - WINDOW}

    def over_turns(self, held: int) -> RequestError:
        return RequestError(f"you already have {held} turns running or queued (at most {self.max_turns} at once "
                            "per user): wait for one to end, or stop one", code="user_turn_limit", status=429)

    def over_rate(self, begun: int, wait: float) -> RequestError:
        return RequestError(f"you began {begun} turns in the last minute (at most {self.per_minute:g} per user): "
                            f"try again in {wait:.0f} s", code="user_rate_limit", status=429)


@dataclass(frozen=True)
class FairShare:
    """A server's per-user bounds and its fair queue (None: turns reach the backend as they come)."""

    quota: UserQuota
    gate: FairGate | None

    def health(self) -> dict[str, int]:
        """What an operator watches: turns generating and waiting their turn."""
        if self.gate is None:
            return {}
        return {"generating": self.gate.active, "queued": self.gate.queued}


def fair_share(settings: Settings, manager: TurnManager, owner_of: Callable[[str | None], str | None]) -> FairShare:
    """The bounds ``settings`` set (see :meth:`Settings.user_limits`), the gate installed on ``manager``."""
    max_turns, per_minute, slots = settings.user_limits()
    gate = FairGate(slots) if slots else None
    if gate is not None:
        def admission(turn: Turn) -> contextlib.AbstractAsyncContextManager[None]:
            return gate.turn(owner_of(turn.uid) or "")

        manager.admission = admission
    return FairShare(UserQuota(max_turns, per_minute), gate)
