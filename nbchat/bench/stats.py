"""The benchmark's arithmetic, pure: percentiles and what one stream's timings say.

A :class:`Trace` is one stream as the client saw it: when the request went
out, and for each chunk the server's emit time and the client's receive time
(both ``time.time()`` on the same host, so their difference is the one-way
latency). Everything reported is computed here from traces, so the numbers
can be tested without a network.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: the least share of a window's span its streams must all be receiving in for :func:`delivered_rate`
#: to count that part alone: three workers held to 0.2 cores each start 1,200 turns over 1.3 s, and a
#: connection whose SYN was dropped opens a second later, against 3 s of streaming
STEADY_MIN_SHARE = 0.25


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default); NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, not {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Trace:
    """One stream's timings: ``sent`` is when the request went out; ``emitted[i]`` / ``received[i]``
    are chunk i's server emit time and client receive time; ``wire_bytes`` the bytes its chunks took."""

    sent: float
    emitted: list[float] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    wire_bytes: int = 0
    status: str = ""

    def add(self, emitted: float, received: float) -> None:
        self.emitted.append(emitted)
        self.received.append(received)

    @property
    def chunks(self) -> int:
        return len(self.received)

    def ttft(self) -> float:
        """Request sent to first chunk received (seconds); NaN without a chunk."""
        return self.received[0] - self.sent if self.received else math.nan

    def latencies(self) -> list[float]:
        """One-way latency of every chunk: receive time minus emit time (seconds)."""
        return [r - e for e, r in zip(self.emitted, self.received, strict=True)]

    def jitter(self) -> list[float]:
        """What the transport did to the cadence: |client interval - server interval| per consecutive pair."""
        return [abs((r1 - r0) - (e1 - e0)) for e0, e1, r0, r1 in
                zip(self.emitted, self.emitted[1:], self.received, self.received[1:], strict=False)]

    def client_rate(self) -> float:
        """Chunks per second as the client received them (first to last chunk)."""
        span = self.received[-1] - self.received[0] if self.chunks > 1 else 0.0
        return (self.chunks - 1) / span if span > 0 else math.nan

    def emit_intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.emitted, self.emitted[1:], strict=False)]

    def receive_intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.received, self.received[1:], strict=False)]


def pooled(traces: Iterable[Trace], what: str) -> list[float]:
    """One list over many streams: ``what`` is ``latencies``, ``jitter``, ``emit_intervals``..."""
    out: list[float] = []
    for trace in traces:
        out.extend(getattr(trace, what)())
    return out


def ms(seconds: float) -> float:
    return seconds * 1000.0


def delivered_rate(traces: Sequence[Trace]) -> float:
    """Chunks per second delivered to all streams together while every one of them was receiving:
    from the latest first chunk to the earliest last one (:func:`steady_window`).

    The streams of a window are asked for at once, so their first chunks come as fast as the
    server starts their turns: a server held to a fifth of a core takes most of a second to start
    a few hundred, every stream then keeps its pace, and a rate over the whole span counted that
    start as streaming it had failed to deliver (75 % at a load its CPU kept up with). A server
    short of CPU for the streaming itself stretches every stream's pacing, which this window
    shows. Where the streams overlap for less than a quarter of the span (a server too slow to
    have them all going at once), the rate over the span from the first chunk to the last.
    """
    window = steady_window(traces)
    if window is None:
        return span_rate(traces)
    start, end = window
    # chunks in [start, end): a stream at one chunk per p seconds has L/p of them in any span of L,
    # where a closed span would count one more for each stream whose chunks fall on both ends
    count = sum(bisect.bisect_left(t.received, end) - bisect.bisect_left(t.received, start)
                for t in traces if t.received)
    return count / (end - start)


def steady_window(traces: Sequence[Trace]) -> tuple[float, float] | None:
    """The span in which every stream with chunks was receiving, when it is at least
    :data:`STEADY_MIN_SHARE` of the whole span (else None)."""
    received = [t.received for t in traces if t.received]
    if not received:
        return None
    start, end = max(r[0] for r in received), min(r[-1] for r in received)
    whole = max(r[-1] for r in received) - min(r[0] for r in received)
    return (start, end) if whole > 0 and end - start >= STEADY_MIN_SHARE * whole else None


def span_rate(traces: Sequence[Trace]) -> float:
    """Chunks per second delivered to all streams together, over the span in which any was receiving."""
    firsts = [t.received[0] for t in traces if t.received]
    lasts = [t.received[-1] for t in traces if t.received]
    total = sum(t.chunks for t in traces)
    if not firsts or max(lasts) <= min(firsts):
        return math.nan
    return total / (max(lasts) - min(firsts))
