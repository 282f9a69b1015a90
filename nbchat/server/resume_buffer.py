"""The resume buffer of one turn: the chunks a stream may still ask for.

Its bound counts the memory its records really hold (the chunk objects,
their text and timestamps), not characters: a turn of many small pieces
costs several times its text. When the bound is passed the oldest chunks go;
a reader that still needed them is told it fell behind
(:class:`~nbchat.wire.errors.ResumeError`) instead of being handed a gap.

The chunks are kept as plain tuples of their fields, not as :class:`Chunk`
objects: a tuple of text and numbers is one the cyclic garbage collector stops
tracking, while every Chunk stays tracked. With a few hundred turns retained
for resume, hundreds of thousands of tracked chunks made each full collection
pause the server for ~100 ms and cost more CPU per chunk than the stream itself.
"""

from __future__ import annotations

import sys

from ..wire.errors import ResumeError
from ..wire.events import Chunk

#: a buffered chunk: its content, seq and server time
Record = tuple[str, int, "float | None"]

# A list slot per record, and the float of a server timestamp when there is one.
_SLOT = 8
_FLOAT = sys.getsizeof(0.0)
# Every record is a tuple of three. Its seq is a small int shared or an int of 28 bytes (counted)
# until 2**30, which no turn reaches: measured once, not per chunk.
_FIXED = _SLOT + sys.getsizeof(("", 1, None)) + sys.getsizeof(2**29)


def record_size(content: str, server_time: float | None) -> int:
    """The bytes a buffered chunk keeps alive."""
    return _FIXED + sys.getsizeof(content) + (_FLOAT if server_time is not None else 0)


class ResumeBuffer:
    """Chunks in seq order, from :attr:`first_seq` on, holding at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.first_seq = 1
        self.nbytes = 0
        self._records: list[Record] = []
        #: the seq of the chunk carrying the turn's trimmed-history notice, and its count: at most one
        #: chunk a turn has it, so it is kept beside the records rather than in each of them
        self._notice: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self._records)

    def append(self, chunk: Chunk) -> None:
        if chunk.trimmed:
            self._notice = (chunk.seq, chunk.trimmed)
        self.append_record(chunk.content, chunk.seq, chunk.server_time)

    def append_record(self, content: str, seq: int, server_time: float | None) -> None:
        """Append a chunk given by its fields (a live chunk needs no Chunk object to be kept)."""
        self._records.append((content, seq, server_time))
        self.nbytes += record_size(content, server_time)
        if self.nbytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        # Down to nine tenths at once, so that deleting from the front of a
        # list stays amortised O(1) per chunk. The newest chunk always stays.
        keep = self.max_bytes * 9 // 10
        drop, size, last = 0, self.nbytes, len(self._records) - 1
        while drop < last and size > keep:
            content, _, server_time = self._records[drop]
            size -= record_size(content, server_time)
            drop += 1
        self.nbytes = size
        self.first_seq = self._records[drop][1]
        del self._records[:drop]

    def holds_after(self, seq: int) -> bool:
        """Whether everything after ``seq`` is still here."""
        return seq + 1 >= self.first_seq

    def after(self, seq: int) -> list[Chunk]:
        """The chunks after ``seq``; ResumeError when some of them are gone."""
        if not self.holds_after(seq):
            raise ResumeError(f"seq {seq + 1} is no longer buffered (the oldest kept is {self.first_seq}): "
                              "the stream fell behind the replay bound")
        chunks = [Chunk(content, n, ts) for content, n, ts in self._records[seq + 1 - self.first_seq:]]
        if self._notice is not None and chunks and chunks[0].seq <= self._notice[0]:
            at, trimmed = self._notice
            old = chunks[at - chunks[0].seq]
            chunks[at - chunks[0].seq] = Chunk(old.content, old.seq, old.server_time, trimmed=trimmed)
        return chunks
