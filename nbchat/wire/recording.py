"""The recording format: one turn as JSON Lines, written by ``nbchat serve --record``
and read back by the ``replay`` backend.

A recording is one file per turn::

    {"type": "turn", "format": "nbchat-recording/2", "id": ..., "request": {...}, "provenance": {...}}
    [0.2031, "Hel"]
    ...
    {"type": "end", "t": 1.52, "status": "[DONE]", "error": null, "chunks": 42}

A chunk is ``[t, content]``: ``t`` is its server time in seconds since the turn
began generating (a monotonic clock, so the gaps between chunks are exact even
when the wall clock is adjusted), to 0.1 ms; its seq is its place in the file.
That is about 15 bytes besides the text, where the first format's object
(``nbchat-recording/1``: ``{"type": "chunk", "seq", "t", "ts", "content"}``,
still read) took about 70: a model's pieces are a few characters each, so the
record was most of the file. The wall-clock time of a chunk is the header's
``provenance.started`` plus ``t``.

Pure code: encoding a line and parsing a file's lines, no I/O. A line that is
not what the format says is refused when the file is read, naming the line,
never when a replayed turn reaches it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError
from .events import STATUS_STRINGS, Chunk, End, Status, TurnRequest
from .protocol import dumps

FORMAT = "nbchat-recording/2"
#: every format this module reads
FORMATS = ("nbchat-recording/1", FORMAT)


def encode_request(request: TurnRequest) -> dict[str, Any]:
    """The request as the contract's JSON (``maxTokens``), with the conversation spelled out."""
    out: dict[str, Any] = {"messages": [m.to_dict() for m in request.messages], "temperature": request.temperature,
           "maxTokens": request.max_tokens, "model": request.model}
    if request.stop:
        out["stop"] = list(request.stop)
    return out


def header_line(turn_id: str, request: TurnRequest, provenance: dict[str, Any]) -> str:
    return dumps({"type": "turn", "format": FORMAT, "id": turn_id, "request": encode_request(request),
                  "provenance": provenance}) + "\n"


def chunk_line(chunk: Chunk, t: float) -> str:
    return dumps([round(t, 4), chunk.content]) + "\n"


def end_line(end: End, t: float, chunks: int) -> str:
    error = end.error.to_dict() if end.error is not None else None
    return dumps({"type": "end", "t": round(t, 6), "status": end.status.value, "error": error,
                  "chunks": chunks}) + "\n"


@dataclass(frozen=True)
class RecordedChunk:
    t: float
    content: str


@dataclass
class Recording:
    """One recorded turn: what was asked, the chunks with their times, how it ended."""

    turn_id: str
    request: dict[str, Any]
    provenance: dict[str, Any]
    chunks: list[RecordedChunk] = field(default_factory=list)
    #: None when the recording stops before its end line (the server stopped mid-turn)
    status: Status | None = None
    error: dict[str, str] | None = None

    @property
    def text(self) -> str:
        return "".join(c.content for c in self.chunks)

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive chunks."""
        return [b.t - a.t for a, b in itertools.pairwise(self.chunks)]


def parse_recording(lines: Iterable[str | bytes]) -> Recording:
    """Read a recording's lines (text, or bytes as read from a file); raises :class:`ProtocolError`
    naming the line that is not UTF-8, not JSON (or nested too deeply to decode) or not of the format."""
    recording: Recording | None = None
    for number, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            if not text.strip():
                continue
            record = _json(text)
            if recording is None:
                recording = _header(record)
            else:
                _add(recording, record)
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except ProtocolError as exc:
            raise ProtocolError(f"line {number}: {exc}") from exc
    if recording is None:
        raise ProtocolError("the recording is empty")
    return recording


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError as exc:  # the C decoder recurses; a deep enough line would end the process's stack
        raise ProtocolError("the line is nested too deeply to be a recording's") from exc
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc


def _header(record: Any) -> Recording:
    if not isinstance(record, dict) or record.get("type") != "turn" or record.get("format") not in FORMATS:
        raise ProtocolError(f"not an nbchat recording (expected a {FORMAT} turn line first)")
    turn_id, request, provenance = record.get("id"), record.get("request"), record.get("provenance")
    if not isinstance(turn_id, str) or not isinstance(request, dict) or not isinstance(provenance, dict):
        raise ProtocolError("the turn line needs a string 'id' and objects 'request' and 'provenance'")
    return Recording(turn_id, request, provenance)


def _add(recording: Recording, record: Any) -> None:
    if recording.status is not None:
        raise ProtocolError("a line after the end line")
    if isinstance(record, list):  # the chunk of format 2: [t, content]
        if len(record) != 2:
            raise ProtocolError("a chunk is [t, content]")
        recording.chunks.append(_chunk(record[0], record[1]))
        return
    kind = record.get("type") if isinstance(record, dict) else None
    if kind == "chunk":
        recording.chunks.append(_chunk(record.get("t"), record.get("content")))
    elif kind == "end":
        status, error = record.get("status"), record.get("error")
        if status not in STATUS_STRINGS:
            raise ProtocolError(f"the end line's status must be one of {', '.join(sorted(STATUS_STRINGS))}")
        if error is not None and not (isinstance(error, dict) and isinstance(error.get("code"), str)
                                      and isinstance(error.get("message"), str)):
            raise ProtocolError("the end line's error must be null or {\"code\": str, \"message\": str}")
        recording.status, recording.error = Status(status), error
    else:
        raise ProtocolError("expected a chunk [t, content] or an object of type chunk or end")


def _chunk(t: Any, content: Any) -> RecordedChunk:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < math.inf:
        raise ProtocolError("a chunk's time must be a number of seconds >= 0")
    if not isinstance(content, str):
        raise ProtocolError("a chunk's content must be a string")
    return RecordedChunk(float(t), content)
