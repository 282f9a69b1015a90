"""Server-Sent Events framing, sans-I/O, after the HTML Living Standard
("9.2 Server-sent events", the event stream interpretation algorithm).

:func:`encode_sse` writes one message; :class:`SSEDecoder` is fed raw bytes in
any split and returns whole messages. Subtleties the spec settles:

- lines end in CR LF, LF or CR; a CR at the end of a chunk may be the first
  half of a CR LF, so it waits for the next byte;
- bytes are split into lines before UTF-8 decoding, so a character split
  across network chunks survives;
- one leading space after the colon is removed, no more; a line starting with
  a colon is a comment;
- ``data`` lines are joined with LF; a message is dispatched on a blank line,
  and one with an empty data buffer is not dispatched (but its ``id`` still
  sets the last event id);
- an ``id`` containing NUL is ignored; ``retry`` must be all ASCII digits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEMessage:
    data: str = ""
    id: str | None = None
    event: str = ""
    retry: int | None = None


def encode_sse(msg: SSEMessage) -> bytes:
    """One message. Data is split on every kind of line break so that no CR or LF
    inside it can end a field early."""
    parts: list[str] = []
    if msg.event:
        parts.append(f"event: {msg.event}\n")
    if msg.id is not None:
        if any(c in msg.id for c in "\r\n\0"):
            raise ValueError("an SSE id cannot contain CR, LF or NUL")
        parts.append(f"id: {msg.id}\n")
    if msg.retry is not None:
        parts.append(f"retry: {msg.retry}\n")
    for line in msg.data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_sse_comment(text: str = "") -> bytes:
    """A comment line: keeps proxies and the browser from timing the stream out."""
    return f": {text}\n\n".encode() if text else b":\n\n"


class SSEDecoder:
    """Incremental decoder: ``feed(bytes) -> list[SSEMessage]``."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._retry: int | None = None
        self._id_seen = False
        self.last_event_id = ""

    def feed(self, data: bytes) -> list[SSEMessage]:
        self._buf += data
        out: list[SSEMessage] = []
        for line in self._take_lines():
            msg = self._line(line)
            if msg is not None:
                out.append(msg)
        return out

    def _take_lines(self) -> list[bytes]:
        lines: list[bytes] = []
        buf = self._buf
        start = 0
        i = 0
        n = len(buf)
        while i < n:
            b = buf[i]
            if b == 0x0A:
                lines.append(bytes(buf[start:i]))
                start = i = i + 1
            elif b == 0x0D:
                if i + 1 == n:
                    break  # maybe the CR of a CR LF: wait for the next byte
                lines.append(bytes(buf[start:i]))
                i += 2 if buf[i + 1] == 0x0A else 1
                start = i
            else:
                i += 1
        del buf[:start]
        return lines

    def _line(self, raw: bytes) -> SSEMessage | None:
        line = raw.decode("utf-8", errors="replace")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
            self._id_seen = True
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        data, event, retry, id_seen = self._data, self._event, self._retry, self._id_seen
        self._data, self._event, self._retry, self._id_seen = [], "", None, False
        if not data:
            return None
        return SSEMessage(data="\n".join(data), id=self.last_event_id if id_seen or self.last_event_id else None,
                          event=event, retry=retry)
