"""The wire format, as pure sans-I/O code: no sockets, no asyncio.

It owns the turn-request JSON, the chunk/error/status records, and their three
encodings (WebSocket frames, NDJSON lines, Server-Sent Events; the SSE framing
itself lives in :mod:`nbchat.wire.sse`). The server encodes events with these
functions and every client decodes with them, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import REQUEST_ERROR_CODES, ProtocolError, RequestError
from .events import STATUS_STRINGS, Chunk, End, ErrorInfo, Event, Message, Status, TurnRequest
from .sse import SSEMessage, encode_sse

#: requests are flat; this leaves room for OpenAI content parts and tool fields
MAX_JSON_DEPTH = 32
#: a seq is a count of pieces: 15 digits is far past any turn, well short of costly ints
MAX_POSITION = 10**15 - 1
#: the largest maxTokens / max_tokens: a C int, which is what a model's sampler takes
MAX_TOKENS = 2**31 - 1
#: a number past this magnitude is out of every range the wire has; ints beyond it are read as it,
#: so no check converts a 400-digit integer to a float (OverflowError) and every one stays JSON
NUMBER_BOUND = 1e300
#: stop sequences a request may name, and their length (OpenAI's count; the length bounds the hold-back)
MAX_STOPS = 4
MAX_STOP_CHARS = 256
_SURROGATE = re.compile("[\ud800-\udfff]")
ROLES = ("system", "user", "assistant")

# Compact separators keep the bytes per chunk small; ensure_ascii=False keeps
# Chinese and emoji as UTF-8 instead of six-byte escapes.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# What that encoder does with a str, without its type dispatch: the chunk templates' one JSON value.
_dumps_str = json.encoder.encode_basestring


def dumps(obj: object) -> str:
    """JSON as nbchat writes it everywhere: compact, UTF-8, no NaN."""
    return _dumps(obj)


# ---------------------------------------------------------------- requests


def _message(obj: object, where: str) -> Message:
    if not isinstance(obj, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'")
    role, content = obj.get("role"), obj.get("content")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise RequestError(f"{where}.content must be a string")
    return Message(role=role, content=content)


def bounded_number(value: object) -> float | None:
    """A JSON number as a float within ±:data:`NUMBER_BOUND`, or None for anything else.

    JSON numbers have no size limit: ``1`` followed by 400 zeros is an int that ``float()`` and
    ``math.isfinite()`` refuse with OverflowError, and ``1e400`` decodes to infinity. Both are
    far out of every range, so they become the bound, whose sign they keep: a range check then
    refuses them as it refuses 3 or -1, and the value still encodes as JSON."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(max(-NUMBER_BOUND, min(NUMBER_BOUND, value)))  # int comparisons never overflow
    if isinstance(value, float) and not math.isnan(value):
        return max(-NUMBER_BOUND, min(NUMBER_BOUND, value))
    return None


def _number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    number = bounded_number(value)
    if number is None:
        raise RequestError(f"'{key}' must be a number")
    return number


def parse_max_tokens(value: object, key: str) -> int | None:
    """A token limit: None, or an integer from 1 to :data:`MAX_TOKENS`; RequestError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise RequestError(f"'{key}' must be an integer from 1 to {MAX_TOKENS}")
    return value


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"'{key}' must be a string")
    return value


def parse_json_text(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode one JSON document a client sent: the only way requests are parsed.

    Raises RequestError for text that is not JSON (``invalid_json``), nested
    deeper than ``max_depth`` (the C decoder recurses: a deep enough document
    raises RecursionError, not ValueError) or holding a string that is not
    Unicode text (a lone surrogate such as ``"\\ud800"`` is valid JSON but can
    never be encoded back to UTF-8: caught here, once, rather than when an
    answer is half streamed)."""
    try:
        obj = _DECODER.decode(text)
    except RecursionError as exc:
        raise RequestError(f"the JSON is nested deeper than {max_depth} levels", code="invalid_json") from exc
    except ValueError as exc:
        raise RequestError(f"the request is not valid JSON: {exc}", code="invalid_json") from exc
    _check_tree(obj, max_depth)
    return obj


def _not_json(name: str) -> None:
    # Python's decoder reads NaN, Infinity and -Infinity, which JSON (RFC 8259) does not have.
    raise ValueError(f"{name} is not a JSON value")


#: made once: ``json.loads`` with an argument builds a decoder per call
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def _check_tree(obj: Any, max_depth: int) -> None:
    # Iterative, so the check itself cannot overflow the stack.
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise RequestError(f"the JSON is nested deeper than {max_depth} levels", code="invalid_json")
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key)
                stack.append((value, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node)


def _check_text(text: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise RequestError("a string holds a lone surrogate (an escape such as \\ud800 that is not a character): "
                           "send text as valid Unicode", code="invalid_request")


def parse_json_body(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a request body (its size is checked while it is read); raise RequestError
    (invalid_utf8, invalid_json, invalid_request)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError("the request body is not valid UTF-8", code="invalid_utf8") from exc
    return parse_json_text(text, max_depth=max_depth)


def parse_position(value: object) -> int:
    """A seq a client says it has seen (``Last-Event-ID``, ``lastEventId``, ``after``,
    a WebSocket resume): a non-negative integer of at most 15 ASCII digits, or
    RequestError. ``str.isdigit`` alone admits superscripts and other digits
    ``int`` refuses, and unbounded digit strings cost quadratic time to convert."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_POSITION:
            return value
    elif isinstance(value, str) and value == "":
        return 0
    elif isinstance(value, str) and 0 < len(value) <= 15 and value.isascii() and value.isdigit():
        return int(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise RequestError(f"a position must be a seq number from 0 to {MAX_POSITION}, not {shown}")


def parse_turn_request(obj: Any) -> TurnRequest:
    """Validate a decoded turn request. Temperature is range-checked by the turn, not here:
    out of 0..2 is a status (TEMPERATURE_THRESHOLD), not a rejected request; absent (or null)
    it is None, and the backend samples as suits its model."""
    if not isinstance(obj, dict):
        raise RequestError("a turn request must be a JSON object")
    if "userMessage" not in obj:
        raise RequestError("'userMessage' is required: {\"userMessage\": {\"role\": \"user\", \"content\": \"...\"}}")
    user = _message(obj["userMessage"], "userMessage")
    conv_raw = obj.get("conversation")
    conv_raw = [] if conv_raw is None else conv_raw
    if not isinstance(conv_raw, list):
        raise RequestError("'conversation' must be a list of messages")
    conversation = tuple(_message(m, f"conversation[{i}]") for i, m in enumerate(conv_raw))
    max_tokens = parse_max_tokens(obj.get("maxTokens"), "maxTokens")
    return TurnRequest(
        user_message=user,
        conversation=conversation,
        temperature=_number(obj, "temperature"),
        max_tokens=max_tokens,
        model=_optional_str(obj, "model"),
        uid=_optional_str(obj, "uid"),
        stop=parse_stop(obj.get("stop")),
    )


def parse_stop(value: object) -> tuple[str, ...]:
    """Stop sequences: absent, or a list of up to :data:`MAX_STOPS` non-empty strings."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_STOPS or \
            not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in value):
        raise RequestError(f"'stop' must be a list of up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters")
    return tuple(value)


def encode_turn_request(req: TurnRequest) -> dict[str, Any]:
    """The JSON object for a request, as clients send it."""
    out: dict[str, Any] = {
        "userMessage": req.user_message.to_dict(),
        "conversation": [m.to_dict() for m in req.conversation],
    }
    if req.temperature is not None:  # unset: the field is left out, so the server can tell
        out["temperature"] = req.temperature
    if req.max_tokens is not None:
        out["maxTokens"] = req.max_tokens
    if req.model is not None:
        out["model"] = req.model
    if req.uid is not None:
        out["uid"] = req.uid
    if req.stop:
        out["stop"] = list(req.stop)
    return out


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error shape of every 4xx answer and every error record."""
    return {"error": {"code": code, "message": message}}


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


