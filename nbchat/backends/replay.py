"""The ``replay`` backend: streams recorded answers back at their recorded pace.

A recording (``nbchat serve --record DIR``, format in :mod:`nbchat.wire.recording`)
holds each chunk with its server time since the turn began. Replaying sends
the same pieces on the same schedule, first-token wait included, so a demo or
a test shows a real model's answer with its real cadence without the model.
With ``rate`` the pieces go out at that many per second instead (0: at once).

``path`` is one recording, or a directory of them: each turn then plays the
next file in name order (the recorder names files by time), round and round.
The question asked is ignored: a recording answers whatever it recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
import time
from collections.abc import AsyncIterator

from ..wire.errors import BackendError, ProtocolError
from ..wire.events import Status
from ..wire.recording import RecordedChunk, Recording, parse_recording
from .base import LENGTH, Backend, Finish, GenerationRequest


def load_recording(path: str | pathlib.Path) -> Recording:
    """Read a recording file; a file that is not one raises :class:`ValueError` naming it."""
    path = pathlib.Path(path)
    try:
        with path.open("rb") as file:  # bytes: a line that is not UTF-8 is refused with its number
            return parse_recording(file)
    except ProtocolError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror or exc}") from exc


def load_recordings(path: str | pathlib.Path) -> list[Recording]:
    """One recording, or every ``*.jsonl`` of a directory in name order."""
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise ValueError(f"{path} holds no recordings (*.jsonl)")
        return [load_recording(f) for f in files]
    if not path.exists():
        raise ValueError(f"no recording at {path}: record one with `nbchat serve --record DIR`")
    return [load_recording(path)]


class ReplayBackend(Backend):
    name = "replay"

    def __init__(self, path: str | pathlib.Path, rate: float | None = None) -> None:
        if rate is not None and rate < 0:
            raise ValueError("rate must be >= 0 (0 = as fast as possible)")
        self.recordings = load_recordings(path)
        self.rate = rate
        self._next = itertools.cycle(self.recordings)

    @property
    def model_name(self) -> str:
        return str(self.recordings[0].provenance.get("model") or "replay")

    def schedule(self, chunks: list[RecordedChunk]) -> list[float]:
        """When each piece goes out, in seconds after the turn starts."""
        if self.rate is None:
            return [c.t for c in chunks]
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        return [(i + 1) * interval for i in range(len(chunks))]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        recording = next(self._next)
        limit = request.max_tokens
        # A fixed schedule from one start time, as the echo backend does: the
        # gaps do not drift with the cost of sending each piece.
        start = time.monotonic()
        for i, (chunk, at) in enumerate(zip(recording.chunks, self.schedule(recording.chunks), strict=True)):
            if limit is not None and i >= limit:
                yield LENGTH
                return
            delay = start + at - time.monotonic()
            await asyncio.sleep(max(delay, 0.0))
            yield chunk.content
        if recording.status is Status.TOKENS:
            yield LENGTH
        elif recording.status is Status.ERROR:
            error = recording.error or {}
            raise BackendError(f"(replayed) {error.get('message', 'the recorded turn failed')}")
