"""What the model process keeps of conversations that are not the current one.

llama.cpp's context holds one conversation's evaluated tokens (its KV
entries). When a turn of another conversation comes, the current one's KV
entries are copied out (``llama_state_seq_get_data``: only that sequence's
cells, no logits) into a least-recently-used store bounded in bytes; a later
turn whose prompt starts with a stored sequence copies it back instead of
re-reading it. Measured on SmolLM2-135M (2 cores): a 2,000-token state is
~46 MB and is copied out or back in ~20 ms, where re-reading it takes
seconds. Several llama.cpp sequences in one context were the other choice;
they share the context's ``n_ctx`` among conversations, and a sequence's
cells sit at other offsets than a fresh evaluation's, so greedy answers would
depend on which conversations came before.

Entries are keyed by their tokens, not by a conversation id: a conversation
is whatever its prompt starts with, so every transport, the OpenAI route and
any client benefit without saying which conversation they continue.

Copying a state out costs time that grows with the conversation, and most of
it was fresh memory: a new buffer per save, zeroed and faulted in page by page
(measured in the model process: 2 ms of CPU at 40 tokens, 19 ms at 1,000,
where copying into memory already mapped takes 5). So buffers are reused: the
one a restored state came in is kept as a spare, and the next save (usually
that same conversation's, a turn longer) writes into it, as does a save of a
state that extends a kept one (which it replaces); each buffer is made
with room for a few more turns (half as much again as the state it is made
for, counted in the store's bound).
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: the memory bound of kept conversations, in MiB, when neither the caller nor NBCHAT_CACHE_MB says
DEFAULT_CACHE_MB = 256
#: the least room a new buffer has beyond its state, so that the same conversation's next saves fit
#: in it: about a turn and a half of 120 tokens on SmolLM2 (23 KB a token); a long state gets half its size
GROWTH = 4 * 1024 * 1024


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class Saved:
    """One conversation's evaluated tokens and their KV entries: the first ``size`` bytes of
    ``data`` (a buffer llama.cpp wrote, handed back to it as it is: no copy on either way)."""

    tokens: tuple[int, ...]
    data: Any
    size: int


def capacity(saved: Saved) -> int:
    """The bytes ``saved`` holds, its room to grow included."""
    return len(saved.data)


class StateStore:
    """A least-recently-used store of :class:`Saved` states and one spare buffer, at most
    ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[int, ...], Saved] = OrderedDict()
        self.size = 0
        #: a buffer no state uses: the last restored state's, for the next save to write into
        self._spare: Any = None

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, saved: Saved) -> None:
        """Keep ``saved`` as the most recent; entries it extends, and the oldest past the bound, go."""
        for key in [k for k in self._entries if saved.tokens[:len(k)] == k]:
            self._drop(key)  # a shorter state of the same conversation: the new one serves all it did
        if capacity(saved) > self.limit:
            return
        self._entries[saved.tokens] = saved
        self.size += capacity(saved)
        if self.size + self._spare_size() > self.limit:
            self._spare = None
        while self.size > self.limit:
            self._drop(next(iter(self._entries)))

    def sequences(self) -> list[tuple[int, ...]]:
        """The kept states' tokens, least recently used first."""
        return list(self._entries)

    def best(self, tokens: Sequence[int]) -> tuple[Saved | None, int]:
        """The stored state sharing the longest prefix with ``tokens``, and that length."""
        found: Saved | None = None
        longest = 0
        for saved in self._entries.values():
            shared = common_prefix(saved.tokens, tokens)
            if shared > longest:
                found, longest = saved, shared
        return found, longest

    def touch(self, tokens: Sequence[int]) -> bool:
        """Whether a state of exactly ``tokens`` is kept; if so it becomes the most recent."""
        key = tuple(tokens)
        if key not in self._entries:
            return False
        self._entries.move_to_end(key)
        return True

    def take(self, saved: Saved) -> None:
        """Remove ``saved`` (it becomes the context's current state)."""
        if saved.tokens in self._entries:
            self._drop(saved.tokens)

    def release(self, saved: Saved) -> None:
        """``saved`` was copied back into the context: its buffer becomes the spare."""
        if self.size + capacity(saved) <= self.limit:
            self._spare = saved.data

    def buffer(self, size: int, tokens: Sequence[int] = ()) -> Any:
        """A buffer for a state of ``size`` bytes and ``tokens``: that of a kept state ``tokens``
        extend (the new one replaces it), else the spare, when big enough; else a new one
        (uninitialised: llama.cpp writes every byte a state uses) with room to grow."""
        for key, kept in self._entries.items():
            if len(kept.data) >= size and tuple(tokens[:len(key)]) == key:
                self._drop(key)
                return kept.data
        spare, self._spare = self._spare, None
        if spare is not None and len(spare) >= size:
            return spare
        import numpy

        return numpy.empty(size + max(size // 2, GROWTH), dtype=numpy.uint8)

    def _spare_size(self) -> int:
        return len(self._spare) if self._spare is not None else 0

    def _drop(self, key: tuple[int, ...]) -> None:
        self.size -= capacity(self._entries.pop(key))


def _pointer(buffer: Any) -> Any:
    return buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def save_sequence(llama_cpp: Any, ctx: Any, tokens: Sequence[int], store: StateStore) -> Saved:
    """Copy sequence 0's KV entries out of the context, into a buffer from ``store``."""
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buffer = store.buffer(size, tokens)
    written = llama_cpp.llama_state_seq_get_data(ctx, _pointer(buffer), size, 0)
    return Saved(tuple(tokens), buffer, int(written))


def load_sequence(llama_cpp: Any, ctx: Any, saved: Saved) -> bool:
    """Copy ``saved`` back into sequence 0 (its cells must be free); whether llama.cpp took it."""
    return bool(llama_cpp.llama_state_seq_set_data(ctx, _pointer(saved.data), saved.size, 0) == saved.size)
