"""The wire format, as pure sans-I/O code: no sockets, no asyncio.

It owns what a turn answers with: the chunk/error/status records and their
three encodings (WebSocket frames, NDJSON lines, Server-Sent Events; the SSE
framing itself lives in :mod:`nbchat.wire.sse`). The server encodes events with
these functions and every client decodes with them, so the two cannot drift
apart. What a client asks, the turn request, is :mod:`nbchat.wire.requests`'.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import REQUEST_ERROR_CODES, ProtocolError, RequestError
from .events import STATUS_STRINGS, Chunk, End, ErrorInfo, Event, Status
from .sse import SSEMessage, encode_sse

# Compact separators keep the bytes per chunk small; ensure_ascii=False keeps
# Chinese and emoji as UTF-8 instead of six-byte escapes.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# What that encoder does with a str, without its type dispatch: the chunk templates' one JSON value.
_dumps_str = json.encoder.encode_basestring


def dumps(obj: object) -> str:
    """JSON as nbchat writes it everywhere: compact, UTF-8, no NaN."""
    return _dumps(obj)


# ---------------------------------------------------------------- records


def chunk_record(chunk: Chunk) -> dict[str, Any]:
    rec: dict[str, Any] = {"content": chunk.content, "seq": chunk.seq}
    if chunk.server_time is not None:
        rec["ts"] = round(chunk.server_time, 6)
    if chunk.trimmed:
        rec["trimmed"] = chunk.trimmed
    return rec


def encode_chunk_record(chunk: Chunk) -> str:
    """The chunk record as JSON text. Written from a template: the shape never
    varies, and the generic encoder's dict walk was a tenth of the server's
    time per chunk under load. Same text as ``dumps(chunk_record(chunk))``
    up to the float format of ``ts`` (fixed to microseconds here)."""
    if chunk.trimmed:  # once a turn at most: the generic encoder
        return dumps(chunk_record(chunk))
    return encode_record(chunk.content, chunk.seq, chunk.server_time)


def encode_record(content: str, seq: int, server_time: float | None) -> str:
    """The record of a chunk given by its fields (one without a trimmed-history notice): what
    :func:`encode_chunk_record` writes for ``Chunk(content, seq, server_time)``, with no Chunk made
    (a server's live chunks go out this way)."""
    if server_time is None:
        return f'{{"content":{_dumps_str(content)},"seq":{seq:d}}}'
    return f'{{"content":{_dumps_str(content)},"seq":{seq:d},"ts":{server_time:.6f}}}'


def record_to_event(rec: Any, received: float) -> Chunk | ErrorInfo:
    """A decoded chunk or error record back into an event (status lines are handled by the caller)."""
    if not isinstance(rec, dict):
        raise ProtocolError(f"expected a JSON object, got {type(rec).__name__}")
    if "error" in rec:
        err = rec["error"]
        if not isinstance(err, dict):
            raise ProtocolError("an error record must hold an object")
        return ErrorInfo(code=str(err.get("code", "error")), message=str(err.get("message", "")))
    content, seq, ts = rec.get("content"), rec.get("seq"), rec.get("ts")
    if not isinstance(content, str) or isinstance(seq, bool) or not isinstance(seq, int):
        raise ProtocolError(f"a chunk record needs a string 'content' and an integer 'seq': {rec!r}")
    server_time = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
    trimmed = rec.get("trimmed", 0)
    trimmed = trimmed if isinstance(trimmed, int) and not isinstance(trimmed, bool) and trimmed > 0 else 0
    return Chunk(content=content, seq=seq, server_time=server_time, received=received, trimmed=trimmed)


def parse_status(text: str) -> Status:
    if text not in STATUS_STRINGS:
        raise ProtocolError(f"unknown status {text!r}")
    return Status(text)


class EventAssembler:
    """Pairs an error record with the [ERROR] status that follows it and enforces
    the contract's order: chunks, then exactly one status, nothing after."""

    def __init__(self) -> None:
        self._error: ErrorInfo | None = None
        self.ended = False
        self._trimmed = 0  # from the first chunk, handed on to the End

    def feed(self, item: Chunk | ErrorInfo | Status, received: float) -> Event | None:
        if self.ended:
            raise ProtocolError("data arrived after the turn's status")
        if isinstance(item, ErrorInfo):
            self._error = item
            return None
        if isinstance(item, Status):
            self.ended = True
            err, self._error = self._error, None
            if err is not None and err.code in REQUEST_ERROR_CODES:
                raise RequestError(err.message, code=err.code)
            return End(status=item, error=err, received=received, trimmed=self._trimmed)
        self._trimmed = self._trimmed or item.trimmed
        return item


# ---------------------------------------------------------------- WebSocket


def encode_ws(event: Event) -> list[str]:
    """Text frames for an event: a chunk record, or [error record,] bare status string."""
    if isinstance(event, Chunk):
        return [encode_chunk_record(event)]
    frames = [] if event.error is None else [dumps({"error": event.error.to_dict()})]
    return [*frames, event.status.value]


def decode_ws(text: str, received: float) -> Chunk | ErrorInfo | Status:
    """One server-to-client WebSocket text frame."""
    if text in STATUS_STRINGS:
        return Status(text)
    try:
        rec = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"a WebSocket frame is neither JSON nor a status: {text[:80]!r}") from exc
    return record_to_event(rec, received)


# ---------------------------------------------------------------- NDJSON


def encode_ndjson(event: Event) -> bytes:
    """Lines for an event: a chunk record, or [error record,] {"status": ...}."""
    if isinstance(event, Chunk):
        return (encode_chunk_record(event) + "\n").encode()
    lines = [] if event.error is None else [dumps({"error": event.error.to_dict()})]
    lines.append(dumps({"status": event.status.value}))
    return ("\n".join(lines) + "\n").encode()


def encode_ndjson_record(content: str, seq: int, server_time: float | None) -> bytes:
    """:func:`encode_ndjson` of ``Chunk(content, seq, server_time)``, with no Chunk made."""
    return (encode_record(content, seq, server_time) + "\n").encode()


class LineDecoder:
    """Splits a byte stream into lines on LF (and CR LF) *bytes*, decoding UTF-8 per whole
    line, so a multi-byte character split across network chunks is never corrupted."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        return [_utf8(bytes(line.removesuffix(b"\r"))) for line in lines]

    def flush(self) -> list[str]:
        rest, self._buf = bytes(self._buf), bytearray()
        return [_utf8(rest)] if rest.strip() else []


def _utf8(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the stream is not valid UTF-8") from exc


def decode_ndjson_line(line: str, received: float) -> Chunk | ErrorInfo | Status | None:
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"an NDJSON line is not JSON: {line[:80]!r}") from exc
    if isinstance(rec, dict) and "status" in rec:
        return parse_status(str(rec["status"]))
    return record_to_event(rec, received)


# ---------------------------------------------------------------- SSE


def encode_sse_event(event: Event) -> bytes:
    """A chunk is ``id: <seq>`` + ``data: <record>``; the status is ``id: <status>`` +
    ``data: <status>``. An error record goes as a data-only message (no id, so a
    browser's Last-Event-ID stays at the last seq) right before the status."""
    if isinstance(event, Chunk):
        return _sse_chunk(event.seq, encode_chunk_record(event))
    out = b"" if event.error is None else encode_sse(SSEMessage(data=dumps({"error": event.error.to_dict()})))
    return out + encode_sse(SSEMessage(data=event.status.value, id=event.status.value))


def encode_sse_record(content: str, seq: int, server_time: float | None) -> bytes:
    """:func:`encode_sse_event` of ``Chunk(content, seq, server_time)``, with no Chunk made."""
    return _sse_chunk(seq, encode_record(content, seq, server_time))


def _sse_chunk(seq: int, record: str) -> bytes:
    # A template, as for the record itself: the id is digits and the record is one line of
    # JSON (it escapes every CR and LF), so the generic framing's line splitting finds
    # nothing to split. Same bytes as ``encode_sse(SSEMessage(data=record, id=str(seq)))``.
    return f"id: {seq:d}\ndata: {record}\n\n".encode()


def decode_sse_message(msg: SSEMessage, received: float) -> Chunk | ErrorInfo | Status | None:
    """An SSE message back into an item; messages of other event types are ignored."""
    if msg.event not in ("", "message"):
        return None
    if msg.id is not None and msg.id in STATUS_STRINGS:
        return Status(msg.id)
    if not msg.data:
        return None
    try:
        rec = json.loads(msg.data)
    except ValueError as exc:
        raise ProtocolError(f"an SSE data field is not JSON: {msg.data[:80]!r}") from exc
    return record_to_event(rec, received)


