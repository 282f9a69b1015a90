"""Turns on one event loop, without HTTP: the grace period, expiry, the
model-timeout watchdog, the resume buffer's bound and what a reader behind it
sees. The timings are tens of milliseconds and every wait is on an event."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nbchat.backends.base import Backend, Finish, GenerationRequest, Trimmed
from nbchat.server.config import Settings
from nbchat.server.expiry import Deadlines
from nbchat.server.turn import Turn
from nbchat.server.turn_manager import TurnManager
from nbchat.wire.errors import RequestError, ResumeError
from nbchat.wire.events import Chunk, End, Event, Message, Status, TurnRequest
from tests.helpers import StallBackend

REQ = TurnRequest(user_message=Message(role="user", content="hi"))


class Paced(Backend):
    """``count`` pieces, one every ``interval`` seconds, on the test's own loop."""

    name = "paced"

    def __init__(self, count: int = 100, interval: float = 0.01, piece: str = "ab") -> None:
        self.count, self.interval, self.piece = count, interval, piece
        self.cancelled = asyncio.Event()

    @property
    def model_name(self) -> str:
        return "paced"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        try:
            for _ in range(self.count):
                await asyncio.sleep(self.interval)
                yield self.piece
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class LoopClock:
    """The running loop's clock, moved on only by the test: a timer (and a :class:`Paced` piece)
    comes due when the test says its time has come, however busy the machine."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()

    def __enter__(self) -> LoopClock:
        setattr(self.loop, "time", lambda: self.now)  # noqa: B010 (an instance attribute over the method)
        return self

    def __exit__(self, *exc: object) -> None:
        delattr(self.loop, "time")  # the loop's own clock again

    async def advance(self, seconds: float, step: float = 0.01) -> None:
        """Move the clock on in steps, letting the loop run whatever each step makes due."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(self.now + step, end)
            for _ in range(5):
                await asyncio.sleep(0)


def manager(backend: Backend, **overrides: object) -> TurnManager:
    return TurnManager(backend, Settings(**{"backend": "echo", **overrides}))  # type: ignore[arg-type]


async def ended(turn: Turn, timeout: float = 5.0) -> End:
    async with asyncio.timeout(timeout):
        with turn.subscribe(turn.last_seq) as sub:
            async for ev in sub:
                if isinstance(ev, End):
                    return ev
    raise AssertionError("no end")


async def collect(turn: Turn, after: int = 0) -> list[Chunk | End]:
    out: list[Chunk | End] = []
    async with asyncio.timeout(10):
        with turn.subscribe(after) as sub:
            async for ev in sub:
                out.append(ev)
    return out


# ---------------------------------------------------------------- grace period


async def test_nobody_attached_after_the_grace_period_cancels_generation() -> None:
    backend = Paced(count=10_000)
    turns = manager(backend, grace_period=0.05)
    turn = turns.create(REQ)
    with turn.subscribe(0):
        await asyncio.sleep(0.02)
    async with asyncio.timeout(2):
        await backend.cancelled.wait()
    assert turn.end is not None and turn.end.status is Status.INTERRUPTED


async def test_a_reattach_within_the_grace_period_keeps_it_running() -> None:
    # the test moves the loop's clock itself, so "within" and "past" the grace period hold on a busy machine
    backend = Paced(count=40, interval=0.01)
    with LoopClock() as clock:
        turns = manager(backend, grace_period=0.1)
        turn = turns.create(REQ)
        with turn.subscribe(0):
            await clock.advance(0.02)
        await clock.advance(0.09)  # detached, 0.01 s short of the grace period
        assert not backend.cancelled.is_set() and turn.end is None
        reader = asyncio.create_task(collect(turn, 0))
        await clock.advance(0.5)  # reattached, and on well past where the grace period would have ended
        assert reader.done()
        events = reader.result()
    assert events[-1] == End(status=Status.DONE)
    assert not backend.cancelled.is_set()
    assert "".join(e.content for e in events if isinstance(e, Chunk)) == "ab" * 40


class Hooks:
    """A store's hooks that keep what the turns publish."""

    counting_delay = 0.05

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []

    def appended(self, turn: Turn, content: str, seq: int, server_time: float | None, trimmed: int) -> None:
        self.events.append((turn.id, Chunk(content=content, seq=seq, server_time=server_time, trimmed=trimmed)))

    def ended(self, turn: Turn, end: End) -> None:
        self.events.append((turn.id, end))


async def test_streams_counted_elsewhere_hold_the_grace_period_and_the_hooks_hear_every_event() -> None:
    """One grace period for both stores: streams another process counted keep a turn running like the
    ones here; with none left it runs out after the grace period and the store's counting delay."""
    backend, hooks = Paced(count=10_000), Hooks()
    turns = TurnManager(backend, Settings(backend="echo", grace_period=0.05), hooks=hooks)
    turn = turns.create(REQ)
    assert turn.in_grace  # started with no stream anywhere
    turn.count_elsewhere(2)
    assert not turn.in_grace
    await asyncio.sleep(0.3)
    assert turn.end is None
    turn.count_elsewhere(0)
    began = asyncio.get_running_loop().time()
    async with asyncio.timeout(2):
        await backend.cancelled.wait()
    assert asyncio.get_running_loop().time() - began >= 0.05 + hooks.counting_delay - 0.01
    end = await ended(turn)
    assert end.status is Status.INTERRUPTED and not turn.in_grace
    assert [e for _, e in hooks.events] == [*turn.replay.after(0), end]
    assert {turn_id for turn_id, _ in hooks.events} == {turn.id}


# ---------------------------------------------------------------- expiry


async def test_ended_turns_expire_after_retention_and_pending_ones_after_their_wait() -> None:
    turns = manager(Paced(count=1, interval=0), retain_seconds=0.05, pending_seconds=0.05)
    done = turns.create(REQ)
    pending = turns.create(REQ, uid="u", start=False)
    await ended(done)
    assert len(turns) == 2
    await asyncio.sleep(0.2)
    assert turns.get(done.id) is None and turns.get(pending.id) is None
    assert pending.end == End(status=Status.INTERRUPTED) and len(turns) == 0


async def test_a_turn_still_attached_at_expiry_is_forgotten_when_its_last_stream_leaves() -> None:
    turns = manager(Paced(count=3, interval=0), retain_seconds=0.05)
    turn = turns.create(REQ)
    await ended(turn)
    sub = turn.subscribe(0)
    with sub:  # a reader that has not taken the status yet
        await asyncio.sleep(0.15)  # retention runs out while it is attached
        assert turns.get(turn.id) is turn
    assert turns.get(turn.id) is None
    assert len(turns) == 0


# ---------------------------------------------------------------- model timeout


async def test_a_silent_backend_ends_with_model_timeout() -> None:
    turns = manager(StallBackend(before=2), model_timeout=0.05)
    events = await collect(turns.create(REQ))
    assert [type(e) for e in events] == [Chunk, Chunk, End]
    assert events[-1] == End(status=Status.MODEL_TIMEOUT)


async def test_pieces_closer_than_the_timeout_never_trip_the_watchdog() -> None:
    # the test moves the loop's clock itself: on a busy machine a stall longer than the timeout between two
    # pieces would trip the watchdog rightly, and that is not what this test is about
    with LoopClock() as clock:
        turns = manager(Paced(count=15, interval=0.02), model_timeout=0.06)  # 0.3 s in all, 5 timeouts' worth
        reader = asyncio.create_task(collect(turns.create(REQ)))
        await clock.advance(0.5)
        assert reader.done()
        events = reader.result()
    assert events[-1] == End(status=Status.DONE)
    assert sum(isinstance(e, Chunk) for e in events) == 15


# ---------------------------------------------------------------- the replay bound


@pytest.mark.slow  # 100,000 pieces under tracemalloc: seconds of CPU
async def test_the_replay_bound_counts_the_memory_of_its_records() -> None:
    bound = 256 * 1024
    turns = manager(Paced(count=100_000, interval=0, piece="abcd"), replay_max_bytes=bound, grace_period=60)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        turn = turns.create(REQ)
        assert turn.generation is not None
        await turn.generation
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert turn.end == End(status=Status.DONE) and turn.last_seq == 100_000
    assert held < 1.5 * bound, f"{held} bytes held for a {bound}-byte bound"


async def test_a_reader_behind_the_bound_gets_resume_unavailable_and_a_late_resume_is_refused() -> None:
    turns = manager(Paced(count=20_000, interval=0, piece="x" * 50), replay_max_bytes=64 * 1024)
    turn = turns.create(REQ)
    sub = turn.subscribe(0)
    with sub:
        first = await sub.next_batch()
        assert isinstance(first[0], Chunk) and first[0].seq == 1
        assert turn.generation is not None
        await turn.generation  # the turn runs on while this reader sleeps
        rest = await sub.next_batch()
    assert len(rest) == 1 and isinstance(rest[0], End)
    assert rest[0].status is Status.ERROR and rest[0].error is not None
    assert rest[0].error.code == "resume_unavailable" and sub.done
    with pytest.raises(ResumeError):
        turn.subscribe(0)
    tail = await collect(turn, turn.last_seq - 3)  # a resume inside the bound still works
    assert [e.seq for e in tail if isinstance(e, Chunk)] == [turn.last_seq - 2, turn.last_seq - 1, turn.last_seq]


async def test_a_backend_lone_surrogate_is_replaced_not_streamed() -> None:
    turns = manager(Paced(count=2, interval=0, piece="a\ud800b"))
    events = await collect(turns.create(REQ))
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert [c.content for c in chunks] == ["a\ufffdb", "a\ufffdb"]
    assert events[-1] == End(status=Status.DONE)


async def test_a_waiting_stream_gets_its_keepalive_between_pieces_and_every_piece_after_it() -> None:
    backend = Paced(count=3, interval=0.15)
    turn = manager(backend).create(REQ)
    got: list[str] = []
    with turn.subscribe(0) as sub:
        while not sub.done:
            batch = await sub.next_batch(0.05)  # the keep-alive comes due about twice per piece
            got += ["keepalive"] if not batch else [type(ev).__name__ for ev in batch]
    assert [g for g in got if g != "keepalive"] == ["Chunk", "Chunk", "Chunk", "End"]
    assert got.count("keepalive") >= 3  # due again after each piece: the one timer re-arms itself


async def test_a_stream_that_leaves_while_waiting_leaves_nothing_behind() -> None:
    turn = manager(Paced(count=10_000, interval=10.0)).create(REQ)
    with turn.subscribe(0) as sub:
        waiting = asyncio.ensure_future(sub.next_batch(30.0))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    # its future is gone from the turn and its keep-alive timer is cancelled with the stream
    assert not turn.waiting_streams and sub.keepalive_timer is None


async def test_send_now_sends_in_order_and_hands_a_waiting_send_to_a_task() -> None:
    """What goes out at once goes out before send_now returns; once the server's send must wait
    (the client is behind), a task finishes it and the rest, in order; a client gone raises."""
    from nbchat.server.streaming import send_now

    sent: list[str] = []
    writable = asyncio.Event()
    writable.set()

    async def send(message: dict[str, object]) -> None:  # the shape of uvicorn's: waits only when paused
        await writable.wait()
        if message["text"] == "gone":
            raise ConnectionResetError("the client left")
        sent.append(str(message["text"]))

    assert send_now(send, [{"text": "a"}, {"text": "b"}]) is None and sent == ["a", "b"]
    writable.clear()
    pending = send_now(send, [{"text": "c"}, {"text": "d"}])
    assert pending is not None and sent == ["a", "b"]
    writable.set()
    await asyncio.wait_for(pending, 5)
    assert sent == ["a", "b", "c", "d"]
    with pytest.raises(ConnectionResetError):
        send_now(send, [{"text": "gone"}])


async def test_deadlines_fire_in_order_once_each_on_one_loop_timer() -> None:
    fired: list[str] = []
    done = asyncio.Event()

    def due(key: str) -> None:
        fired.append(key)
        if key == "again":
            deadlines.set("late", 0.01)  # a deadline set from inside another's call still fires
        if key == "late":
            done.set()

    deadlines = Deadlines(due)
    timers = NewTimers()
    deadlines.set("b", 0.04)
    deadlines.set("a", 0.02)  # earlier than the armed timer: it moves forward
    deadlines.set("moved", 0.01)
    deadlines.set("moved", 0.06)  # its first deadline must not fire
    deadlines.set("dropped", 0.03)
    deadlines.drop("dropped")
    deadlines.set("again", 0.05)
    assert len(deadlines) == 4
    assert timers.live() == 1  # one for all of them
    await asyncio.wait_for(done.wait(), 2)
    assert fired == ["a", "b", "again", "moved", "late"]
    assert len(deadlines) == 0 and timers.live() == 0
    timers.stop()


async def test_a_deadline_set_while_others_fire_does_not_delay_an_earlier_one() -> None:
    """A turn ending at its deadline sets a later deadline of its own; one still pending in between
    keeps its time (the timer went to the latest one set, not to the earliest pending)."""
    loop = asyncio.get_running_loop()
    fired: dict[str, float] = {}
    done = asyncio.Event()

    def due(key: str) -> None:
        fired[key] = loop.time()
        if key == "first":
            deadlines.set("much later", 5.0)
        if key == "next":
            done.set()

    deadlines = Deadlines(due)
    start = loop.time()
    deadlines.set("first", 0.01)
    deadlines.set("next", 0.1)
    await asyncio.wait_for(done.wait(), 2)
    assert fired["next"] - start < 1.0 and "much later" not in fired
    deadlines.clear()


async def test_retained_turns_add_no_timers_to_the_loop() -> None:
    manager = TurnManager(Paced(count=1, interval=0.0), Settings(retain_seconds=60))
    timers = NewTimers()
    for _ in range(50):
        turn = manager.create(REQ)
        generation = turn.generation
        assert generation is not None
        await generation
    assert manager.running() == [] and len(manager) == 50  # all ended, all kept
    assert timers.live() == 1  # the turns' 50 deadlines: one timer
    timers.stop()
    await manager.shutdown()


class NewTimers:
    """The timers scheduled on the running loop from now on (``call_later`` goes through ``call_at``), for
    counting those still to run: a scan of every object for timer handles took seconds in a full run."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.TimerHandle] = {}
        call_at = self.loop.call_at

        def recording(when: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
            def run(*run_args: Any) -> None:
                self._pending.pop(id(handle), None)
                callback(*run_args)

            handle = call_at(when, run, *args, context=context)
            self._pending[id(handle)] = handle
            return handle

        self.loop.call_at = recording  # type: ignore[method-assign]

    def live(self) -> int:
        """Timers scheduled since, neither run nor cancelled."""
        return sum(1 for handle in self._pending.values() if not handle.cancelled())

    def stop(self) -> None:
        del self.loop.call_at  # the loop's own method again


async def test_at_the_turn_limit_the_oldest_ended_turns_make_room() -> None:
    manager = TurnManager(StallBackend(before=0), Settings(max_turns=6, retain_seconds=60))
    turns = [manager.create(REQ) for _ in range(6)]
    await asyncio.sleep(0)
    for i in (1, 3, 4):  # the running ones, 0, 2 and 5, stay whatever their age
        turns[i].interrupt()
    await asyncio.sleep(0)
    newer = manager.create(REQ)
    assert manager.get(turns[1].id) is None  # the oldest ended turn went
    assert all(manager.get(t.id) is t for t in (turns[0], turns[2], turns[3], turns[4], turns[5], newer))
    newest = manager.create(REQ)
    assert manager.get(turns[3].id) is None and manager.get(turns[4].id) is turns[4]
    assert len(manager) == 6 and newest.end is None
    manager.create(REQ)  # takes turns[4], the last ended one
    with pytest.raises(RequestError) as refused:  # all six running: nothing to forget
        manager.create(REQ)
    assert refused.value.status == 429 and len(manager) == 6
    await manager.shutdown()


class Trimming(Paced):
    """:class:`Paced`, saying first that the history was trimmed."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish | Trimmed]:
        yield Trimmed(2)
        async for piece in super().generate(request):
            yield piece


@pytest.mark.parametrize("listening", [False, True], ids=["memory", "a store listening"])
async def test_live_chunks_go_out_by_their_fields_and_the_rest_as_chunks(listening: bool) -> None:
    """A stream that takes live chunks by their fields gets every chunk once, in order, as the buffer
    holds them; only the chunk with the trimmed-history notice goes out as a Chunk. A store listening
    to the turn changes neither, and hears every chunk and the end."""
    hooks = Hooks() if listening else None
    turns = TurnManager(Trimming(count=40, interval=0.002), Settings(backend="echo"), hooks=hooks)
    turn = turns.create(REQ)
    by_fields: list[Chunk] = []
    as_events: list[Event] = []

    def direct(events: list[Event]) -> None:
        as_events.extend(events)

    def live(content: str, seq: int, server_time: float | None) -> None:
        by_fields.append(Chunk(content, seq, server_time))

    async with asyncio.timeout(10):
        with turn.subscribe(0) as sub:
            while not sub.done:
                as_events.extend(await sub.next_batch(direct=direct, live=live))
    chunks = sorted(by_fields + [e for e in as_events if isinstance(e, Chunk)], key=lambda c: c.seq)
    assert chunks == turn.replay.after(0) and len(chunks) == 40
    assert chunks[0].trimmed == 2 and chunks[0] not in by_fields
    assert as_events[-1] == End(status=Status.DONE, trimmed=2)
    assert len(by_fields) >= 30  # paced: nearly every chunk comes while the stream waits
    if hooks is not None:
        assert [e for _, e in hooks.events] == [*chunks, as_events[-1]]
