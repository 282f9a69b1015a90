"""Measure the server's connection limits against a real ``nbchat serve`` on loopback.

    PYTHONPATH=$PWD python tests/load_limits.py [--tree DIR] [--quick]

``--tree`` runs the server from another checkout (a build without the limits, say;
only options every build knows are passed). Prints one line per figure:

- header deadline: how long one connection sending a header line every second is held;
- connections held: slow-header connections open at once, and /health latency then;
- CPU for a 64 MiB header: the server process's CPU time to refuse it (Linux /proc);
- RSS with 100 clients that never read (and 10 that ping without reading).

tests/test_limits_load.py runs the same functions, smaller, as slow tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tests.helpers import stop_process

TOKEN = "load-token-0123456789"
ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def serve(tree: Path = ROOT, extra: Sequence[str] = (), fd_limit: int | None = None, *, rate: float = 0.0,
          token: str = TOKEN, log: IO[str] | None = None) -> Iterator[Server]:
    """``nbchat serve --backend echo`` from ``tree`` on a free loopback port, stopped at exit: ``rate`` pieces
    a second, ``extra`` options after the defaults (a later ``--log-level`` wins), its log to ``log`` (else
    discarded); ``fd_limit`` caps its file descriptors (soft and hard, as a default ``ulimit -n`` of 1024 would)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}

    def limit_fds() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
    proc = subprocess.Popen([sys.executable, "-m", "nbchat", "serve", "--backend", "echo", "--rate", f"{rate:g}",
                             "--port", "0", f"--token={token}", "--log-level", "warning", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if log is None else log, text=True,
                            env=env, cwd=tree, preexec_fn=limit_fds)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "nbchat serving echo at http://HOST:PORT/?token=..."
        if " at " not in line:
            raise RuntimeError(f"nbchat serve did not start: {line!r}")
        yield Server(proc, int(line.split(" at ", 1)[1].split("/", 3)[2].rsplit(":", 1)[1]))
    finally:
        stop_process(proc)


def slow_head(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return s


def closed_by_server(s: socket.socket) -> bool:
    poller = select.poll()  # not select(): it cannot watch descriptors past 1023
    poller.register(s, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        data = s.recv(4096)
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5")


def health_ms(url: str, n: int = 5) -> float:
    """Median /health latency over ``n`` fresh connections (a new connection is what an attack starves)."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        try:
            httpx.get(url + "/health", timeout=5)
        except httpx.HTTPError:
            times.append(5000.0)
            continue
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ---------------------------------------------------------------- figures


def header_deadline(server: Server, limit: float = 30.0) -> float | None:
    """Seconds one connection that sends a header line every second is held; None if still held at ``limit``."""
    s = slow_head(server.port)
    start = time.monotonic()
    try:
        while time.monotonic() - start < limit:
            if closed_by_server(s):
                return time.monotonic() - start
            try:
                s.sendall(b"X-Drip: 1\r\n")
            except OSError:
                return time.monotonic() - start
            time.sleep(1.0)
        return None
    finally:
        s.close()


def connections_held(server: Server, steps: Sequence[int]) -> list[tuple[int, int, float]]:
    """(opened, still held by the server, /health median ms) after opening each step's worth of slow heads."""
    socks: list[socket.socket] = []
    out = []
    try:
        for target in steps:
            while len(socks) < target:
                try:
                    socks.append(slow_head(server.port))
                except OSError:
                    break
            time.sleep(0.5)
            held = sum(not closed_by_server(s) for s in socks)
            out.append((len(socks), held, health_ms(server.url)))
    finally:
        for s in socks:
            s.close()
    return out


def cpu_for_header(server: Server, size: int) -> tuple[float, str]:
    """Server CPU seconds spent on one request whose header value is ``size`` bytes, and its status line."""
    before = server.cpu_seconds()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(120)
    head = b"GET /talkByStream HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
    status = "no answer"
    try:
        s.sendall(head)
        block = b"a" * (1 << 20)
        for _ in range(size >> 20):
            s.sendall(block)
        s.sendall(b"\r\n\r\n")
    except OSError:
        pass
    with contextlib.suppress(OSError):
        status = s.recv(4096).split(b"\r\n", 1)[0].decode()
    s.close()
    time.sleep(0.5)
    return server.cpu_seconds() - before, status


def rss_non_reading(server: Server, clients: int, content_bytes: int, settle: float = 8.0) -> float:
    """Server RSS (MiB) once ``clients`` NDJSON streams of ``content_bytes`` each were asked for and none is read."""
    body = json.dumps({"userMessage": {"role": "user", "content": "r" * content_bytes}}).encode()
    socks = []
    try:
        for _ in range(clients):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(f"POST /talkByStream HTTP/1.1\r\nHost: 127.0.0.1\r\ntoken: {TOKEN}\r\n"
                      f"content-length: {len(body)}\r\n\r\n".encode() + body)
            socks.append(s)
        time.sleep(settle)  # every turn generates to its end meanwhile (echo at full speed)
        return server.rss_mib()
    finally:
        for s in socks:
            s.close()


def ping_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return struct.pack("!BB", 0x89, 0x80 | len(payload)) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def rss_ping_flood(server: Server, clients: int, megabytes: int) -> float:
    """Server RSS (MiB) after ``clients`` WebSockets each sent ``megabytes`` of pings and read nothing."""
    burst = ping_frame(b"p" * 125) * 8192
    socks = []
    try:
        for i in range(clients):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(f"GET /websocket/p{i}?token={TOKEN} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n".encode())
            s.recv(4096)
            s.settimeout(10)
            socks.append(s)
        for s in socks:
            with contextlib.suppress(OSError):
                for _ in range(megabytes * (1 << 20) // len(burst)):
                    s.sendall(burst)
        time.sleep(1.0)
        return server.rss_mib()
    finally:
        for s in socks:
            s.close()


FIGURES = ["deadline", "connections", "cpu", "rss", "ping"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=ROOT, help="checkout to run the server from")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--server-fd-limit", type=int, default=None, metavar="N",
                   help="run the server under ulimit -n N (the connections figure)")
    p.add_argument("--only", nargs="*", choices=FIGURES, default=FIGURES, help="measure only these")
    args = p.parse_args(argv)
    quick = args.quick
    if "deadline" in args.only:
        with serve(args.tree) as server:
            d = header_deadline(server, limit=15 if quick else 30)
            print(f"header deadline: {'held past the limit' if d is None else f'closed after {d:.1f} s'}",
                  flush=True)
    if "connections" in args.only:
        steps = [100, 400] if quick else [100, 400, 800, 1100, 1500]
        with serve(args.tree, fd_limit=args.server_fd_limit) as server:
            for opened, held, ms in connections_held(server, steps):
                print(f"slow heads opened {opened}: server holds {held}, /health median {ms:.0f} ms", flush=True)
    if "cpu" in args.only:
        size = (16 if quick else 64) << 20
        with serve(args.tree) as server:
            cpu, status = cpu_for_header(server, size)
            print(f"{size >> 20} MiB header: server CPU {cpu:.2f} s, answer {status!r}", flush=True)
    if "rss" in args.only:
        with serve(args.tree) as server:
            base = server.rss_mib()
            rss = rss_non_reading(server, 100, 256 * 1024, settle=4 if quick else 8)
            print(f"RSS idle {base:.0f} MiB; with 100 non-reading clients of 256 KiB answers {rss:.0f} MiB",
                  flush=True)
    if "ping" in args.only:
        with serve(args.tree) as server:
            base = server.rss_mib()
            rss = rss_ping_flood(server, 10, 4 if quick else 20)
            print(f"RSS idle {base:.0f} MiB; after 10 ping-flooding clients {rss:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
