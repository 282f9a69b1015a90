"""The load generator of a sweep window: its streams in this process or spread over several.

One asyncio process reads about 40,000 chunks/s on a free core, and far
fewer on a machine other work keeps busy: raw TCP, never capped, then
delivers less than two capped workers could serve, and the benchmark would
measure its own client. ``load_procs`` > 1 runs a window's streams in that
many child processes (``python -m nbchat.bench.loadgen``), each opening and
warming its share of the connections first; the window starts once every
child is ready and ends once every child has read its last chunk, so the
server's CPU is read over the streaming alone, as in one process. Each child
sends its traces back (same host, same clock: the latencies mean what they
mean in one process) and the CPU it spent streaming.

The child's protocol, one line each way: a JSON spec on stdin, ``ready LOOP``
(the module of the event loop it runs on), ``go`` on stdin, ``done CPU_SECONDS``, then the traces as one JSON line.

A child runs on uvloop where it is installed (the ``bench`` extra): it reads
the same bytes and decodes them with the same code for less CPU, which the
servers measured beside it on the same cores then have. The servers (nbchat's
and the raw TCP floor) keep asyncio's own loop, as ``nbchat serve`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .measure import Streamer, echo_message, open_streamer
from .procs import python_child
from .rawtcp import stream_raw
from .stats import Trace
from .wire import parse_host_port

CONNECT_AT_ONCE = 50  # connections opened concurrently while a sweep point sets up
LINE_LIMIT = 1 << 28  # one child's traces come back as one line: 500 streams of 100 chunks are ~3 MB

#: runs a window's streams once every connection is open and warm: their traces
Go = Callable[[], Awaitable[list[Trace]]]


@contextlib.asynccontextmanager
async def ready_streams(kind: str, url: str, token: str, streams: int, n: int, rate: float,
                        client: str = "wire") -> AsyncIterator[Go]:
    """``streams`` streams of ``n`` chunks at ``rate`` each, against the raw TCP floor (``kind`` "raw")
    or an nbchat server over transport ``kind``: connections opened (at most 50 at a time: a sweep
    measures streaming, not accept()) and each warmed by a one-chunk turn before this yields. Each
    stream starts at a random offset within one interval (independent users are not in step)."""
    host, port = parse_host_port(url)

    async def offset() -> None:
        await asyncio.sleep(random.uniform(0, 1 / rate) if rate > 0 else 0.0)

    if kind == "raw":
        async def raw_one() -> Trace:
            await offset()
            return await stream_raw(port, n, rate, host=host)

        async def go_raw() -> list[Trace]:
            return list(await asyncio.gather(*(raw_one() for _ in range(streams))))

        yield go_raw
        return

    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    async with contextlib.AsyncExitStack() as stack:

        async def connect() -> Streamer:
            async with gate:
                streamer = await stack.enter_async_context(open_streamer(url, token, kind, client))
                await streamer.turn(echo_message(1))
                return streamer

        ready = await asyncio.gather(*(connect() for _ in range(streams)))

        async def one(streamer: Streamer) -> Trace:
            await offset()
            sent = time.time()
            try:
                return await streamer.turn(echo_message(n))
            except Exception as exc:  # one stream failing under load is a result (the errors column), not the end
                return Trace(sent=sent, status=f"error: {exc}")

        async def go() -> list[Trace]:
            return list(await asyncio.gather(*(one(s) for s in ready)))

        yield go


def shares(streams: int, procs: int) -> list[int]:
    """``streams`` spread over at most ``procs`` processes as evenly as they go (none left empty)."""
    procs = max(1, min(procs, streams))
    return [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]


def trace_to_json(trace: Trace) -> list[Any]:
    return [trace.sent, trace.status, trace.wire_bytes, trace.emitted, trace.received]


def trace_from_json(data: list[Any]) -> Trace:
    sent, status, wire_bytes, emitted, received = data
    return Trace(sent=float(sent), emitted=[float(x) for x in emitted], received=[float(x) for x in received],
                 wire_bytes=int(wire_bytes), status=str(status))


async def spread_window(spec: dict[str, Any], procs: int,
                        server_cpu: Callable[[], float]) -> tuple[list[Trace], float, float]:
    """One window's streams over ``procs`` child processes: their traces, the server's CPU seconds
    over the streaming (``server_cpu`` read when every child is ready and when every one is done) and
    the children's CPU seconds over it."""
    async with contextlib.AsyncExitStack() as stack:
        children = []
        for count in shares(int(spec["streams"]), procs):
            child = await stack.enter_async_context(
                python_child(["-m", "nbchat.bench.loadgen"], limit=LINE_LIMIT))
            assert child.stdin is not None
            child.stdin.write((json.dumps({**spec, "streams": count}) + "\n").encode())
            children.append(child)
        await asyncio.gather(*(_expect(c, "ready") for c in children))
        before = server_cpu()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
        done = await asyncio.gather(*(_expect(c, "done") for c in children))
        spent = server_cpu() - before
        traces = [trace_from_json(t) for c in children for t in json.loads(await _line(c))]
        return traces, spent, sum(float(d.split()[1]) for d in done)


async def _line(child: asyncio.subprocess.Process) -> str:
    assert child.stdout is not None
    return (await child.stdout.readline()).decode()


async def _expect(child: asyncio.subprocess.Process, word: str) -> str:
    line = await _line(child)
    if not line.startswith(word):
        rest = await child.stdout.read() if child.stdout is not None else b""
        raise RuntimeError(f"a load generator process said {line!r} instead of {word!r}: "
                           f"{rest.decode(errors='replace')[-2000:]}")
    return line


async def _child() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    spec = json.loads(await stdin.readline())
    async with ready_streams(spec["kind"], spec["url"], spec["token"], int(spec["streams"]), int(spec["n"]),
                             float(spec["rate"]), spec.get("client", "wire")) as go:
        print(f"ready {type(loop).__module__.split('.')[0]}", flush=True)
        await stdin.readline()
        cpu = time.process_time()
        traces = await go()
        print(f"done {time.process_time() - cpu}", flush=True)
    sys.stdout.write(json.dumps([trace_to_json(t) for t in traces]) + "\n")
    sys.stdout.flush()


def child_loop() -> str:
    """The event loop a load generator process runs on: uvloop where installed, else asyncio's."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def _main() -> None:
    if child_loop() == "uvloop":
        import uvloop

        uvloop.run(_child())
    else:
        asyncio.run(_child())


if __name__ == "__main__":
    _main()
