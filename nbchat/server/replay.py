"""The replay buffer of one turn: the chunks a stream may still ask for.

Its bound counts the memory its records really hold (the chunk objects,
their text and timestamps), not characters: a turn of many small pieces
costs several times its text. When the bound is passed the oldest chunks go;
a reader that still needed them is told it fell behind
(:class:`~nbchat.wire.errors.ResumeError`) instead of being handed a gap.
"""

from __future__ import annotations

import sys

from ..wire.errors import ResumeError
from ..wire.events import Chunk

# A list slot per record, and the float of a server timestamp when there is one.
_SLOT = 8
_FLOAT = sys.getsizeof(0.0)
# A chunk object has slots: every one has the same size. Its seq is a small int shared or an int
# of 28 bytes (counted) until 2**30, which no turn reaches: measured once, not per chunk.
_FIXED = _SLOT + sys.getsizeof(Chunk(content="", seq=1)) + sys.getsizeof(2**29)


def record_size(chunk: Chunk) -> int:
    """The bytes a buffered chunk keeps alive."""
    return _FIXED + sys.getsizeof(chunk.content) + (_FLOAT if chunk.server_time is not None else 0)


class ReplayBuffer:
    """Chunks in seq order, from :attr:`first_seq` on, holding at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.first_seq = 1
        self.nbytes = 0
        self._chunks: list[Chunk] = []

    def __len__(self) -> int:
        return len(self._chunks)

    def append(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self.nbytes += record_size(chunk)
        if self.nbytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        # Down to nine tenths at once, so that deleting from the front of a
        # list stays amortised O(1) per chunk. The newest chunk always stays.
        keep = self.max_bytes * 9 // 10
        drop, size, last = 0, self.nbytes, len(self._chunks) - 1
        while drop < last and size > keep:
            size -= record_size(self._chunks[drop])
            drop += 1
        self.nbytes = size
        self.first_seq = self._chunks[drop].seq
        del self._chunks[:drop]

    def holds_after(self, seq: int) -> bool:
        """Whether everything after ``seq`` is still here."""
        return seq + 1 >= self.first_seq

    def after(self, seq: int) -> list[Chunk]:
        """The chunks after ``seq``; ResumeError when some of them are gone."""
        if not self.holds_after(seq):
            raise ResumeError(f"seq {seq + 1} is no longer buffered (the oldest kept is {self.first_seq}): "
                              "the stream fell behind the replay bound")
        return self._chunks[seq + 1 - self.first_seq:]
