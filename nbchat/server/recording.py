"""``nbchat serve --record DIR``: each turn's chunks with their server times, one JSON Lines file per turn.

A :class:`Recorder` belongs to one app; it opens a :class:`TurnRecord` when a
turn begins generating. Lines are written as the chunks are made (buffered by
the file object, so a chunk costs a string format and a memcpy, not a
syscall) and the file is closed at the turn's end, so a recording is complete
once its ``end`` line is there. The format lives in :mod:`nbchat.wire.recording`.

The directory is bounded (``--record-max-mb``): when a recording closes and
the directory's recordings add up to more than the bound, the oldest go first
(their names begin with their start time), never one still being written.
"""

from __future__ import annotations

import collections
import datetime
import logging
import pathlib
import time
from collections.abc import Callable
from typing import IO, Any

from .._version import __version__
from ..wire.events import Chunk, End, TurnRequest
from ..wire.recording import chunk_line, end_line, header_line

log = logging.getLogger("nbchat.server.recording")


class TurnRecord:
    """The open file of one turn's recording."""

    def __init__(self, file: IO[str], on_close: Callable[[pathlib.Path], None] | None = None) -> None:
        self._file: IO[str] | None = file
        self._on_close = on_close
        self._start = time.perf_counter()
        self._chunks = 0
        self.path = pathlib.Path(file.name)

    def chunk(self, chunk: Chunk) -> None:
        if self._file is not None:
            self._chunks += 1
            self._write(chunk_line(chunk, time.perf_counter() - self._start))

    def end(self, end: End) -> None:
        if self._file is not None:
            self._write(end_line(end, time.perf_counter() - self._start, self._chunks))
            self._close()

    def _write(self, line: str) -> None:
        try:
            assert self._file is not None
            self._file.write(line)
        except OSError as exc:  # a full disk must not end the turn: stop recording it
            log.warning("recording %s stopped: %s", self.path, exc)
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                log.warning("recording %s not saved: %s", self.path, exc)
            if self._on_close is not None:
                self._on_close(self.path)


class Recorder:
    """Makes one recording file per turn in ``directory`` (created if missing), keeping the
    directory's recordings under ``max_bytes`` (0: no bound) by removing the oldest."""

    def __init__(self, directory: str | pathlib.Path, backend: str, model: str, max_bytes: int = 0) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._backend = backend
        self._model = model
        self.max_bytes = max_bytes
        #: the closed recordings, oldest first, with their sizes (those already there count too)
        self._closed: collections.deque[tuple[pathlib.Path, int]] = collections.deque()
        self.total_bytes = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            self._count(path)
        self._rotate()

    def _count(self, path: pathlib.Path) -> None:
        try:
            size = path.stat().st_size
        except OSError:
            return
        self._closed.append((path, size))
        self.total_bytes += size

    def closed(self, path: pathlib.Path) -> None:
        """A recording was completed: count it, then make room."""
        self._count(path)
        self._rotate()

    def _rotate(self) -> None:
        while self.max_bytes and self.total_bytes > self.max_bytes and self._closed:
            path, size = self._closed.popleft()
            self.total_bytes -= size
            if not self._closed:
                log.warning("the recording %s (%d bytes) alone is over --record-max-mb: removed", path, size)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the old recording %s: %s", path, exc)

    def open(self, turn_id: str, request: TurnRequest, uid: str | None) -> TurnRecord | None:
        """Start the recording of a turn that begins generating now; None when the file cannot be made."""
        started = datetime.datetime.now(datetime.timezone.utc)
        # The time first, so that a directory listing is in turn order.
        path = self.directory / f"{started.strftime('%Y%m%dT%H%M%S.%fZ')}-{turn_id}.jsonl"
        provenance: dict[str, Any] = {"backend": self._backend, "model": self._model, "server": f"nbchat {__version__}",
                                      "started": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                                      "uid": uid}
        try:
            file = path.open("w", encoding="utf-8")
            file.write(header_line(turn_id, request, provenance))
        except OSError as exc:
            log.warning("cannot record turn %s in %s: %s", turn_id, self.directory, exc)
            return None
        return TurnRecord(file, self.closed)
