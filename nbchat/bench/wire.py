"""The load generator's clients: each transport over a bare asyncio socket.

With 500 streams open, httpx spends about 0.6 ms of client CPU per chunk
(measured here: 17.7 s of client CPU for 30,000 chunks against 2.8 s in the
server), so a benchmark read through :mod:`nbchat.clients` measures httpx,
not the transport. These clients keep only what a transport needs: one
keep-alive HTTP/1.1 connection (or one WebSocket) written by hand, the
chunked-encoding or WebSocket framing undone here or by websockets' sans-I/O
protocol, and then the *same* item decoders nbchat's clients use. Receive
times are taken when the bytes leave the socket, before decoding, as
nbchat's clients do; the body bytes read are counted as they arrive.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from ..wire.contract import NDJSON_PATH, OPENAI_COMPLETIONS_PATH, SSE_PATH, WEBSOCKET_PATH
from ..wire.decoders import ItemDecoder, NDJSONItemDecoder, SSEItemDecoder
from ..wire.events import Chunk, ErrorInfo, Item, Message, Status, TurnRequest
from ..wire.openai import OpenAIItemDecoder, completion_body
from ..wire.protocol import decode_ws, dumps
from ..wire.requests import encode_turn_request
from .stats import Trace

READ_SIZE = 65536
HTTP_PATHS = {"sse": SSE_PATH, "stream": NDJSON_PATH, "openai": OPENAI_COMPLETIONS_PATH}


class WireError(RuntimeError):
    """The server answered something a benchmark stream cannot use."""


class ChunkedDecoder:
    """Sans-I/O HTTP/1.1 chunked transfer decoding: framed bytes in any split -> payload bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self._state = "size"
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while not self.done:
            if self._state == "size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(self._buf[:end]).split(b";")[0], 16)
                del self._buf[: end + 2]
                self.done = size == 0
                self._left, self._state = size, "data"
            elif self._state == "data":
                take = bytes(self._buf[: self._left])
                out += take
                del self._buf[: len(take)]
                self._left -= len(take)
                if self._left:
                    break
                self._state = "crlf"
            else:  # the CRLF after a chunk's data
                if len(self._buf) < 2:
                    break
                del self._buf[:2]
                self._state = "size"
        return bytes(out)


DECODERS: dict[str, Callable[[], ItemDecoder]] = {"sse": SSEItemDecoder, "stream": NDJSONItemDecoder,
                                                 "openai": OpenAIItemDecoder}


def _request(message: str, max_tokens: int | None) -> TurnRequest:
    return TurnRequest(user_message=Message("user", message), temperature=0.0, max_tokens=max_tokens)


def _add(trace: Trace, items: list[Item]) -> bool:
    """Record chunks; True once the status has arrived."""
    for item in items:
        if isinstance(item, Chunk):
            trace.add(item.server_time if item.server_time is not None else math.nan, item.received)
        elif isinstance(item, ErrorInfo):  # comes right before [ERROR]: kept so the report can say what failed
            trace.status = f"{item.code}: {item.message}"
        elif isinstance(item, Status):
            trace.status = item.value if not trace.status else f"{item.value} {trace.status}"
            return True
    return False


class WireClient:
    """One connection to an nbchat server, streaming turns one after another over ``transport``."""

    def __init__(self, host: str, port: int, token: str, transport: str, timeout: float = 120.0) -> None:
        if transport not in (*HTTP_PATHS, "ws"):
            raise ValueError(f"unknown transport {transport!r}")
        self.host, self.port, self.token, self.transport = host, port, token, transport
        self.timeout = timeout  # for a whole turn: a stalled server must not hang the benchmark
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ws: ClientProtocol | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            if self.transport == "ws":
                await self._handshake(self._reader, self._writer)
        return self._reader, self._writer

    async def turn(self, message: str, max_tokens: int | None = None) -> Trace:
        """Stream one turn; the trace's ``sent`` is taken just before the request is written."""
        return await asyncio.wait_for(self._turn(message, max_tokens), self.timeout)

    async def _turn(self, message: str, max_tokens: int | None) -> Trace:
        reader, writer = await self._open()
        trace = Trace(sent=time.time())
        if self.transport == "ws":
            await self._ws_turn(reader, writer, trace, message, max_tokens)
        else:
            await self._http_turn(reader, writer, trace, message, max_tokens)
        return trace

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def __aenter__(self) -> WireClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------ HTTP

    async def _http_turn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trace: Trace,
                         message: str, max_tokens: int | None) -> None:
        req = _request(message, max_tokens)
        body = dumps(completion_body(req) if self.transport == "openai" else encode_turn_request(req)).encode()
        head = (f"POST {HTTP_PATHS[self.transport]} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        writer.write(head.encode() + body)
        status_line, _, headers = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        if b" 200 " not in status_line or b"chunked" not in headers.lower():
            raise WireError(f"{self.transport}: unexpected answer {status_line.decode(errors='replace')}")
        chunked = ChunkedDecoder()
        decoder = DECODERS[self.transport]()
        while not chunked.done:
            data = await reader.read(READ_SIZE)
            received = time.time()
            if not data:
                raise WireError(f"{self.transport}: the server closed the stream early")
            trace.wire_bytes += len(data)
            _add(trace, decoder.feed(chunked.feed(data), received))
        if not trace.status:  # an OpenAI stream's status may only be known once the body has ended
            _add(trace, decoder.flush(time.time()))

    # ------------------------------------------------------------ WebSocket

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = WEBSOCKET_PATH.format(uid=uuid.uuid4().hex)
        self._ws = ClientProtocol(parse_uri(f"ws://{self.host}:{self.port}{path}"))
        request = self._ws.connect()
        request.headers["Authorization"] = f"Bearer {self.token}"
        self._ws.send_request(request)
        writer.write(b"".join(self._ws.data_to_send()))
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                raise WireError("ws: the server closed the socket during the handshake")
            self._ws.receive_data(data)
            for event in self._ws.events_received():
                if isinstance(event, Response):
                    if event.status_code != 101:
                        raise WireError(f"ws: handshake refused with {event.status_code}")
                    return

    async def _ws_turn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trace: Trace,
                       message: str, max_tokens: int | None) -> None:
        ws = self._ws
        assert ws is not None
        ws.send_text(dumps(encode_turn_request(_request(message, max_tokens))).encode())
        writer.write(b"".join(ws.data_to_send()))
        done = False
        while not done:
            data = await reader.read(READ_SIZE)
            received = time.time()
            if not data:
                raise WireError("ws: the server closed the socket mid-turn")
            trace.wire_bytes += len(data)
            ws.receive_data(data)
            frames = [e for e in ws.events_received() if isinstance(e, Frame) and e.opcode is Opcode.TEXT]
            done = _add(trace, [decode_ws(bytes(f.data).decode(), received) for f in frames])
            reply = ws.data_to_send()  # pongs to the server's pings
            if reply:
                writer.write(b"".join(reply))


def parse_host_port(url: str) -> tuple[str, int]:
    """``http://127.0.0.1:8765`` -> ("127.0.0.1", 8765)."""
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)
