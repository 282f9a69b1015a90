"""Turns: one generation per turn, fanned out to any number of attached streams.

A :class:`Turn` runs its backend in one task and appends each piece to a
bounded replay buffer; every stream attached to it is a :class:`Subscription`
that reads the buffer from its own position, so a late or reattaching client
gets everything after the seq it saw, nothing lost and nothing repeated.

The turn owns the rules of the contract that do not depend on a transport:
the temperature range, ``maxTokens``, the model-timeout watchdog, interrupts,
and the grace period after the last stream detaches. :class:`TurnManager`
owns the registry (by id and by uid) and the expiry of old turns. All state
lives on these objects, made per app; nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast

from ..backends.base import LENGTH, Backend, GenerationRequest, Trimmed
from ..wire.errors import BackendError, RequestError, ResumeError
from ..wire.events import Chunk, End, ErrorInfo, Event, Status, TurnRequest
from .config import Settings
from .expiry import Deadlines
from .recording import Recorder, TurnRecord
from .resume_buffer import ResumeBuffer
from .stops import StopScanner

log = logging.getLogger("nbchat.server.turns")

#: sends a stream's events at once, from the task that made them (see :meth:`Subscription.next_batch`):
#: None when they went out, else a future that ends once they have (the client is behind); raises
#: when the client is gone
Direct = Callable[[list[Event]], "asyncio.Future[None] | None"]


class TurnHooks(Protocol):
    """What a store that keeps turns beyond this process hears from the turns generating in it
    (the shared store copies their events to Redis; the memory store has none)."""

    #: seconds a stream attached in another process may take to be counted (see :meth:`Turn.count_elsewhere`):
    #: the grace period waits this much longer before it believes that nobody came back
    counting_delay: float

    def published(self, turn: Turn, event: Event) -> None:
        """Each chunk and then the end, in order, as the turn makes them."""


#: the length of a turn id (12 random bytes in URL-safe base64)
TURN_ID_CHARS = 16


class TurnState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    ENDED = "ended"


class Turn:
    def __init__(self, manager: TurnManager, request: TurnRequest, uid: str | None,
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
        self._last_piece = 0.0
        self._record: TurnRecord | None = None
        #: called with the turn when generation is cancelled (tests observe it)
        self.on_cancel: Callable[[Turn], None] | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def last_piece(self) -> float:
        """The loop time the backend's latest piece came at."""
        return self._last_piece

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
        now = asyncio.get_running_loop().time
        status = Status.DONE
        async for piece in pieces:
            self._last_piece = now()
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
        self._last_piece = loop.time()
        self._watchdog = loop.call_later(timeout, self._check_watchdog)

    def _check_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        left = self._last_piece + self._settings.model_timeout - loop.time()
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
        chunk = Chunk(content=_as_unicode(content), seq=self._next_seq, server_time=ts, trimmed=self._trimmed)
        self._trimmed = 0  # said once, on the first chunk after the notice
        self._next_seq += 1
        self.replay.append(chunk)
        if self._record is not None:
            self._record.chunk(chunk)
        if self._hooks is not None:
            self._hooks.published(self, chunk)
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
            self._hooks.published(self, end)
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


class Subscription:
    """One stream's view of a turn: events after its position, live once caught up."""

    def __init__(self, turn: Turn, after: int) -> None:
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

    async def next_batch(self, timeout: float | None = None, direct: Direct | None = None) -> list[Event]:
        """The next events (all that are ready, in order); [] when ``timeout`` passes first.

        With ``direct``, chunks that come while the stream waits go out through it from the task
        that made them, and this returns only when something else is due (the end, a keep-alive,
        catching up after a send that had to wait): one task wake per chunk instead of two, which
        was most of what the server added per chunk to a bare socket's cost.
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
            if not await self._wait(timeout, direct):
                return []

    async def _wait(self, timeout: float | None, direct: Direct | None = None) -> bool:
        """Wait until the turn's buffer changes; False when ``timeout`` passes first."""
        loop = asyncio.get_running_loop()
        if direct is None:
            waiter = self.turn.waiter()
        else:
            waiter = loop.create_future()
            self._direct = direct
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
        direct, waiter = self._direct, self._waiter
        if direct is None or waiter is None or waiter.done() or chunk.seq != self.pos + 1:
            self.wake()
            return
        try:
            pending = direct([chunk])
        except Exception as exc:  # the client is gone: the stream's task ends with what its send raised
            self._leave_sinks()
            waiter.set_exception(exc)
            return
        self.pos = chunk.seq
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
        self._direct = None

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


def new_turn_id() -> str:
    return secrets.token_urlsafe(12)


def is_turn_id(text: str) -> bool:
    """Whether ``text`` could be a turn id :func:`new_turn_id` made (URL-safe base64, 16 characters).
    A store that builds keys from ids refuses any other text before it names a key: a client's
    ``<id>:log`` would otherwise name the turn's stream instead of its record."""
    return len(text) == TURN_ID_CHARS and text.isascii() and all(c.isalnum() or c in "-_" for c in text)


def _as_unicode(text: str) -> str:
    """Text that can be encoded as UTF-8: a backend's lone surrogate becomes U+FFFD
    here, once, instead of breaking every stream that later encodes the chunk."""
    if text.isascii():
        return text
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
