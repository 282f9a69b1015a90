"""A prompt's tokens that continue what the model already evaluated, where the text allows.

An answer is generated one token at a time; rendered back into the next prompt
and tokenised again, the same text does not always give the same tokens (BPE
picks its own split: on SmolLM2 one answer in ten or so, and a turn then read
60 tokens again from the first token that differs). So a prompt whose text
starts with the text of an evaluated sequence (the current conversation's, or a
kept one's) is given that sequence's tokens for that text, and only the rest is
tokenised: the model sees the tokens it produced, and the continued turn reads
only what is new. A fresh evaluation of the same messages reads the canonical
tokens instead, which is why the model process does not splice when it must give
a fresh evaluation's greedy answers (``exact``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate


def shared_bytes(a: bytes, b: bytes) -> int:
    """How many leading bytes ``a`` and ``b`` share (a binary search of C-speed comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _inside_word(text: bytes, cut: int) -> bool:
    """Whether ``cut`` falls between two letters or digits of ``text`` (inside a word, where
    tokenising the rest on its own would split the word otherwise than a whole tokenisation)."""
    return 0 < cut < len(text) and text[cut - 1:cut].isalnum() and text[cut:cut + 1].isalnum()


@dataclass(frozen=True)
class Spelling:
    """An evaluated sequence's tokens after its head, the bytes they spell and where each token ends."""

    tokens: tuple[int, ...]
    text: bytes
    ends: list[int]


def spell(tokens: Sequence[int], piece: Callable[[int], bytes]) -> Spelling:
    """``tokens`` spelled out, ``piece`` giving each token's bytes."""
    pieces = [piece(t) for t in tokens]
    return Spelling(tuple(tokens), b"".join(pieces), list(accumulate(map(len, pieces))))


def reusable(spelling: Spelling, text: bytes) -> tuple[int, int]:
    """How many leading tokens of ``spelling`` spell the start of ``text``, not ending inside a word
    unless the text ends there; and how many bytes of ``text`` they cover."""
    ends = spelling.ends
    n = bisect_right(ends, shared_bytes(spelling.text, text))
    while n and _inside_word(text, ends[n - 1]):
        n -= 1
    return n, ends[n - 1] if n else 0


def continuing(text: bytes, head: Sequence[int], candidates: Iterable[Spelling],
               tokenize: Callable[[bytes], list[int]]) -> list[int] | None:
    """The tokens of ``text`` (after ``head``, the tokens a tokeniser puts first, like a BOS) that
    reuse the most tokens of one of ``candidates`` (evaluated sequences past that head); the rest
    of the text is tokenised with ``tokenize``. None when no candidate spells any of it."""
    best: tuple[int, ...] = ()
    covered = 0
    for spelling in candidates:
        if len(spelling.tokens) > len(best):
            n, size = reusable(spelling, text)
            if n > len(best):
                best, covered = spelling.tokens[:n], size
    if not best:
        return None
    return [*head, *best, *(tokenize(text[covered:]) if covered < len(text) else [])]
