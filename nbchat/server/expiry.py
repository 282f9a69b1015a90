"""Deadlines for many keys on one timer: when each ended turn is forgotten.

A turn is kept for ``retain_seconds`` after it ends (120 s by default), so a
busy server holds thousands of them. A loop timer each kept thousands of
handles in the event loop's heap, whose every push and pop (one of each per
paced chunk) compares handles in Python; here the deadlines sit in a heap of
plain tuples, compared in C, and the loop holds one timer: the earliest.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class Deadlines:
    """Call ``due(key)`` once each key's deadline passes; a key set again moves, a key dropped never fires."""

    def __init__(self, due: Callable[[str], None]) -> None:
        self._due = due
        self._when: dict[str, float] = {}
        # (loop time, order, key): entries of a moved or dropped key stay until popped, and are skipped then
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._when)

    def set(self, key: str, seconds: float) -> None:
        """``key`` is due ``seconds`` from now (replacing any deadline it had). Needs a running loop."""
        loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        self._when[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
        if self._timer is None or when < self._timer.when():
            self._arm(loop, when)

    def drop(self, key: str) -> None:
        self._when.pop(key, None)

    def clear(self) -> None:
        self._when.clear()
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if self._when.get(key) == when:  # else moved (a later entry) or dropped
                del self._when[key]
                self._due(key)
        while heap and self._when.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale: no timer for it
        # A ``due`` call may have set a deadline, arming the timer for it: the earliest one pending rules.
        if heap and (self._timer is None or heap[0][0] < self._timer.when()):
            self._arm(loop, heap[0][0])
