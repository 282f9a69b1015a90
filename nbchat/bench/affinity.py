"""One core for the two servers of a paired round, the other cores for the load generator.

In a paired round (:func:`.rounds.in_pairs`) raw TCP and an nbchat server stream
at the same time. Held on the same core they take turns on it, so whatever
slows the machine for a moment slows both alike, and the load generator, on
the other cores, never takes their core from them. Linux only
(``sched_setaffinity``, set for every thread of each process); on one core or
elsewhere nothing is pinned and the pair still streams at the same time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def split_cores(cores: set[int]) -> tuple[set[int], set[int]] | None:
    """The core the servers share (the highest) and the rest, for the load generator; None with
    fewer than two cores."""
    if len(cores) < 2:
        return None
    shared = max(cores)
    return {shared}, cores - {shared}


def threads(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (the pid alone where /proc does not list them)."""
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return [pid]


@contextlib.contextmanager
def servers_on_one_core(pids: Iterable[int]) -> Iterator[int | None]:
    """Hold the processes ``pids`` on one core and this process on the others; yields that core (None
    where nothing was pinned). Every thread gets its own affinity back on the way out."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    split = split_cores(os.sched_getaffinity(0))
    if split is None:
        yield None
        return
    shared, rest = split
    before: dict[int, set[int]] = {}
    try:
        _pin([t for pid in pids for t in threads(pid)], shared, before)
        _pin(threads(os.getpid()), rest, before)
        yield next(iter(shared))
    finally:
        for tid, cores in before.items():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cores)


def _pin(tids: list[int], cores: set[int], before: dict[int, set[int]]) -> None:
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            before.setdefault(tid, os.sched_getaffinity(tid))
            os.sched_setaffinity(tid, cores)
