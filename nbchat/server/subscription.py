"""A stream's view of a turn: the events after its position, live once caught up.

A :class:`Subscription` reads its turn's replay buffer from its own position, so a
late or reattaching client gets everything after the seq it saw, nothing lost and
nothing repeated; while it waits it may take new chunks directly from the turn
(:meth:`Subscription.push`), and its keep-alive ends a wait that lasts too long.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from ..wire.errors import ResumeError
from ..wire.events import Chunk, End, ErrorInfo, Event, Status

#: sends a stream's events at once, from the task that made them (see :meth:`Subscription.next_batch`):
#: None when they went out, else a future that ends once they have (the client is behind); raises
#: when the client is gone
Direct = Callable[[list[Event]], "asyncio.Future[None] | None"]
#: sends one live chunk given by its content, seq and server time, as :data:`Direct` sends ``[Chunk(...)]``
#: (the turn then makes no Chunk object for it)
Live = Callable[[str, int, "float | None"], "asyncio.Future[None] | None"]


class Feed(Protocol):
    """What a subscription reads and tells of its turn (:class:`~nbchat.server.turn.Turn`)."""

    id: str
    #: the loop time of the turn's latest piece
    last_piece: float

    def attach(self) -> None: ...

    def detach(self) -> None: ...

    def events_after(self, seq: int) -> list[Event]: ...

    def waiter(self) -> asyncio.Future[bool]: ...

    def add_sink(self, sub: Subscription) -> None: ...

    def drop_sink(self, sub: Subscription) -> None: ...

    def drop_waiter(self, waiter: asyncio.Future[bool]) -> None: ...


class Subscription:
    """One stream's view of a turn: events after its position, live once caught up."""

    def __init__(self, turn: Feed, after: int) -> None:
        self.turn = turn
        self.pos = after
        self.done = False
        self._waiter: asyncio.Future[bool] | None = None
        # The keep-alive deadline: one timer per stream that re-arms itself for
        # what is left, not one armed and cancelled per wait (a timer per wait was
        # about a tenth of the server's CPU per SSE chunk at 10,000 chunks/s).
        self._timeout = 0.0
        self._wait_began = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: while waiting with a direct sender: how new chunks go out without waking the stream's task
        self._direct: Direct | None = None
        #: and how a live chunk goes out given by its fields, when the stream has such a sender
        self._live: Live | None = None
        #: a direct send that had to wait for the client (the stream's task resumes when it ends)
        self._sending: asyncio.Future[None] | None = None

    @property
    def turn_id(self) -> str:
        return self.turn.id

    def __enter__(self) -> Subscription:
        self.turn.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending is not None:
            if self._sending.done() and not self._sending.cancelled():
                self._sending.exception()  # seen: the client left while it was sent
            self._sending.cancel()
            self._sending = None
        self._leave_sinks()
        self.turn.detach()

    @property
    def keepalive_timer(self) -> asyncio.TimerHandle | None:
        """The timer of this stream's keep-alive, while one is armed."""
        return self._timer

    async def __aenter__(self) -> Subscription:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    async def next_batch(self, timeout: float | None = None, direct: Direct | None = None,
                         live: Live | None = None) -> list[Event]:
        """The next events (all that are ready, in order); [] when ``timeout`` passes first.

        With ``direct``, chunks that come while the stream waits go out through it from the task
        that made them, and this returns only when something else is due (the end, a keep-alive,
        catching up after a send that had to wait): one task wake per chunk instead of two, which
        was most of what the server added per chunk to a bare socket's cost. With ``live`` too,
        such a chunk goes out through ``live`` by its fields, with no Chunk object made for it.
        """
        if self.done:
            return []
        while True:
            if self._sending is not None:
                await self._sending  # a direct send still waiting for the client: what follows goes after it
                self._sending = None
            try:
                events = self.turn.events_after(self.pos)
            except ResumeError as exc:
                # This reader fell behind the replay bound: end its stream with a
                # status that says so, rather than cut it or skip what it missed.
                self.done = True
                return [End(status=Status.ERROR, error=ErrorInfo("resume_unavailable", str(exc)))]
            if events:
                for ev in events:
                    if isinstance(ev, Chunk):
                        self.pos = ev.seq
                    else:
                        self.done = True
                return events
            if not await self._wait(timeout, direct, live):
                return []

    async def _wait(self, timeout: float | None, direct: Direct | None = None, live: Live | None = None) -> bool:
        """Wait until the turn's buffer changes; False when ``timeout`` passes first."""
        loop = asyncio.get_running_loop()
        if direct is None:
            waiter = self.turn.waiter()
        else:
            waiter = loop.create_future()
            self._direct, self._live = direct, live
            self.turn.add_sink(self)
        if timeout is not None:
            self._timeout, self._wait_began = timeout, loop.time()
            if self._timer is None:
                self._timer = loop.call_at(self._wait_began + timeout, self._keepalive_due)
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None
            if direct is not None:
                self._leave_sinks()
            elif waiter.cancelled():  # the stream left
                self.turn.drop_waiter(waiter)

    def push(self, chunk: Chunk) -> None:
        """Send a new chunk through the waiting stream's direct sender (called by the turn)."""
        self.push_record(chunk.content, chunk.seq, chunk.server_time, chunk)

    def push_record(self, content: str, seq: int, server_time: float | None, chunk: Chunk | None = None) -> None:
        """:meth:`push` of a chunk given by its fields (``chunk``: the Chunk, when the turn made one)."""
        direct, waiter = self._direct, self._waiter
        if direct is None or waiter is None or waiter.done() or seq != self.pos + 1:
            self.wake()
            return
        try:
            if chunk is None and self._live is not None:
                pending = self._live(content, seq, server_time)
            else:
                pending = direct([chunk if chunk is not None else Chunk(content, seq, server_time)])
        except Exception as exc:  # the client is gone: the stream's task ends with what its send raised
            self._leave_sinks()
            waiter.set_exception(exc)
            return
        self.pos = seq
        self._wait_began = self.turn.last_piece  # the keep-alive counts from the last send
        if pending is not None:  # the client is behind: nothing more goes out until that send is done
            self._leave_sinks()
            self._sending = pending
            pending.add_done_callback(lambda _: self.wake())

    def wake(self) -> None:
        """End the wait: the stream's task reads what is new itself."""
        self._leave_sinks()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def _leave_sinks(self) -> None:
        """Take no more chunks directly (at once, not when the stream's task next runs)."""
        self.turn.drop_sink(self)
        self._direct = self._live = None

    def _keepalive_due(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._wait_began + self._timeout - loop.time()
        if self._waiter is not None and left > 0:
            self._timer = loop.call_later(left, self._keepalive_due)
            return
        self._timer = None  # the next wait arms it again
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(False)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.done:
            for ev in await self.next_batch():
                yield ev
