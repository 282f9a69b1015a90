"""One way to read a turn to its end: :func:`collect` and its async twin :func:`acollect`.

The command line, the ``%%chat`` magic, the widget and the benchmarks all
read turns through these, so "iterate, hand each chunk on, stop at the End,
and after an interrupt read on to ``[INTERRUPTED]``" is written once. What a
caller does with a chunk (print it, render it, time it) is its ``on_chunk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ..wire.errors import NBChatConnectionError, NBChatError
from ..wire.events import Chunk, End, Status
from ._common import AsyncTurnStream, TurnStream

OnChunk = Callable[[Chunk], object]


def collect(turn: TurnStream, on_chunk: OnChunk | None = None) -> End:
    """Read ``turn`` to its :class:`End`, handing each chunk to ``on_chunk``.

    A ``KeyboardInterrupt`` (Ctrl-C in a terminal, a kernel interrupt in a
    notebook) interrupts the turn and reads on, so what the server generated
    up to then still arrives and the turn ends with ``[INTERRUPTED]``. A second
    one, or a stream that breaks while the interrupt takes effect, stops
    waiting with ``End(INTERRUPTED)``.
    """
    try:
        return _read(turn, on_chunk)
    except KeyboardInterrupt:
        turn.interrupt()
        try:
            return _read(turn, on_chunk)
        except (KeyboardInterrupt, NBChatError):
            turn.close()
            return End(Status.INTERRUPTED, received=time.time())


async def acollect(turn: AsyncTurnStream, on_chunk: OnChunk | None = None) -> End:
    """The asyncio twin of :func:`collect`. Cancelling the task that awaits it
    interrupts the turn (the server stops generating) before the cancellation goes on."""
    try:
        async for event in turn:
            if isinstance(event, End):
                return event
            if on_chunk is not None:
                on_chunk(event)
    except asyncio.CancelledError:
        with contextlib.suppress(NBChatError):
            await turn.interrupt()
        await turn.aclose()
        raise
    return _ended(turn.end)


def _read(turn: TurnStream, on_chunk: OnChunk | None) -> End:
    for event in turn:
        if isinstance(event, End):
            return event
        if on_chunk is not None:
            on_chunk(event)
    return _ended(turn.end)


def _ended(end: End | None) -> End:
    # a stream that stops without its status raises in the turn stream; this is a turn already read to its end
    if end is None:
        raise NBChatConnectionError("the stream ended without a status")
    return end
