"""Presentation shared by the magic and the widget: per-turn statistics, the
footer line, a time-based throttle, and Markdown that never turns model output
into live HTML.

Pure code: no IPython, no network, so it is tested directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..wire.events import End, Status
from .options import trimmed_note

#: at most this many display updates per second, for the magic and the widget alike
UPDATES_PER_SECOND = 20.0

_FENCES = ("```", "~~~")


class Throttle:
    """Says when an update is due: at most one per ``interval`` seconds.

    Time-based rather than sleep-based: the caller asks on every event and
    flushes only when due, so a fast stream costs a bounded number of updates
    and a slow one shows every piece at once (the first update is always due).
    """

    def __init__(self, interval: float = 1.0 / UPDATES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False

    def mark(self) -> None:
        """Record an update made now (by a timer, say) so the next one waits a full interval."""
        self._last = self._clock()

    def remaining(self) -> float:
        """Seconds until the next update may go out (0 when one is due now)."""
        if self._last is None:
            return 0.0
        return max(0.0, self.interval - (self._clock() - self._last))


@dataclass
class TurnStats:
    """What the footer reports about one turn; times are ``time.perf_counter`` values."""

    transport: str
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    ended: float | None = None
    chunks: int = 0
    chars: int = 0
    status: str | None = None
    #: exchanges the server dropped from the oldest end so the conversation fit its model's context
    trimmed: int = 0

    def on_chunk(self, content: str) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        self.chunks += 1
        self.chars += len(content)

    def on_end(self, end: End | None, status: str | None = None) -> None:
        self.ended = time.perf_counter()
        if end is not None:
            self.status = end.status.value
            self.trimmed = end.trimmed
            if end.status is Status.ERROR and end.error is not None:
                self.status = f"{end.status.value} {end.error.code}: {end.error.message}"
        else:
            self.status = status

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def tokens_per_second(self) -> float | None:
        # Chunks stand for tokens: the embedded model sends one token per chunk.
        if self.first_token is None or self.ended is None or self.chunks < 2:
            return None
        span = self.ended - self.first_token
        return (self.chunks - 1) / span if span > 0 else None

    def footer(self) -> str:
        """One plain line, e.g. ``ws · first token 0.31 s · 42 chunks · 35.1 tok/s · [DONE]``."""
        parts = [self.transport]
        ttft = self.time_to_first_token
        parts.append("no tokens" if ttft is None else f"first token {ttft:.2f} s")
        parts.append(f"{self.chunks} chunk{'' if self.chunks == 1 else 's'}")
        rate = self.tokens_per_second
        if rate is not None:
            parts.append(f"{rate:.1f} tok/s")
        if self.status is not None:
            parts.append(self.status)
        if self.trimmed:
            parts.append(trimmed_note(self.trimmed))
        return " · ".join(parts)


def _fence_marker(line: str) -> str | None:
    stripped = line.lstrip(" ")
    if len(line) - len(stripped) > 3:
        return None
    for marker in _FENCES:
        if stripped.startswith(marker):
            run = len(stripped) - len(stripped.lstrip(marker[0]))
            return marker[0] * run
    return None


def _escape_inline(line: str) -> str:
    """Escape ``&`` and ``<`` outside inline code spans (entities are literal inside them)."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if line[i] == "`":
            run = len(line) - i - len(line[i:].lstrip("`"))
            ticks = line[i : i + run]
            close = line.find(ticks, i + run)
            if close != -1:
                out.append(line[i : close + run])
                i = close + run
                continue
            out.append(ticks)
            i += run
            continue
        ch = line[i]
        out.append("&amp;" if ch == "&" else "&lt;" if ch == "<" else ch)
        i += 1
    return "".join(out)


def safe_markdown(text: str) -> str:
    """Markdown whose raw HTML shows as text: ``<script>`` and ``<img onerror>`` stay inert.

    Jupyter and GitHub render raw HTML inside Markdown; the model's output must
    never become markup, so ``<`` and ``&`` are escaped everywhere except in
    code fences and inline code, where Markdown shows them literally anyway.
    """
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        after = _next_fence(fence, line)
        out.append(line if fence is not None or after is not None else _escape_inline(line))
        fence = after
    return "".join(out)


def _next_fence(fence: str | None, line: str) -> str | None:
    """The code fence open after ``line``, given the one open before it (None: outside code)."""
    marker = _fence_marker(line)
    if fence is None:
        return marker if marker is not None and len(marker) >= 3 else None
    return None if marker is not None and marker.startswith(fence) and line.strip() == marker else fence


def open_fence(text: str) -> str | None:
    """The fence left open at the end of ``text`` (an interrupted code block), if any."""
    fence: str | None = None
    for line in text.splitlines():
        fence = _next_fence(fence, line)
    return fence


def code_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of ``text`` as (language, code), in order; an unclosed last block counts
    (an answer cut by ``max_tokens`` or an interrupt still holds its code)."""
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    language, lines = "", list[str]()
    for line in text.splitlines():
        marker = _fence_marker(line)
        if fence is None:
            if marker is not None and len(marker) >= 3:
                fence, lines = marker, []
                info = line.strip()[len(marker):].strip()
                language = info.split()[0] if info else ""
        elif marker is not None and marker.startswith(fence) and line.strip() == marker:
            blocks.append((language, "\n".join(lines)))
            fence = None
        else:
            lines.append(line)
    if fence is not None and lines:
        blocks.append((language, "\n".join(lines)))
    return blocks


def split_blocks(text: str, size: int) -> list[str]:
    """``text`` cut into parts of about ``size`` characters or more, each made of whole Markdown blocks.

    A cut falls only at a blank line outside code fences and display math, before a line that starts
    in its first column (an indented line may continue a list item), so each part renders alone as it
    would within the whole. The parts joined are ``text``; a text with no such place stays one part.
    """
    parts: list[str] = []
    start = offset = 0
    fence: str | None = None
    math = False  # inside $$ or \[ display math that spans lines
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines):
        after = _next_fence(fence, line)
        if fence is None and after is None:
            math ^= (line.count("$$") + line.count("\\[") + line.count("\\]")) % 2 == 1
        fence = after
        offset += len(line)
        nxt = lines[n + 1] if n + 1 < len(lines) else ""
        if (offset - start >= size and fence is None and not math and not line.strip()
                and nxt.strip() and not nxt[0].isspace()):
            parts.append(text[start:offset])
            start = offset
    tail = text[start:]
    if tail or not parts:
        parts.append(tail)
    return parts


def answer_markdown(answer: str, footer: str | None = None) -> str:
    """The cell's Markdown: the safe answer, its open code block closed, then the footer in italics."""
    body = safe_markdown(answer)
    if footer is None:
        return body
    fence = open_fence(answer)
    if fence is not None:
        body += ("" if body.endswith("\n") else "\n") + fence
    # Brackets are escaped so that "[DONE]" never reads as a link reference.
    note = safe_markdown(footer).replace("[", "\\[").replace("]", "\\]").replace("*", "\\*")
    return f"{body}\n\n*{note}*" if body.strip() else f"*{note}*"
