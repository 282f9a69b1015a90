"""The recording format: one turn as JSON Lines, written by ``nbchat serve --record``
and read back by the ``replay`` backend.

A recording is one file per turn::

    {"type": "turn", "format": "nbchat-recording/1", "id": ..., "request": {...}, "provenance": {...}}
    {"type": "chunk", "seq": 1, "t": 0.2031, "ts": 1717171717.25, "content": "Hel"}
    ...
    {"type": "end", "t": 1.52, "status": "[DONE]", "error": null, "chunks": 42}

``t`` is the chunk's server time in seconds since the turn began generating
(a monotonic clock, so the gaps between chunks are exact even when the wall
clock is adjusted); ``ts`` is the wall-clock emit time the wire carried.
Pure code: encoding a line and parsing a file's lines, no I/O.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError
from .events import Chunk, End, Status, TurnRequest
from .protocol import dumps

FORMAT = "nbchat-recording/1"


def encode_request(request: TurnRequest) -> dict[str, Any]:
    """The request as the contract's JSON (``maxTokens``), with the conversation spelled out."""
    return {"messages": [m.to_dict() for m in request.messages], "temperature": request.temperature,
            "maxTokens": request.max_tokens, "model": request.model}


def header_line(turn_id: str, request: TurnRequest, provenance: dict[str, Any]) -> str:
    return dumps({"type": "turn", "format": FORMAT, "id": turn_id, "request": encode_request(request),
                  "provenance": provenance}) + "\n"


def chunk_line(chunk: Chunk, t: float) -> str:
    return dumps({"type": "chunk", "seq": chunk.seq, "t": round(t, 6), "ts": chunk.server_time,
                  "content": chunk.content}) + "\n"


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


def parse_recording(lines: Iterable[str]) -> Recording:
    """Read a recording's lines; raises :class:`ProtocolError` naming the bad line."""
    recording: Recording | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            kind = record["type"]
            if recording is None:
                if kind != "turn" or record.get("format") != FORMAT:
                    raise ProtocolError(f"not an nbchat recording (expected a {FORMAT} turn line first)")
                recording = Recording(str(record["id"]), dict(record["request"]), dict(record["provenance"]))
            elif kind == "chunk":
                recording.chunks.append(RecordedChunk(float(record["t"]), str(record["content"])))
            elif kind == "end":
                recording.status = Status(record["status"])
                recording.error = record.get("error")
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"line {number} of the recording cannot be read: {exc}") from exc
    if recording is None:
        raise ProtocolError("the recording is empty")
    return recording
