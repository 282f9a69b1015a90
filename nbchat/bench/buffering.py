"""Spotting a buffering proxy: emit times spread out, receive times bunched up.

A proxy that buffers responses (nginx with ``proxy_buffering on``, some
corporate gateways) turns a live stream into bursts: the server's chunk
timestamps stay evenly spaced while the client receives several chunks in
one read, late. :func:`assess` says so from one trace; :func:`detect_buffering`
streams a paced turn through a URL and assesses it; :class:`BufferingProxy`
is a tiny buffering proxy on loopback to show what it looks like.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field

from .measure import echo_message, open_streamer
from .stats import Trace, ms, percentile

MIN_EMIT_SPREAD = 0.002  # below this the server itself sent in bursts: nothing to judge


@dataclass(frozen=True)
class BufferingReport:
    chunks: int
    arrivals: int  # groups of chunks received together (closer than half the emit interval)
    emit_interval_ms: float  # median gap between the server's emit times
    receive_interval_ms: float  # median gap between the client's receive times
    latency_p50_ms: float
    latency_max_ms: float
    buffered: bool
    trace: Trace | None = field(default=None, repr=False, compare=False)  # the timings, for plots

    def __str__(self) -> str:
        verdict = "BUFFERED: chunks arrive in bursts" if self.buffered else "live: chunks arrive as they are sent"
        return (f"{verdict} ({self.chunks} chunks in {self.arrivals} arrivals; emitted every "
                f"{self.emit_interval_ms:.1f} ms, received every {self.receive_interval_ms:.1f} ms (median); "
                f"latency p50 {self.latency_p50_ms:.1f} ms, max {self.latency_max_ms:.1f} ms)")


def assess(trace: Trace) -> BufferingReport:
    """Buffered when the emit times are spread but at least two chunks arrive per read on average."""
    emit = percentile(trace.emit_intervals(), 50)
    gaps = trace.receive_intervals()
    arrivals = 1 + sum(1 for g in gaps if g > emit / 2) if trace.chunks else 0
    lat = trace.latencies()
    spread = not math.isnan(emit) and emit >= MIN_EMIT_SPREAD
    return BufferingReport(chunks=trace.chunks, arrivals=arrivals, emit_interval_ms=ms(emit),
                           receive_interval_ms=ms(percentile(gaps, 50)), latency_p50_ms=ms(percentile(lat, 50)),
                           latency_max_ms=ms(max(lat)) if lat else math.nan,
                           buffered=spread and arrivals * 2 <= trace.chunks, trace=trace)


async def detect_buffering(url: str, token: str, transport: str, chunks: int = 40,
                           message: str | None = None, client: str = "wire") -> BufferingReport:
    """Stream one turn from the server at ``url`` and assess it. The server must pace its
    answer (an echo server with a rate, or a model): ``message`` defaults to ``chunks`` echo pieces."""
    async with open_streamer(url, token, transport, client) as streamer:
        return assess(await streamer.turn(message or echo_message(chunks)))


class BufferingProxy:
    """A loopback TCP proxy that holds the server's bytes until it has ``flush_bytes`` of them
    or ``flush_after`` seconds have passed since the oldest, as a buffering reverse proxy does.
    Requests go upstream at once. ``async with BufferingProxy(port) as proxy: proxy.url``."""

    def __init__(self, upstream_port: int, flush_bytes: int = 4096, flush_after: float = 0.25,
                 host: str = "127.0.0.1") -> None:
        self.upstream_port, self.host = upstream_port, host
        self.flush_bytes, self.flush_after = flush_bytes, flush_after
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> BufferingProxy:
        self._server = await asyncio.start_server(self._connection, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            u_reader, u_writer = await asyncio.open_connection(self.host, self.upstream_port)
            await asyncio.gather(_pump(c_reader, u_writer, 0, 0.0),
                                 _pump(u_reader, c_writer, self.flush_bytes, self.flush_after))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            c_writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int, hold: float) -> None:
    """Copy bytes; with ``limit`` > 0, hold them until ``limit`` bytes or ``hold`` seconds."""
    loop = asyncio.get_running_loop()
    buf, deadline = bytearray(), math.inf
    try:
        while True:
            wait = None if deadline == math.inf else max(deadline - loop.time(), 0.0)
            try:
                # a cancelled read loses nothing: the bytes stay in the reader
                data: bytes | None = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                data = None
            if data == b"":
                break
            if data:
                buf += data
                deadline = min(deadline, loop.time() + hold)
            if len(buf) >= limit or loop.time() >= deadline:
                writer.write(bytes(buf))
                buf.clear()
                deadline = math.inf
                await writer.drain()
        writer.write(bytes(buf))
        await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
