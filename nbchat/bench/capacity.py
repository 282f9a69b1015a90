"""What a concurrency sweep says about capacity: the knee and the saturation throughput.

Latency alone cannot tell a server that falls behind: the echo backend paces
its chunks on the server's clock, so a server short of CPU stretches its
pacing and every chunk still arrives soon after it was emitted. Only the
delivered rate shows it (9,000 chunks/s asked for, 6,750 delivered). So a
sweep point *holds* when its p99 latency is under 50 ms **and** at least 95 %
of the chunks/s asked for arrived; the knee is the largest stream count up
to which every point holds; the saturation throughput is the most chunks/s
delivered at any count. For raw TCP, which is never capped, the saturation
throughput is the load generator's own ceiling, and a transport that comes
within 90 % of it is marked as held back by the generator: its saturation is
then what the generator could drive, not what the server could serve.
Pure: rows in, figures out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

LOAD_P99_MS = 50.0
MIN_DELIVERED = 0.95
#: a transport whose saturation comes this close to raw TCP's was held back by the load generator, which
#: could drive no more: its figure is a floor of what the server can do, and a ratio of two such is no ratio
GENERATOR_BOUND = 0.9


class SweepPoint(Protocol):
    """What the knee reads of a sweep row (:class:`~.report.Row`)."""

    transport: str
    streams: int
    latency_p99_ms: float
    total_rate: float
    delivered: float


def holds(point: SweepPoint) -> bool:
    """p99 under 50 ms and at least 95 % of the asked chunks/s delivered (NaN figures never hold)."""
    return point.latency_p99_ms < LOAD_P99_MS and point.delivered >= MIN_DELIVERED


@dataclass
class Capacity:
    """One transport's sweep, summed up. ``knee`` is 0 where even its smallest count did not hold."""

    transport: str
    knee: int
    saturation_rate: float  # the most chunks/s delivered at any count
    saturation_streams: int  # the count it was delivered at
    first_miss: str = ""  # why the first point past the knee did not hold ("" when every point held)
    #: the saturation reached 90 % of raw TCP's in the same run: the load generator's limit, not the server's
    generator_bound: bool = False


def capacities(points: Iterable[SweepPoint]) -> list[Capacity]:
    """The knee and saturation of each transport, in the order the transports first appear."""
    by_transport: dict[str, list[SweepPoint]] = {}
    for point in points:
        by_transport.setdefault(point.transport, []).append(point)
    found = [_capacity(name, sorted(points, key=lambda p: p.streams)) for name, points in by_transport.items()]
    ceiling = next((c.saturation_rate for c in found if c.transport == "raw"), math.nan)
    for c in found:
        c.generator_bound = c.transport != "raw" and c.saturation_rate >= GENERATOR_BOUND * ceiling
    return found


def _capacity(transport: str, points: list[SweepPoint]) -> Capacity:
    knee, miss = 0, ""
    for point in points:
        if not holds(point):
            miss = f"{point.streams} streams: {why_not(point)}"
            break
        knee = point.streams
    measured = [p for p in points if not math.isnan(p.total_rate)]
    top = max(measured, key=lambda p: p.total_rate, default=None)
    return Capacity(transport, knee, top.total_rate if top else math.nan, top.streams if top else 0, miss)


def why_not(point: SweepPoint) -> str:
    """What kept a point from holding, in words."""
    reasons = []
    if not point.latency_p99_ms < LOAD_P99_MS:
        reasons.append(f"p99 {point.latency_p99_ms:.0f} ms")
    if not point.delivered >= MIN_DELIVERED:
        reasons.append(f"{100 * point.delivered:.0f}% delivered" if not math.isnan(point.delivered)
                       else "nothing delivered")
    return ", ".join(reasons)
