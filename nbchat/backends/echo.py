"""The deterministic ``echo`` backend: for tests and benchmarks.

It answers with the last user message, verbatim, in pieces of a few
characters, one piece every ``1/rate`` seconds (the first piece too). With
``rate=0`` it sends as fast as it can. Each piece counts as one token for
``max_tokens``. Pieces never split a surrogate pair or a grapheme's base from
nothing: Python strings are code points, so a piece is always valid UTF-8.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from .base import LENGTH, Backend, Finish, GenerationRequest

PIECE_CHARS = 4
#: pieces per second when nobody says: about a small model's pace on a laptop
DEFAULT_RATE = 20.0


def split_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class EchoBackend(Backend):
    name = "echo"

    def __init__(self, rate: float = DEFAULT_RATE, piece_chars: int = PIECE_CHARS) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0 (0 = as fast as possible)")
        self.rate = rate
        self.piece_chars = piece_chars

    @property
    def model_name(self) -> str:
        return "echo"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        text = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        pieces = split_pieces(text, self.piece_chars)
        limit = request.max_tokens
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        # Pace against a fixed schedule rather than sleeping a fixed interval
        # after each send, so the cadence does not drift with the consumer's cost.
        start = time.monotonic()
        for i, piece in enumerate(pieces):
            if limit is not None and i >= limit:
                yield LENGTH
                return
            if interval:
                delay = start + (i + 1) * interval - time.monotonic()
                await asyncio.sleep(max(delay, 0.0))
            elif i % 64 == 63:
                await asyncio.sleep(0)  # let other streams and disconnects run
            yield piece
