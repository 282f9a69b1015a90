"""One stream, measured: a turn read into a :class:`~.stats.Trace` by a :class:`Streamer`.

Two kinds of streamer: the lean socket clients of :mod:`.wire` (the default:
they count the bytes read), and :mod:`nbchat.clients` (what a Python caller
gets, httpx and all). For the latter, bytes on the wire are computed from the very encoders the server writes with
(:mod:`nbchat.wire.protocol`, :mod:`nbchat.wire.openai`) applied to the chunks
received, plus each transport's framing for a record sent on its own: the
WebSocket frame header, or HTTP/1.1 chunked-encoding's size line and CRLF.
TCP/IP headers are left out (the same for every transport).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from ..clients import acollect, aconnect
from ..wire.contract import transport_name
from ..wire.events import Chunk
from ..wire.openai import CompletionEncoder
from ..wire.protocol import dumps, encode_ndjson, encode_sse_event, encode_ws
from ..wire.sse import SSEMessage, encode_sse
from .stats import Trace
from .wire import WireClient, parse_host_port

PIECE = "abcd"  # the echo backend's pieces are four characters


def echo_message(chunks: int) -> str:
    """A user message the echo backend answers in exactly ``chunks`` pieces."""
    return PIECE * chunks


def _chunked(payload: int) -> int:
    # HTTP/1.1 chunked transfer encoding: "<hex size>\r\n" + payload + "\r\n"
    return payload + len(f"{payload:x}") + 4


def _ws_frame(payload: int) -> int:
    # server-to-client frames are unmasked: 2 header bytes, 4 with a 16-bit length
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)


_OPENAI = CompletionEncoder("x" * 16, "default")  # a turn id is 16 characters; the client names model "default"


def _openai_bytes(chunk: Chunk) -> int:
    return len(encode_sse(SSEMessage(data=dumps(_OPENAI.content_chunk(chunk)))))


WIRE_BYTES: dict[str, Callable[[Chunk], int]] = {
    "ws": lambda c: _ws_frame(len(encode_ws(c)[0].encode())),
    "sse": lambda c: _chunked(len(encode_sse_event(c))),
    "stream": lambda c: _chunked(len(encode_ndjson(c))),
    "openai": lambda c: _chunked(_openai_bytes(c)),
}


def wire_bytes(transport: str, chunk: Chunk) -> int:
    """Bytes one chunk takes on the wire over ``transport``, framing included."""
    return WIRE_BYTES[transport](chunk)


class Streamer(Protocol):
    """A connection that streams turns one after another into traces."""

    async def turn(self, message: str, max_tokens: int | None = None) -> Trace: ...

    async def __aenter__(self) -> Streamer: ...

    async def __aexit__(self, *exc: object) -> None: ...


class ClientStreamer:
    """A :class:`Streamer` over :mod:`nbchat.clients` (bytes computed with the encoders)."""

    def __init__(self, url: str, token: str, transport: str, timeout: float = 60.0) -> None:
        self.client = aconnect(url, token=token, transport=transport_name(transport), timeout=timeout)

    async def turn(self, message: str, max_tokens: int | None = None) -> Trace:
        trace = Trace(sent=time.time())

        def record(chunk: Chunk) -> None:
            trace.add(chunk.server_time if chunk.server_time is not None else math.nan, chunk.received)
            trace.wire_bytes += wire_bytes(self.client.transport, chunk)

        async with self.client.stream(message, temperature=0.0, max_tokens=max_tokens) as turn:
            trace.status = (await acollect(turn, record)).status.value
        return trace

    async def __aenter__(self) -> ClientStreamer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def open_streamer(url: str, token: str, transport: str, client: str = "wire") -> Streamer:
    """``client="wire"``: the lean socket clients of :mod:`.wire`; ``"nbchat"``: :mod:`nbchat.clients`."""
    if client == "nbchat":
        return ClientStreamer(url, token, transport)
    if client != "wire":
        raise ValueError(f"client must be 'wire' or 'nbchat', not {client!r}")
    host, port = parse_host_port(url)
    return WireClient(host, port, token, transport)
