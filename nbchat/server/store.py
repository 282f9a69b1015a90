"""The turn store: where the routes find, start, interrupt and read turns.

Routes speak only to a :class:`TurnStore`, never to a :class:`TurnManager`
directly, so the same routes serve one process (:class:`MemoryStore`, the
default: every turn lives in this process) and several processes sharing
one turn log (:class:`nbchat.server.redis.RedisStore`). The store's
methods are coroutines because a shared store answers over the network;
the memory store answers at once.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..wire.errors import ResumeError
from ..wire.events import Event, TurnRequest
from .subscription import Direct, Live
from .turn import Turn, TurnState
from .turn_manager import TurnManager

if TYPE_CHECKING:
    from .fairshare import UserQuota


@dataclass(frozen=True)
class TurnInfo:
    """What a route needs to know of a turn, wherever it runs."""

    id: str
    uid: str | None
    state: TurnState


class UserHold(Protocol):
    """A place a new turn of a user holds in a shared count until it is made (then it is the turn's)."""

    async def keep(self, turn_id: str) -> None: ...

    async def release(self) -> None: ...


class Reader(Protocol):
    """One stream's view of a turn (see :class:`nbchat.server.subscription.Subscription`)."""

    done: bool

    @property
    def turn_id(self) -> str: ...

    async def next_batch(self, timeout: float | None = None, direct: Direct | None = None,
                         live: Live | None = None) -> list[Event]: ...

    async def __aenter__(self) -> Reader: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...


def info_of(turn: Turn) -> TurnInfo:
    return TurnInfo(turn.id, turn.uid, turn.state)


class TurnStore(abc.ABC):
    """The turns one app can see. ``manager`` holds the turns generating in this process."""

    manager: TurnManager

    @property
    def closing(self) -> bool:
        return self.manager.closing

    def __len__(self) -> int:
        return len(self.manager)

    async def hold_user_turn(self, owner: str, quota: UserQuota) -> UserHold | None:
        """Count a new turn of ``owner`` against ``quota`` in every process sharing this store (RequestError, 429,
        when over a bound); None when the store is this process's own, which counts its turns itself."""
        return None

    async def start(self) -> None:  # noqa: B027 (an optional hook: the memory store has nothing to connect)
        """Connect (called once, in the app's lifespan, before it serves)."""

    async def aclose(self) -> None:  # noqa: B027 (an optional hook)
        """Disconnect (after :meth:`shutdown`)."""

    @abc.abstractmethod
    async def create(self, request: TurnRequest, uid: str | None = None, *, start: bool = True) -> TurnInfo:
        """A new turn, the uid's current one (superseding the previous); queued when ``start`` is false."""

    @abc.abstractmethod
    async def get(self, turn_id: str) -> TurnInfo | None: ...

    @abc.abstractmethod
    async def latest(self, uid: str) -> TurnInfo | None:
        """The uid's current turn (running, queued or recently ended)."""

    @abc.abstractmethod
    async def open(self, turn_id: str, after: int) -> Reader:
        """A reader of the turn from after ``after``, starting it when it is queued; ResumeError when
        the turn is unknown or no longer holds that position."""

    @abc.abstractmethod
    async def interrupt(self, turn_id: str) -> TurnInfo | None:
        """Stop the turn wherever it runs; None when it is unknown."""

    async def shutdown(self) -> None:
        await self.manager.shutdown()

    async def drain(self, timeout: float) -> None:
        await self.manager.drain(timeout)


class MemoryStore(TurnStore):
    """Every turn in this process: the default, for one process."""

    def __init__(self, manager: TurnManager) -> None:
        self.manager = manager

    async def create(self, request: TurnRequest, uid: str | None = None, *, start: bool = True) -> TurnInfo:
        return info_of(self.manager.create(request, uid, start=start))

    async def get(self, turn_id: str) -> TurnInfo | None:
        turn = self.manager.get(turn_id)
        return None if turn is None else info_of(turn)

    async def latest(self, uid: str) -> TurnInfo | None:
        turn = self.manager.latest(uid)
        return None if turn is None else info_of(turn)

    async def open(self, turn_id: str, after: int) -> Reader:
        turn = self.manager.get(turn_id)
        if turn is None:
            raise ResumeError(f"unknown turn {turn_id[:40]!r}: it may have expired ({self.manager.retention_note()})")
        sub = turn.subscribe(after)  # raises before anything changes when the position is gone
        turn.start()  # a queued turn starts when its first stream attaches
        return sub

    async def interrupt(self, turn_id: str) -> TurnInfo | None:
        turn = self.manager.get(turn_id)
        if turn is None:
            return None
        turn.interrupt()
        return info_of(turn)
