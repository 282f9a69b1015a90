"""The garbage collector's settings for a process that only serves streams.

CPython's cyclic collector runs a young-generation pass every 700 net
allocations. A streaming server allocates a few short-lived containers per
chunk (the chunk, its message, the sleep of a paced backend), so at 10,000
chunks/s it ran some 20 passes a second, each moving whatever was still in
flight into an older generation, whose passes then walked every turn kept for
resume: a tenth or more of the server's CPU per chunk, and pauses of up to
~70 ms at a time. Two settings, standard for long-running servers, take most
of it away: what is loaded at start is frozen out of the collector's sight,
and a young pass waits for :data:`YOUNG_THRESHOLD` allocations.

Only for processes that do nothing else (``nbchat serve``, its workers, the
benchmark's raw TCP floor, so that floor runs under the same settings): never
in a kernel, whose heap and collector belong to its user.
"""

from __future__ import annotations

import gc

#: allocations between two young-generation passes (CPython's default: 700)
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Freeze what is alive now and space the young passes out; call once, just before serving."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
