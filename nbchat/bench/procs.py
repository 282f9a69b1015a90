"""The processes a benchmark measures against: ``nbchat serve`` and the raw TCP floor.

Both run as child processes, never in the measuring process: a server sharing
the client's event loop (or its GIL, in a thread) would make every latency
figure include the client's own work, and at 500 streams the two would
starve each other. Each child prints one line once it accepts connections;
the parent awaits that line (no polling) and kills the child on exit.
CPU seconds are read from ``/proc`` so that a run can say which side was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..wire.errors import ServerStartError

T = TypeVar("T")

START_TIMEOUT = 120.0  # the embedded model takes a while to load
#: what ``nbchat serve`` prints once it accepts connections; group 1 is its base URL. With
#: ``--workers N`` the line ends in `` (N workers)``, printed once every worker accepts.
SERVING_LINE = re.compile(rb"nbchat serving \S+ at (http://\S+?)/(?:\?token=\S*)?(?: \(\d+ workers\))?\s*$")
_RAW = re.compile(rb"rawtcp listening on (\d+)")


@dataclass
class Child:
    """A running child process and where to reach it."""

    process: asyncio.subprocess.Process | None  # None: a server some other process runs
    url: str = ""
    token: str = ""
    port: int = 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the child and its own children (``--workers``) have used so far
        (0.0 where /proc is unavailable)."""
        if self.process is None:
            return 0.0
        return sum(cpu_seconds(pid) for pid in (self.process.pid, *descendants(self.process.pid)))


def free_port() -> int:
    """A loopback port free now, for a child process that needs its port on its command line."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """The live children of ``pid``, their children and so on (from /proc)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # it ended and was reaped meanwhile (a load generator that finished, say)
        return found
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread or process ended meanwhile
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Whether the process runs still (a zombie, ended but not yet reaped, does not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


async def _announced(proc: asyncio.subprocess.Process, pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
    assert proc.stdout is not None
    seen: list[bytes] = []

    async def first_match() -> re.Match[bytes]:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            seen.append(line)
            found = pattern.search(line)
            if found:
                return found
        raise ServerStartError(f"exited with {await proc.wait()} before it was ready: {b''.join(seen[-5:])!r}")

    try:
        return await asyncio.wait_for(first_match(), timeout)
    except TimeoutError as exc:
        raise ServerStartError(f"not ready after {timeout:.0f} s: {b''.join(seen[-5:])!r}") from exc


@contextlib.asynccontextmanager
async def python_child(args: list[str], prefix: tuple[str, ...] = (), *, limit: int = 0,
                       grace: float = 10.0) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python ARGS`` with its output (stdout and stderr) piped; terminated on exit, and past ``grace``
    seconds killed with every process it started.
    With ``limit`` (the longest line its stdout may send), a child that talks both ways instead:
    stdin piped too, stderr left on the parent's (a traceback must not be read as a reply)."""
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, *args, stdout=pipe, stderr=None if limit else asyncio.subprocess.STDOUT,
        stdin=pipe if limit else asyncio.subprocess.DEVNULL, limit=limit or 2**16)
    try:
        yield proc
    finally:
        await _end(proc, grace)


async def _end(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Terminate ``proc``; past ``grace`` seconds kill it and every process it started.

    Its children are listed first: once it has gone they belong to init, and a worker it left behind
    (a supervisor killed before it stopped its workers) holds the pipes asyncio waits to see closed
    before ``wait()`` returns, which it then never would."""
    if proc.returncode is not None:
        return
    tree = descendants(proc.pid)
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
        return
    except TimeoutError:
        pass
    for pid in (proc.pid, *tree, *descendants(proc.pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await proc.wait()


@contextlib.asynccontextmanager
async def nbchat_server(backend: str = "echo", rate: float = 0.0, host: str = "127.0.0.1",
                        prefix: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> AsyncIterator[Child]:
    """``nbchat serve`` on a free port, in a child process (run through ``prefix``, e.g. ``ip netns exec NS``;
    ``extra`` are more serve options, e.g. ``--store URL --workers 2``)."""
    token = secrets.token_urlsafe(16)
    args = ["-m", "nbchat.cli.main", "serve", "--host", host, "--port", "0", f"--token={token}",
            "--backend", backend, "--rate", str(rate), "--log-level", "warning", *extra]
    async with python_child(args, prefix) as proc:
        found = await _announced(proc, SERVING_LINE, START_TIMEOUT)
        # keep draining its output, so a chatty server never blocks on a full pipe
        output = asyncio.ensure_future(drain(proc))
        try:
            yield Child(proc, url=found.group(1).decode(), token=token)
        finally:
            output.cancel()


@contextlib.asynccontextmanager
async def raw_server(host: str = "127.0.0.1", prefix: tuple[str, ...] = (), processes: int = 1) -> AsyncIterator[Child]:
    """The raw TCP floor (:mod:`nbchat.bench.rawtcp`) in a child process (and ``processes`` - 1 it forks)."""
    async with python_child(["-m", "nbchat.bench.rawtcp", host, str(processes)], prefix) as proc:
        found = await _announced(proc, _RAW, 30.0)
        port = int(found.group(1))
        yield Child(proc, url=f"tcp://{host}:{port}", port=port)


async def drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.read(65536):
        pass


@contextlib.contextmanager
def in_background(manager: AbstractAsyncContextManager[T]) -> Iterator[T]:
    """Enter an async context manager on an event loop of its own thread, for a sync caller.

    The loop keeps running in between, so a child's output is drained while
    the caller measures."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="nbchat-bench-children", daemon=True)
    thread.start()
    try:
        value = asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result()
        try:
            yield value
        finally:
            asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
