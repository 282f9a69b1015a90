"""One turn of the notebook layer, for ``%%chat`` and ``ChatWidget`` alike.

A turn resolves its endpoint (starting the in-kernel server on first use),
opens the client stream for the canonical transport in its options, hands each
chunk's text to a :class:`Sink`, and ends with a :class:`TurnRun`: the answer,
the :class:`~nbchat.wire.events.End`, the figures, the provenance and, when it
failed, one line saying why. :func:`run_turn` runs in the calling thread (the
magic: a kernel interrupt interrupts the turn); :func:`arun_turn` is its async
twin on the kernel's loop (the widget: :class:`StopSwitch` is its Stop button).

The stats line is written by :func:`stats_line` only; the direct widget's page,
which streams without the kernel, writes the same line (``statsLine`` in
``js/metrics.js``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..wire.errors import NBChatError
from ..wire.events import Chunk, End, Status
from .kernel_server import Endpoint, KernelServer, hub_refusal_explained, resolve_endpoint
from .options import ChatOptions
from .provenance import provenance, utc_now
from .render import TurnStats

if TYPE_CHECKING:
    from ..clients import AsyncTurnStream
    from ..wire.events import TurnRequest
    from .conversation import Conversation


class Sink(Protocol):
    """Where a turn's text goes as it arrives."""

    def start(self) -> None:
        """The stream is open and the first chunk may come (not called when the turn fails before)."""

    def add(self, text: str) -> None:
        """One chunk's text."""


def error_text(exc: BaseException) -> str:
    """An exception as one line: nbchat's own errors by their message, any other with its type."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if isinstance(exc, NBChatError) and line else f"{type(exc).__name__}: {line}".rstrip(": ")


def stats_line(stats: TurnStats, error: str | None = None) -> str:
    """The line under an answer: the figures, the status (an End's error with it), the trimmed
    history, then why the turn failed when an exception ended it."""
    footer = stats.footer()
    return footer if error is None else f"{footer} · {error}"


@dataclass
class TurnRun:
    """One turn as it runs and as it ended."""

    text: str
    options: ChatOptions
    #: timed from the start: on first use "first token" includes starting the in-kernel server
    stats: TurnStats
    started: str = field(default_factory=utc_now)
    pieces: list[str] = field(default_factory=list)
    url: str | None = None
    uid: str | None = None
    turn_id: str | None = None
    end: End | None = None
    #: why the turn failed, when an exception (not the server's End) ended it
    error: str | None = None

    @classmethod
    def begin(cls, text: str, options: ChatOptions) -> TurnRun:
        return cls(text, options, TurnStats(options.transport))

    @property
    def answer(self) -> str:
        return "".join(self.pieces)

    @property
    def status(self) -> str:
        return self.stats.status or Status.ERROR.value

    @property
    def footer(self) -> str:
        return stats_line(self.stats, self.error)

    def take(self, chunk: Chunk) -> str:
        self.stats.on_chunk(chunk.content)
        self.pieces.append(chunk.content)
        return chunk.content

    def finish(self, end: End | None = None, exc: BaseException | None = None) -> None:
        self.end = end
        self.error = None if exc is None else error_text(exc)
        self.stats.on_end(end, None if end is not None else Status.ERROR.value)

    def provenance(self, info: dict[str, Any]) -> dict[str, Any] | None:
        """The answer's record, given the server's ``/health``; None when no server was reached."""
        if self.url is None:
            return None
        return provenance(self.options, self.stats, server=self.url, info=info, turn_id=self.turn_id,
                          uid=self.uid, timestamp=self.started)


def run_turn(run: TurnRun, conversation: Conversation, kernel_server: KernelServer, sink: Sink) -> None:
    """Run ``run`` in the calling thread; a kernel interrupt (Ctrl-C) interrupts the turn, which still
    ends with what was generated and ``End(INTERRUPTED)`` (:func:`nbchat.clients.collect`)."""
    from ..clients import collect, connect

    options = run.options
    try:
        endpoint = resolve_endpoint(options.server, options.token, kernel_server)
        run.url = endpoint.url
        request = conversation.request(run.text, options)
        with hub_refusal_explained(endpoint), connect(endpoint.url, token=endpoint.token,
                                                      transport=options.transport) as client:
            run.uid = client.uid
            turn = client.stream(request)
            run.turn_id = turn.turn_id
            sink.start()
            end = collect(turn, lambda chunk: sink.add(run.take(chunk)))
            run.turn_id = turn.turn_id or run.turn_id
    except (NBChatError, OSError) as exc:
        run.finish(exc=exc)
    else:
        run.finish(end)


class StopSwitch:
    """Stop for a turn on the loop: before the request went out the turn never starts; after, the
    server is told to stop and the stream ends with what was generated."""

    def __init__(self) -> None:
        self.requested = False
        self.turn: AsyncTurnStream | None = None

    def stop(self) -> Coroutine[Any, Any, None] | None:
        """Ask to stop; returns the interrupt to schedule when a stream is open."""
        self.requested = True
        return self.turn.interrupt() if self.turn is not None else None


async def arun_turn(run: TurnRun, conversation: Conversation, kernel_server: KernelServer, sink: Sink,
                    stop: StopSwitch) -> None:
    """The async twin of :func:`run_turn`; what would block the loop (starting the in-kernel server)
    runs in a thread. Every failure ends in ``run.error``: the caller is the UI's boundary."""
    try:
        end = await _astream(run, conversation, kernel_server, sink, stop)
    except Exception as exc:
        run.finish(exc=exc)
    else:
        run.finish(end)
    finally:
        stop.turn = None


async def _astream(run: TurnRun, conversation: Conversation, kernel_server: KernelServer, sink: Sink,
                   stop: StopSwitch) -> End:
    options = run.options
    endpoint = await asyncio.to_thread(resolve_endpoint, options.server, options.token, kernel_server)
    request = conversation.request(run.text, options)
    if stop.requested:  # Stop came before anything was sent: nothing to interrupt
        return End(Status.INTERRUPTED)
    run.url = endpoint.url
    with hub_refusal_explained(endpoint):
        return await _astream_from(run, endpoint, request, sink, stop)


async def _astream_from(run: TurnRun, endpoint: Endpoint, request: TurnRequest, sink: Sink,
                        stop: StopSwitch) -> End:
    from ..clients import acollect, aconnect

    async with aconnect(endpoint.url, token=endpoint.token, transport=run.options.transport) as client:
        run.uid = client.uid
        turn = await client.stream(request)
        run.turn_id = turn.turn_id
        stop.turn = turn
        if stop.requested:  # Stop came while the request was being sent
            await turn.interrupt()
        sink.start()
        end = await acollect(turn, lambda chunk: sink.add(run.take(chunk)))
        run.turn_id = turn.turn_id or run.turn_id
        return end


async def arun_provenance(run: TurnRun, conversation: Conversation) -> dict[str, Any] | None:
    """:meth:`TurnRun.provenance`, asking the server's ``/health`` off the loop."""
    if run.url is None:
        return None
    info = await asyncio.to_thread(conversation.server_info.get, run.url)
    return run.provenance(info)
