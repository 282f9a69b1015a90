"""Running the app under uvicorn: in the foreground (``nbchat serve``) or in a
background thread (tests, the notebook's in-kernel server).

Shutdown order matters for the contract: running turns are interrupted and
their ``[INTERRUPTED]`` statuses flushed to every attached stream *before*
uvicorn closes connections (it would otherwise cut WebSockets with 1012 and
hold HTTP streams open until their turns end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ..backends import Backend
from ..wire.errors import ServerStartError
from .app import create_app
from .config import Settings
from .context import context_of
from .direct import direct_protocols
from .heap import settle_heap
from .limits import Limits, admit_connections, install_token_redaction, listen_backlog
from .store import TurnStore

log = logging.getLogger(__name__)

WS_FRAME_SLACK = 1024  # a message of max_body_bytes plus this passes the transport; the app closes with 1009


class NBChatServer(uvicorn.Server):
    """uvicorn.Server that ends turns first on shutdown and reports when it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()
        #: called once the server accepts connections (``nbchat serve`` prints its URL there)
        self.on_ready: Callable[[NBChatServer], None] | None = None
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    async def main_loop(self) -> None:
        # uvicorn's loop looks at should_exit every 0.1 s; request_exit() wakes it at once, so a
        # server in a thread stops in a fraction of that (a test suite stops hundreds of them)
        wake = asyncio.Event()
        self._wake = (asyncio.get_running_loop(), wake)
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.1)

    def request_exit(self) -> None:
        """Stop serving, from any thread: what setting ``should_exit`` does, without the wait for a tick."""
        self.should_exit = True
        if self._wake is not None:
            loop, wake = self._wake
            with contextlib.suppress(RuntimeError):  # the loop already closed: it has stopped
                loop.call_soon_threadsafe(wake.set)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            if self.on_ready is not None:
                self.on_ready(self)
            self.ready.set()

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.loaded_app if self.config.loaded else None
        store = _find_store(app)
        if store is not None:
            await store.shutdown()
            await store.drain(5.0)
        await self._close_connections(sockets)
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _close_connections(self, sockets: Any) -> None:
        # uvicorn's own shutdown steps, without its fixed 0.1 s pause after asking connections to
        # close and its 0.1 s polls: they close in milliseconds, and a test suite stops hundreds of servers
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()

        async def settled() -> None:
            while (state.connections or state.tasks) and not self.force_exit:
                await asyncio.sleep(0.005)
            for server in self.servers:
                await server.wait_closed()

        try:
            await asyncio.wait_for(settled(), self.config.timeout_graceful_shutdown)
        except asyncio.TimeoutError:
            log.error("cancelling %d running task(s): the graceful shutdown timed out", len(state.tasks))
            for task in state.tasks:
                task.cancel()

    @property
    def port(self) -> int:
        for server in self.servers:
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        return self.config.port


def _find_store(app: Any) -> TurnStore | None:
    # uvicorn wraps the app in its own middleware; walk down to the Starlette app.
    for _ in range(8):
        if isinstance(app, Starlette):
            return context_of(app).store
        app = getattr(app, "app", None)
    return None


class _RefusedHandshakeFilter(logging.Filter):
    """uvicorn's sans-I/O WebSocket protocol logs an error when an app refuses a
    handshake with an HTTP response (our 401/403), although that is the ASGI
    extension's intended use; drop that one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


def make_server(settings: Settings, backend: Backend | None = None, log_level: str = "warning") -> NBChatServer:
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RefusedHandshakeFilter) for f in error_log.filters):
        error_log.addFilter(_RefusedHandshakeFilter())
    install_token_redaction()
    app = create_app(settings, backend)
    admitted = admit_connections(settings.max_connections)
    limits = Limits.of(settings, max_connections=admitted)
    http_protocol, ws_protocol = direct_protocols(limits)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, lifespan="on",
        http=http_protocol, ws=ws_protocol, ws_max_size=settings.max_body_bytes + WS_FRAME_SLACK,
        ws_ping_interval=settings.ping_interval, ws_ping_timeout=settings.ping_interval,
        timeout_graceful_shutdown=5, access_log=False,
        backlog=listen_backlog(admitted, settings.max_connections),
    )
    return NBChatServer(config)


def serve_here(server: NBChatServer, sockets: list[Any] | None = None) -> None:
    """Run ``server`` in this process until it stops, the process having nothing else to do
    (``nbchat serve`` and each of its workers; not a kernel, whose heap is its user's), with the
    collector set for serving (:mod:`.heap`)."""
    settle_heap()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(sockets=sockets))


@dataclass
class ServerHandle:
    """A server running in a background thread."""

    url: str
    token: str
    server: NBChatServer
    thread: threading.Thread
    app: Starlette = field(repr=False)

    def stop(self, timeout: float = 15.0) -> None:
        self.server.request_exit()
        self.thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server_thread(settings: Settings | None = None, backend: Backend | None = None,
                        timeout: float = 120.0) -> ServerHandle:
    """Start a server in a daemon thread; return once it accepts connections
    (:class:`~nbchat.wire.errors.ServerStartError` when it does not).

    ``settings.port`` 0 picks a free port. The timeout covers loading the model."""
    settings = (settings or Settings(port=0)).with_token()
    try:
        server = make_server(settings, backend)
    except Exception as exc:  # a backend that cannot be built (no model file, no upstream model)
        raise ServerStartError(f"the nbchat server did not start: {exc}") from exc
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)
        finally:
            server.ready.set()

    thread = threading.Thread(target=run, name="nbchat-server", daemon=True)
    thread.start()
    if not server.ready.wait(timeout) or errors or not server.started:
        server.should_exit = True
        raise ServerStartError(f"the nbchat server did not start: {errors[0] if errors else 'timed out'}")
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    app = server.config.loaded_app
    while not isinstance(app, Starlette):
        app = app.app
    return ServerHandle(url=f"http://{host}:{server.port}", token=settings.token or "", server=server,
                        thread=thread, app=app)
