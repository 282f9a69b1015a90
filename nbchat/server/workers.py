"""``nbchat serve --workers N``: N server processes accepting on one listening socket.

The parent binds the socket once and hands it to N spawned workers (as
uvicorn's own ``--workers`` does), so the kernel spreads connections over
them; the turns are shared through the store every worker is given (the
command line refuses ``--workers`` > 1 without ``--store``). The parent only
supervises: it announces the URL once every worker accepts, restarts a
worker that dies, and stops them all on SIGINT or SIGTERM. A worker that
does not accept within the start timeout ends the command with an error
rather than a wait with no end.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as EventType
from typing import Any

from .config import Settings

log = logging.getLogger("nbchat.server.workers")

#: seconds every worker may take to accept connections: longer than one process's start (120 s,
#: :func:`~nbchat.server.serving.start_server_thread`), as N workers load their models at once
START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(settings: Settings, log_level: str, sock: socket.socket, ready: EventType) -> None:
    from .serving import NBChatServer, make_server, serve_here

    logging.basicConfig(level=log_level.upper())
    server = make_server(settings, log_level=log_level)

    def on_ready(srv: NBChatServer) -> None:
        ready.set()

    server.on_ready = on_ready
    serve_here(server, [sock])


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all."""

    def __init__(self, settings: Settings, workers: int, log_level: str,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.settings = settings
        self.count = workers
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.sock = bind_socket(settings.host, settings.port)
        self.port: int = self.sock.getsockname()[1]
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[tuple[SpawnProcess, EventType]] = []
        self._stop = threading.Event()

    def _spawn(self) -> tuple[SpawnProcess, EventType]:
        ready = self._ctx.Event()
        proc = self._ctx.Process(target=_worker, args=(self.settings, self.log_level, self.sock, ready),
                                 name="nbchat-worker")
        proc.start()
        return proc, ready

    def start(self) -> str | None:
        """Start every worker: None once each accepts connections, else why one did not (it exited,
        the start timeout passed, or a signal stopped the command)."""
        self._procs = [self._spawn() for _ in range(self.count)]
        deadline = time.monotonic() + self.start_timeout
        for proc, ready in self._procs:
            while not ready.wait(0.2):
                if not proc.is_alive():
                    return (f"worker {proc.pid} exited with {proc.exitcode} before it accepted connections "
                            "(see its log above)")
                if self._stop.is_set():
                    return "stopped before every worker accepted connections"
                if time.monotonic() >= deadline:
                    return (f"worker {proc.pid} did not accept connections within {self.start_timeout:g} s "
                            "(--start-timeout); stopping every worker")
        return None

    def run(self, announce: Callable[[int], None]) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            problem = self.start()
            if problem is not None:
                print(f"nbchat serve: {problem}", file=sys.stderr, flush=True)
                return 1
            announce(self.port)
            while not self._stop.wait(0.5):
                self._restart_dead()
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _restart_dead(self) -> None:
        for i, (proc, _) in enumerate(self._procs):
            if not proc.is_alive() and not self._stop.is_set():
                log.warning("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                self._procs[i] = self._spawn()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        for proc, ready in self._procs:
            if not proc.is_alive():
                continue
            if ready.is_set():
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown ends turns with [INTERRUPTED]
            else:
                # One that never accepted holds no turn: nothing to wait for (and one stuck, even
                # stopped, must not hold the command up); its model process exits with it.
                proc.kill()
        for proc, _ in self._procs:
            proc.join(STOP_TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.sock.close()
