"""The floor every transport is compared with: a bare asyncio TCP stream on loopback.

The server sends newline-delimited JSON records shaped like nbchat's chunk
records (``{"content", "seq", "ts"}``), paced on the same fixed schedule as
the echo backend, with no HTTP, no framing and no turn machinery. It runs in
its own process, like ``nbchat serve`` in the benchmark, so that what the
client measures is the same kind of one-way latency between two processes.

    python -m nbchat.bench.rawtcp [HOST [PROCESSES]]    # prints "rawtcp listening on PORT" (once each)

A client asks for a stream with one line, ``{"n": N, "rate": R, "piece": "abcd"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time

from ..server.heap import settle_heap
from .stats import Trace

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent ends

# Leave the loop this often when sending flat out, as the echo backend does,
# so that concurrent streams are served fairly.
YIELD_EVERY = 64


async def _serve_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        spec = json.loads(await reader.readline())
        n, rate, piece = int(spec["n"]), float(spec["rate"]), str(spec.get("piece", "abcd"))
        interval = 1.0 / rate if rate > 0 else 0.0
        start = time.monotonic()
        for seq in range(1, n + 1):
            if interval:
                await asyncio.sleep(max(start + seq * interval - time.monotonic(), 0.0))
            elif seq % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            record = {"content": piece, "seq": seq, "ts": round(time.time(), 6)}
            writer.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
            await writer.drain()  # returns at once unless the client is behind
    except (ConnectionError, ValueError, KeyError):
        pass  # a client that left or sent nonsense: nothing to stream
    finally:
        writer.close()


async def serve(host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> None:
    """Serve until cancelled (on ``sock`` when given); announce the port on stdout for the parent process."""
    server = await (asyncio.start_server(_serve_stream, sock=sock) if sock is not None
                    else asyncio.start_server(_serve_stream, host, port))
    print(f"rawtcp listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def listen_in(processes: int, host: str) -> socket.socket:
    """A listening socket shared by ``processes`` processes: this one and the ones it forks, each
    accepting on it with an event loop of its own (the kernel hands each connection to one of them).
    One process of Python serves about as many chunks/s as one load generator process reads: a
    floor that is to be the generator's ceiling when the streams are spread over several
    (``nbchat bench --load-procs``) is served by as many."""
    sock = socket.create_server((host, 0), backlog=4096)
    parent = os.getpid()
    for _ in range(processes - 1):
        if os.fork() == 0:
            _end_with(parent)
            break
    return sock


def _end_with(parent: int) -> None:
    """End this forked process when its parent ends (the benchmark stops the parent alone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent ended before the line above: nobody would send the signal
        os._exit(0)


async def stream_raw(port: int, n: int, rate: float, piece: str = "abcd", host: str = "127.0.0.1") -> Trace:
    """Read one raw stream of ``n`` records; the trace has the same meaning as an nbchat stream's."""
    trace = Trace(sent=time.time())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write((json.dumps({"n": n, "rate": rate, "piece": piece}) + "\n").encode())
        while line := await reader.readline():
            received = time.time()
            # decoded like every nbchat client decodes its records, so the floor includes JSON parsing
            record = json.loads(line)
            trace.add(float(record["ts"]), received)
            trace.wire_bytes += len(line)
        trace.status = "eof"
    finally:
        writer.close()
    return trace


def main() -> int:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    sock = listen_in(processes, host) if processes > 1 else None
    settle_heap()  # the collector set as in ``nbchat serve``: the floor differs from it in nothing else
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, sock=sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
