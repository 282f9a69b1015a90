"""A sweep point measured in rounds: the order of the windows, and each transport's own floor.

A busy machine moves a window's CPU per chunk by a third from one window to
the next. So within a round every transport's window has a raw TCP window
right before it and right after it (raw, ws, raw, sse, raw, stream, raw: the
next round starts with the last raw window of this one), and each transport's
figure is compared with the mean of those two: a burst of load from
elsewhere that lasts a window or two falls on the transport and on its own
floor alike, and load that rises or falls steadily across a round is
averaged out on the floor's side (with two rounds or more: one round takes
raw TCP once).

Paired rounds (``nbchat bench --paired``) go further: each transport's window
runs at the same time as a raw TCP window of as many streams, and is compared
with that one. Load from elsewhere that comes and goes within seconds then
falls on both, where windows in turn still see it on one and not the other.
Pure but for awaiting the ``measure`` callbacks: the tests drive them with
made-up windows.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from .report import Row, summarize, us_per_chunk, wall_time
from .stats import Trace, delivered_rate

FLOOR = "raw"


@dataclass
class Window:
    """One measurement window of a sweep point: its streams' traces and the CPU spent meanwhile."""

    traces: list[Trace]
    server_cpu: float
    client_cpu: float

    def us_per_chunk(self) -> float:
        return us_per_chunk(self.server_cpu, sum(t.chunks for t in self.traces))


def window_order(transports: Sequence[str], rounds: int) -> list[str]:
    """The windows of a sweep point in the order they are measured: each transport between two
    raw TCP windows, round after round (``transports`` without the floor). One round takes raw TCP
    once, first: a single round gives no median to steady, and ``--quick`` stays as short as it was."""
    if not transports:
        return [FLOOR] * rounds
    if rounds == 1:
        return [FLOOR, *transports]
    order: list[str] = []
    for _ in range(rounds):
        for transport in transports:
            order += [FLOOR, transport]
    return [*order, FLOOR]


async def in_rounds(transports: Sequence[str], rounds: int,
                    measure: Callable[[str], Awaitable[Window]]) -> dict[str, list[Window]]:
    """Each transport's windows (the floor's first), measured in :func:`window_order`."""
    others = [t for t in transports if t != FLOOR]
    windows: dict[str, list[Window]] = {FLOOR: [], **{t: [] for t in others}}
    for transport in window_order(others, rounds):
        windows[transport].append(await measure(transport))
    return windows


def floor_around(floor: Sequence[float], transports: int, index: int) -> list[float]:
    """For the transport at ``index`` (of ``transports``, the floor not counted), the floor's us/chunk
    its window of each round is compared with: the mean of the raw TCP windows just before and just
    after it (the one of them measured, where the other is too short to measure; NaN where neither)."""
    if len(floor) == 1:  # one round, raw TCP once (see window_order)
        return list(floor)
    rounds = (len(floor) - 1) // transports if transports else 0
    out = []
    for r in range(rounds):
        k = r * transports + index
        around = [x for x in (floor[k], floor[k + 1]) if not math.isnan(x)]
        out.append(sum(around) / len(around) if around else math.nan)
    return out


async def in_pairs(transports: Sequence[str], rounds: int,
                   measure: Callable[[str], Awaitable[tuple[Window, Window]]]) -> dict[str, list[Window]]:
    """Each transport's windows, the floor's first, from ``measure(transport)``: a transport's window
    and the raw TCP window measured beside it. Round after round, each transport once; the floor's list
    holds the raw TCP windows in that order."""
    others = [t for t in transports if t != FLOOR]
    windows: dict[str, list[Window]] = {FLOOR: [], **{t: [] for t in others}}
    for _ in range(rounds):
        for transport in others:
            window, floor = await measure(transport)
            windows[transport].append(window)
            windows[FLOOR].append(floor)
    return windows


def floor_beside(floor: Sequence[float], transports: int, index: int) -> list[float]:
    """For the transport at ``index`` (of ``transports``), the floor's us/chunk of the raw TCP windows
    measured beside its windows (see :func:`in_pairs`), one a round."""
    return list(floor[index::transports]) if transports else []


def pool_rounds(transport: str, windows: Sequence[Window], *, rate: float, streams: int,
                floor: Sequence[float] = ()) -> tuple[Row, list[Trace]]:
    """One sweep row from a transport's rounds: traces pooled, CPU summed, each round's us/chunk kept,
    and beside it the floor that round is compared with (``floor``, see :func:`floor_around`)."""
    traces = [t for w in windows for t in w.traces]
    # the rounds' own windows: the span from the first to the last would take in the other transports' windows
    wall = sum(wall_time(w.traces) for w in windows)
    rates = [r for r in (delivered_rate(w.traces) for w in windows) if not math.isnan(r)]
    row, traces = summarize("concurrency", transport, traces, rate=rate, streams=streams,
                            server_cpu=sum(w.server_cpu for w in windows),
                            client_cpu=sum(w.client_cpu for w in windows), wall=wall,
                            server_us_rounds=[w.us_per_chunk() for w in windows],
                            total_rate=sum(rates) / len(rates) if rates else math.nan)
    row.raw_us_rounds = list(floor)
    return row, traces


def pool_point(windows: dict[str, list[Window]], *, rate: float, streams: int,
               paired: bool = False) -> list[tuple[Row, list[Trace]]]:
    """The rows of one sweep point from :func:`in_rounds`' windows (:func:`in_pairs`' with ``paired``),
    the floor's first."""
    floor = [w.us_per_chunk() for w in windows[FLOOR]]
    others = [t for t in windows if t != FLOOR]
    floor_of = floor_beside if paired else floor_around
    rows = [pool_rounds(FLOOR, windows[FLOOR], rate=rate, streams=streams)]
    for index, transport in enumerate(others):
        rows.append(pool_rounds(transport, windows[transport], rate=rate, streams=streams,
                                floor=floor_of(floor, len(others), index)))
    return rows
