"""Limits at the connection level, where uvicorn has no setting for them.

uvicorn bounds neither the time a client may take to send its request head nor
its size (httptools joins a header value piece by piece: quadratic CPU in its
length), nor the connections held at once, nor the pongs it queues for a
client that pings and never reads. These thin subclasses of its protocols add
exactly that and nothing else:

- **header deadline**: a request head not complete ``header_timeout`` seconds
  after the connection opened (or, on keep-alive, after the next request's
  first byte) is answered 408 and closed;
- **header bytes**: a head over ``max_header_bytes`` is answered 431 and
  closed before the parser sees more than that;
- **connections**: at ``max_connections`` a new connection closes the oldest
  one still sending its head (the cheapest to lose, and what a slow-header
  flood is made of), so ``/health`` and real clients keep being answered; with
  none to close, the new one gets 503;
- **queued bytes**: a WebSocket client whose unread backlog passes
  ``max_queued_bytes`` while it keeps sending pings is dropped. (Frames the app
  sends already wait for the client to read: uvicorn's flow control.)
- **invalid text**: a WebSocket text message that is not UTF-8 is closed with
  1007, as uvicorn does, without the traceback uvicorn logs for each one.

They also keep the token out of the server log, and give the process file
descriptors for the connections it admits.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import CloseCode

from .config import Settings

log = logging.getLogger("nbchat.server.limits")


@dataclass(frozen=True)
class Limits:
    """The connection-level part of :class:`Settings` (its defaults are Settings')."""

    header_timeout: float = Settings.header_timeout
    max_header_bytes: int = Settings.max_header_bytes
    max_connections: int = Settings.max_connections
    max_queued_bytes: int = Settings.max_queued_bytes

    @classmethod
    def of(cls, settings: Settings, max_connections: int | None = None) -> Limits:
        """The limits ``settings`` set; ``max_connections`` overrides its value (what the process admits)."""
        return cls(header_timeout=settings.header_timeout, max_header_bytes=settings.max_header_bytes,
                   max_connections=settings.max_connections if max_connections is None else max_connections,
                   max_queued_bytes=settings.max_queued_bytes)


def _response(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size bound and a connection cap."""

    limits: ClassVar[Limits] = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: loop time the current request head began; None while a body or response is under way
        self.head_started: float | None = None
        self._head_bytes = 0
        self._in_body = False
        self._heads = 0  # request heads parsed on this connection
        self._deadline: asyncio.TimerHandle | None = None
        #: answered and closed by :meth:`refuse`; nothing more of it is parsed
        self.refused = False

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        self._start_head()
        if full and not self._evict_slowest_head():
            self.refuse(503, "Service Unavailable", "the server holds as many connections as it admits; retry")

    def _evict_slowest_head(self) -> bool:
        heads = [c for c in self.connections if isinstance(c, GuardedHttpProtocol) and c is not self
                 and c.head_started is not None and not c.refused]
        if not heads:
            return False
        min(heads, key=lambda c: c.head_started or 0.0).refuse(
            408, "Request Timeout", "the request head took too long while the server was full")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` and close; nothing more of this connection is parsed."""
        self.refused = True
        self.head_started = None
        self._stop_deadline()
        if not self.transport.is_closing():
            self.transport.write(_response(status, reason, message))
            self.transport.close()

    # ------------------------------------------------------------ head deadline

    def _start_head(self) -> None:
        if self._deadline is None:
            self.head_started = self.loop.time()
            self._head_bytes = 0
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self.head_started is not None:
            self.refuse(408, "Request Timeout", f"the request head took over {self.limits.header_timeout:g} s")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head()  # keep-alive: the next request's head has its own deadline

    def on_headers_complete(self) -> None:
        self._stop_deadline()
        self.head_started = None
        self._in_body = True
        self._heads += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._head_bytes = 0
        super().on_message_complete()

    # ------------------------------------------------------------ head size

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self._in_body:
            super().data_received(data)
            return
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what the bound allows: the head may end inside it (then the
        # rest is body or the next request); if it does not, the head is too large.
        self._head_bytes, heads = self.limits.max_header_bytes, self._heads
        super().data_received(data[:room])
        if self.refused or self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self._heads == heads:
            self.refuse(431, "Request Header Fields Too Large",
                        f"the request head is over {self.limits.max_header_bytes} bytes")
            return
        self.data_received(data[room:])


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol that drops a client piling up unread pongs."""

    limits: ClassVar[Limits] = Limits()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        super().data_received(data)

    def handle_ping(self) -> None:
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.limits.max_queued_bytes:
            # It sends pings and reads none of the pongs: every pong would stay in
            # our memory. Drop it (a graceful close would wait on the same backlog).
            log.info("dropping a WebSocket client with %d unread bytes queued",
                     self.transport.get_write_buffer_size())
            self.transport.abort()
            return
        super().handle_ping()

    def send_receive_event_to_app(self) -> None:
        # uvicorn closes a text message that is not UTF-8 with 1007, as RFC 6455 says, but logs a full
        # traceback for each: one client could fill the log. Same close, one debug line.
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                log.debug("closing a WebSocket (1007): a text message is not UTF-8")
                self.conn.send_close(CloseCode.INVALID_DATA)
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()


def guarded_protocols(limits: Limits) -> tuple[type[GuardedHttpProtocol], type[GuardedWebSocketProtocol]]:
    """Protocol classes for uvicorn's ``http=`` and ``ws=`` options, bound to ``limits``
    (uvicorn builds protocols from a class, so the limits ride on a subclass)."""
    http = type("NBChatHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})
    ws = type("NBChatWebSocketProtocol", (GuardedWebSocketProtocol,), {"limits": limits})
    return http, ws


# ---------------------------------------------------------------- log and descriptors

_TOKEN_IN_QUERY = re.compile(r"([?&;]token=)[^&;\s\"']*", re.IGNORECASE)


class RedactTokenFilter(logging.Filter):
    """Replaces ``token=...`` in a log line's query strings by ``token=***``: browsers can pass
    the token only in the URL, and uvicorn logs the URL of every WebSocket handshake."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = _TOKEN_IN_QUERY.sub(r"\1***", message), None
        return True


def install_token_redaction() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokenFilter) for f in logger.filters):
            logger.addFilter(RedactTokenFilter())


#: uvicorn's listen backlog: how many connections the kernel queues for accept(), and how many
#: asyncio accepts in one go
BACKLOG = 2048
#: the backlog when the descriptor limit is what bounds connections: asyncio accepts a whole
#: backlog's worth of queued connections before any is handed to the protocol that would evict
#: others, so a batch must fit in the spare descriptors (a server stopped for a moment under a
#: burst otherwise wakes up to EMFILE and stops accepting, /health included)
SHORT_BACKLOG = 16


def listen_backlog(admitted: int, wanted: int) -> int:
    """The listen backlog for a server that admits ``admitted`` of ``wanted`` connections."""
    return BACKLOG if admitted >= wanted else SHORT_BACKLOG


def admit_connections(wanted: int, spare: int = 64) -> int:
    """Raise the soft file-descriptor limit so ``wanted`` connections fit (up to the hard
    limit), and return how many do. Beyond it, accept() fails in a loop of logged errors."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + spare
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    fits = max(16, soft - spare)
    log.warning("the file-descriptor limit (%d) admits %d connections, not %d", soft, fits, wanted)
    return fits
