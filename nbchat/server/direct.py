"""Direct writes: a live chunk's bytes from the app straight to its connection's transport.

An ASGI ``send`` of one body message or one WebSocket text message is a coroutine that checks the
connection's state, builds its framing through general code (uvicorn's response cycle; websockets'
``Frame`` object, its checks and its serializer) and writes. At 10,000 chunks a second those steps
cost as much CPU as the socket write itself. The protocols made here offer the app, in the scope, a
plain function for the common case: a chunk of a response already under way, or a text message on
an open WebSocket whose client keeps up (framed by hand when uncompressed, by websockets when
compressed). It writes the same bytes the general path would and says True; in every other case
(the client is behind, the connection is closing, a HEAD request, a fixed-length body) it writes
nothing and says False, and the app sends as before. The bytes are tested against uvicorn's and
websockets' own: the WebSocket frame is a pure function below, the body chunk's framing one line
of the body writer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from starlette.types import Scope
from websockets.protocol import OPEN

from .limits import GuardedHttpProtocol, GuardedWebSocketProtocol, Limits

#: scope key of an HTTP response's direct writer: ``write(body) -> bool`` (see :func:`body_writer`)
DIRECT_BODY = "nbchat.write_body"
#: scope key of a WebSocket's direct writer: ``write(text) -> bool``
DIRECT_TEXT = "nbchat.write_text"

WriteBody = Callable[[bytes], bool]
WriteText = Callable[[str], bool]

_FIN_TEXT = 0x81  # FIN set, no RSV bits (no extension), opcode 1: a whole text message in one frame
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed WebSocket text frame carrying ``payload`` (RFC 6455 §5.2): what
    websockets' ``Frame(OP_TEXT, payload).serialize(mask=False)`` makes on the server side."""
    length = len(payload)
    if length < 126:
        return bytes((_FIN_TEXT, length)) + payload
    if length < 65536:
        return _HEAD_16.pack(_FIN_TEXT, 126, length) + payload
    return _HEAD_64.pack(_FIN_TEXT, 127, length) + payload


def body_writer(scope: Scope) -> WriteBody | None:
    """The direct writer of an HTTP response's body chunks, when its server offers one."""
    return scope.get(DIRECT_BODY)


def text_writer(scope: Scope) -> WriteText | None:
    """The direct writer of a WebSocket's text messages, when its server offers one."""
    return scope.get(DIRECT_TEXT)


def cycle_writer(cycle: Any) -> WriteBody:
    """The writer of one request's response (uvicorn's ``RequestResponseCycle``: its state decides)."""
    flow, transport = cycle.flow, cycle.transport

    def write(body: bytes) -> bool:
        # uvicorn's send would wait for a paused transport, say nothing to a client that left, and
        # frame the body otherwise; only the last case is done here
        if (flow.write_paused or cycle.disconnected or not cycle.response_started or cycle.response_complete
                or not cycle.chunked_encoding or not body):
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(body), body))  # one chunk of a chunked body (RFC 9112 §7.1)
        return True

    return write


#: what the writers read of uvicorn's response cycle and WebSocket protocol: their private state, so a
#: uvicorn without any of it gets no direct writer (the general send runs) rather than a broken one
CYCLE_STATE = ("flow", "transport", "disconnected", "response_started", "response_complete", "chunked_encoding")
SOCKET_STATE = ("conn", "writable", "disconnected", "close_sent", "handshake_complete", "initial_response",
                 "transport")


def _has_state(obj: object, names: tuple[str, ...]) -> bool:
    return all(hasattr(obj, name) for name in names)


class DirectHttpProtocol(GuardedHttpProtocol):
    """The guarded httptools protocol, offering each response a direct writer of its body chunks."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if (cycle is not None and cycle.scope is self.scope and not self.refused  # not on an upgrade
                and _has_state(cycle, CYCLE_STATE) and hasattr(cycle.flow, "write_paused")):
            self.scope[DIRECT_BODY] = cycle_writer(cycle)  # type: ignore[literal-required]


class DirectWebSocketProtocol(GuardedWebSocketProtocol):
    """The guarded sans-I/O WebSocket protocol, offering the app a direct writer of text messages."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None and scope.get("type") == "websocket" and _has_state(self, SOCKET_STATE):
            scope[DIRECT_TEXT] = self.write_text  # read by the app's task, which has not run yet

    def write_text(self, text: str) -> bool:
        """Write one text message at once, as ``send`` would; False (nothing written) where ``send``
        would wait or fail."""
        conn = self.conn
        if (not self.writable.is_set() or self.disconnected or self.close_sent or not self.handshake_complete
                or self.initial_response is not None or conn.state is not OPEN or conn.expect_continuation_frame):
            return False
        if conn.extensions or conn.debug:  # compressed (a browser's socket), or logged: websockets frames it
            conn.send_text(text.encode())
            self.transport.write(b"".join(conn.data_to_send()))
        else:
            self.transport.write(text_frame(text.encode()))
        return True


def direct_protocols(limits: Limits) -> tuple[type[DirectHttpProtocol], type[DirectWebSocketProtocol]]:
    """Protocol classes for uvicorn's ``http=`` and ``ws=`` options, bound to ``limits``, with the
    direct writers (uvicorn builds protocols from a class, so the limits ride on a subclass)."""
    http = type("NBChatHttpProtocol", (DirectHttpProtocol,), {"limits": limits})
    ws = type("NBChatWebSocketProtocol", (DirectWebSocketProtocol,), {"limits": limits})
    return http, ws
