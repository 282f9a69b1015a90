"""A turn: one generation, fanned out to any number of attached streams.

A :class:`Turn` runs its backend in one task and appends each piece to a
bounded replay buffer; every stream attached to it is a
:class:`~nbchat.server.subscription.Subscription` that reads the buffer from
its own position.

The turn owns the rules of the contract that do not depend on a transport:
the temperature range, ``maxTokens``, the model-timeout watchdog, interrupts,
and the grace period after the last stream detaches. The registry that makes
turns and forgets them is :class:`~nbchat.server.turn_manager.TurnManager`.
All state lives on these objects, made per app; nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast

from ..backends.base import LENGTH, Backend, GenerationRequest, Trimmed
from ..wire.errors import BackendError, ResumeError
from ..wire.events import Chunk, End, ErrorInfo, Event, Status, TurnRequest
from .config import Settings
from .recording import Recorder, TurnRecord
from .resume_buffer import ResumeBuffer
from .stops import StopScanner
from .subscription import Subscription
from .turn_ids import new_turn_id

log = logging.getLogger("nbchat.server.turn")


class TurnHooks(Protocol):
    """What a store that keeps turns beyond this process hears from the turns generating in it
    (the shared store copies their events to Redis; the memory store has none)."""

    #: seconds a stream attached in another process may take to be counted (see :meth:`Turn.count_elsewhere`):
    #: the grace period waits this much longer before it believes that nobody came back
    counting_delay: float

    def appended(self, turn: Turn, content: str, seq: int, server_time: float | None, trimmed: int) -> None:
        """Each chunk's fields, in order, as the turn makes them (most chunks are never a
        :class:`~nbchat.wire.events.Chunk` object: the memory store's streams take the fields too)."""

    def ended(self, turn: Turn, end: End) -> None:
        """The turn's end, after its last chunk."""


class TurnRegistry(Protocol):
    """What a turn needs of the registry that made it (:class:`~nbchat.server.turn_manager.TurnManager`)."""

    backend: Backend
    settings: Settings
    recorder: Recorder | None
    hooks: TurnHooks | None

    def admitted(self, turn: Turn) -> contextlib.AbstractAsyncContextManager[None]: ...

    def turn_ended(self, turn: Turn) -> None: ...

    def turn_detached(self, turn: Turn) -> None: ...


class TurnState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    ENDED = "ended"


class Turn:
    def __init__(self, manager: TurnRegistry, request: TurnRequest, uid: str | None,
                 turn_id: str | None = None) -> None:
        self.id = turn_id or new_turn_id()
        self.uid = uid
        self.request = request
        self.state = TurnState.PENDING
        self.created = time.monotonic()
        self.end: End | None = None
        #: when the turn ended (monotonic clock)
        self.ended_at: float | None = None
        self._manager = manager
        self._settings = manager.settings
        self._hooks = manager.hooks
        self.replay = ResumeBuffer(self._settings.replay_max_bytes)
        self._next_seq = 1
        #: how many exchanges the backend dropped from the history (said on the first chunk after)
        self.trimmed = 0
        self._trimmed = 0
        #: the retention ran out while a stream was still attached: forget the turn when the last one leaves
        self.expired = False
        #: one future per stream waiting for the buffer to change (see Subscription._wait)
        self._waiters: list[asyncio.Future[bool]] = []
        #: streams waiting that take each new chunk directly (see Subscription.push)
        self._sinks: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._cancel_reason = Status.INTERRUPTED
        self._cancel_error: ErrorInfo | None = None
        self._attached = 0
        #: streams attached in other processes, as the store last counted them
        self._elsewhere = 0
        self._grace: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        #: the loop time the backend's latest piece came at (a plain attribute: streams read it per chunk)
        self.last_piece = 0.0
        self._record: TurnRecord | None = None
        #: called with the turn when generation is cancelled (tests observe it)
        self.on_cancel: Callable[[Turn], None] | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def attached(self) -> int:
        """How many streams read this turn now."""
        return self._attached

    @property
    def generation(self) -> asyncio.Task[None] | None:
        """The task that runs the backend, once started (awaited by a shutdown, and by tests)."""
        return self._task

    def start(self) -> None:
        """Begin generating (idempotent)."""
        if self.state is not TurnState.PENDING:
            return
        self.state = TurnState.RUNNING
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"nbchat-turn-{self.id}")
        self._task.add_done_callback(self._task_done)
        self._update_grace()  # started by a request whose stream never attaches: still bounded


    def interrupt(self, reason: Status = Status.INTERRUPTED, error: ErrorInfo | None = None) -> None:
        """Stop at once; the turn ends with ``reason`` (``[INTERRUPTED]`` unless a watchdog fired,
        ``[ERROR]`` with ``error`` when the turn can no longer be kept)."""
        if self.state is TurnState.PENDING:
            self._finish(End(status=reason, error=error))
        elif self.state is TurnState.RUNNING and self._task is not None:
            self._cancel_reason, self._cancel_error = reason, error
            self._task.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs _run's handlers:
        # the turn must still end, with the reason it was cancelled for.
        if self.end is None:
            self._finish(End(status=self._cancel_reason, error=self._cancel_error))

    # ------------------------------------------------------------ generation

    async def _run(self) -> None:
        req = self.request
        if self._manager.recorder is not None:
            self._record = self._manager.recorder.open(self.id, req, self.uid)
        if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
            self._finish(End(status=Status.TEMPERATURE_THRESHOLD))
            return
        gen = GenerationRequest(messages=req.messages, temperature=req.temperature,
                                max_tokens=req.max_tokens, model=req.model)
        pieces = self._manager.backend.generate(gen)
        try:
            async with self._manager.admitted(self):  # a fair queue's turn comes before its watchdog starts
                self._arm_watchdog()
                self._finish(End(status=await self._pump(pieces), trimmed=self.trimmed))
        except asyncio.CancelledError:
            if self.on_cancel is not None:
                self.on_cancel(self)
            self._finish(End(status=self._cancel_reason, error=self._cancel_error))
        except BackendError as exc:
            self._finish(End(status=Status.ERROR, error=ErrorInfo(exc.code, str(exc))))
        except Exception as exc:  # a backend bug must end the turn, not kill the server
            log.exception("backend %s failed", self._manager.backend.name)
            self._finish(End(status=Status.ERROR, error=ErrorInfo("backend_error", f"the backend failed: {exc}")))
        finally:
            self._disarm_watchdog()
            await _aclose(pieces)

    async def _pump(self, pieces: AsyncIterator[str | object]) -> Status:
        """Append the backend's pieces; with stop sequences the answer ends before the first one
        (the backend is closed there, as on an interrupt)."""
        scanner = StopScanner(self.request.stop) if self.request.stop else None
        loop = asyncio.get_running_loop()
        # asyncio's own loop keeps time with time.monotonic: called directly, one call a piece instead of two
        # (any other clock, another loop's or one a test set, is asked through the loop)
        now = time.monotonic if getattr(loop.time, "__func__", None) is asyncio.BaseEventLoop.time else loop.time
        status = Status.DONE
        async for piece in pieces:
            self.last_piece = now()
            if piece is LENGTH:
                status = Status.TOKENS
                break
            if isinstance(piece, str) and piece:
                if scanner is None:
                    self._append(piece)
                    continue
                text, stopped = scanner.feed(piece)
                if text:
                    self._append(text)
                if stopped:
                    return Status.DONE
            elif isinstance(piece, Trimmed):
                self.trimmed = self._trimmed = piece.exchanges
        if scanner is not None and (rest := scanner.flush()):
            self._append(rest)
        return status

    def _arm_watchdog(self) -> None:
        # One timer per turn, not one per piece: each piece only records its
        # time, and the timer, when it fires, sleeps again for what is left.
        # (A timer re-armed per piece cost a quarter of the server's CPU per
        # chunk at 10,000 chunks/s; wait_for would cost a task per piece.)
        timeout = self._settings.model_timeout
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self.last_piece = loop.time()
        self._watchdog = loop.call_later(timeout, self._check_watchdog)

    def _check_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        left = self.last_piece + self._settings.model_timeout - loop.time()
        if left > 0:
            self._watchdog = loop.call_later(left, self._check_watchdog)
        else:
            self._watchdog = None
            self.interrupt(Status.MODEL_TIMEOUT)

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # ------------------------------------------------------------ buffer

    def _append(self, content: str) -> None:
        ts = time.time() if self._settings.timestamps else None
        if not content.isascii():  # the common ASCII piece costs a method call here, no more
            content = _as_unicode(content)
        seq = self._next_seq
        self._next_seq = seq + 1
        if self._trimmed or self._record is not None:
            self._append_chunk(Chunk(content=content, seq=seq, server_time=ts, trimmed=self._trimmed))
            return
        # The common case makes no Chunk: the buffer keeps the fields and the streams taking chunks
        # directly encode them (a frozen Chunk cost about a microsecond a chunk, 3 % of the server's CPU;
        # the shared store hears the fields too: its chunks made Chunks, and their streams' encoding, cost 4 %).
        self.replay.append_record(content, seq, ts)
        if self._hooks is not None:
            self._hooks.appended(self, content, seq, ts, 0)
        if self._sinks:
            for sub in tuple(self._sinks):  # a push may drop its sink from the list
                sub.push_record(content, seq, ts)
        if self._waiters:
            self._pulse()

    def _append_chunk(self, chunk: Chunk) -> None:
        """Append a chunk that a recording hears of, or that carries the notice."""
        self._trimmed = 0  # said once, on the first chunk after the notice
        self.replay.append(chunk)
        if self._record is not None:
            self._record.chunk(chunk)
        if self._hooks is not None:
            self._hooks.appended(self, chunk.content, chunk.seq, chunk.server_time, chunk.trimmed)
        if self._sinks:
            for sub in tuple(self._sinks):  # a push may drop its sink from the list
                sub.push(chunk)
        if self._waiters:
            self._pulse()

    def _finish(self, end: End) -> None:
        if self.end is not None:
            return
        self.end = end
        self.ended_at = time.monotonic()
        self.state = TurnState.ENDED
        if self._record is not None:
            self._record.end(end)
        self._cancel_grace()
        if self._hooks is not None:
            self._hooks.ended(self, end)
        self._pulse(sinks=True)
        self._manager.turn_ended(self)

    def events_after(self, seq: int) -> list[Event]:
        """Everything buffered after ``seq``: chunks, then the End once the turn has ended;
        ResumeError when the replay bound already dropped some of them."""
        if self.end is None:
            return cast("list[Event]", self.replay.after(seq))  # a new list, the caller's to keep
        out: list[Event] = list(self.replay.after(seq))
        out.append(self.end)
        return out

    def _pulse(self, sinks: bool = False) -> None:
        """Wake every stream waiting for a change (with ``sinks``, those taking chunks directly
        too: the turn ended); the next wait blocks again."""
        if sinks:
            for sub in tuple(self._sinks):
                sub.wake()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a waiter cancelled (its client left) or woken by its keep-alive
                waiter.set_result(True)

    def waiter(self) -> asyncio.Future[bool]:
        """A future the next change resolves with True (one per waiting stream, which may
        resolve it itself with False: its keep-alive is due)."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    @property
    def waiting_streams(self) -> int:
        """How many streams wait for the next change."""
        return len(self._waiters)

    def add_sink(self, sub: Subscription) -> None:
        self._sinks.append(sub)

    def drop_sink(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._sinks.remove(sub)

    def drop_waiter(self, waiter: asyncio.Future[bool]) -> None:
        """Forget the future of a stream that left, rather than keep it until the next change."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    # ------------------------------------------------------------ attach / grace

    def subscribe(self, after: int = 0) -> Subscription:
        if after > self.last_seq and self.end is None and after > 0:
            raise ResumeError(f"turn {self.id} has not reached seq {after} yet")
        if not self.replay.holds_after(after):
            raise ResumeError(f"turn {self.id} no longer holds seq {after + 1}: its replay buffer starts at "
                              f"{self.replay.first_seq}")
        return Subscription(self, after)

    def attach(self) -> None:
        """A stream starts reading: the grace period, if running, stops (a :class:`Subscription` calls it)."""
        self._attached += 1
        self._update_grace()

    def detach(self) -> None:
        """A stream stopped reading: the last one to leave a running turn starts its grace period."""
        self._attached -= 1
        self._manager.turn_detached(self)
        self._update_grace()

    def count_elsewhere(self, streams: int) -> None:
        """Streams attached to this turn in other processes, as the shared store's heartbeat counted them:
        they keep the turn out of its grace period as the ones here do."""
        self._elsewhere = streams
        self._update_grace()

    @property
    def in_grace(self) -> bool:
        """The grace period runs: the turn generates with no stream attached here or elsewhere."""
        return self._grace is not None

    def _update_grace(self) -> None:
        """The one grace period, for every store: it runs while the turn generates with no stream attached
        here or elsewhere, and cancels the turn when it runs out."""
        if self._attached + self._elsewhere > 0 or self.state is not TurnState.RUNNING:
            self._cancel_grace()
        elif self._grace is None:
            delay = self._settings.grace_period + (self._hooks.counting_delay if self._hooks is not None else 0.0)
            self._grace = asyncio.get_running_loop().call_later(delay, self._grace_expired)

    def _grace_expired(self) -> None:
        self._grace = None
        log.info("turn %s: nobody reattached within the grace period; cancelling", self.id)
        self.interrupt()

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None


def _as_unicode(text: str) -> str:
    """Text that can be encoded as UTF-8: a backend's lone surrogate becomes U+FFFD
    here, once, instead of breaking every stream that later encodes the chunk."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


async def _aclose(it: object) -> None:
    if getattr(it, "ag_frame", False) is None:
        return  # an async generator that already finished: nothing to close (and no task to shield it)
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(aclose())
