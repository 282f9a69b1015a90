"""Item decoders: response bytes in any split -> decoded wire items, sans-I/O.

Every HTTP client of nbchat (the Python clients over httpx, the benchmark's
bare-socket clients) feeds the bytes it reads to one of these and gets back
chunks, error records and the status, as :mod:`nbchat.wire.protocol` decodes
them. The OpenAI stream's decoder lives with the rest of that format, in
:mod:`nbchat.wire.openai`.
"""

from __future__ import annotations

from typing import Protocol

from .events import Item
from .protocol import LineDecoder, decode_ndjson_line, decode_sse_message
from .sse import SSEDecoder


class ItemDecoder(Protocol):
    """Bytes in any split -> decoded items; ``flush`` at the end of the body."""

    def feed(self, data: bytes, received: float) -> list[Item]: ...

    def flush(self, received: float) -> list[Item]: ...


class SSEItemDecoder:
    """Event-stream bytes (:class:`~nbchat.wire.sse.SSEDecoder`) -> chunks, error records and the status."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()

    def feed(self, data: bytes, received: float) -> list[Item]:
        items = (decode_sse_message(msg, received) for msg in self._sse.feed(data))
        return [item for item in items if item is not None]

    def flush(self, received: float) -> list[Item]:
        # A message is only complete at its blank line; a stream cut before it is incomplete,
        # and the caller reports the missing status.
        return []


class NDJSONItemDecoder:
    """NDJSON bytes, split on newline bytes (:class:`~nbchat.wire.protocol.LineDecoder`) -> items."""

    def __init__(self) -> None:
        self._lines = LineDecoder()

    def feed(self, data: bytes, received: float) -> list[Item]:
        return self._decode(self._lines.feed(data), received)

    def flush(self, received: float) -> list[Item]:
        # a last line without its newline still counts: the record is whole once the stream ends
        return self._decode(self._lines.flush(), received)

    @staticmethod
    def _decode(lines: list[str], received: float) -> list[Item]:
        items = (decode_ndjson_line(line, received) for line in lines)
        return [item for item in items if item is not None]
