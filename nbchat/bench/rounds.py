"""A sweep point measured in rounds: the order of the windows, and each transport's own floor.

A busy machine moves a window's CPU per chunk by a third from one window to
the next. So within a round every transport's window has a raw TCP window
right before it and right after it (raw, ws, raw, sse, raw, stream, raw: the
next round starts with the last raw window of this one), and each transport's
figure is compared with the mean of those two: a burst of load from
elsewhere that lasts a window or two falls on the transport and on its own
floor alike, and load that rises or falls steadily across a round is
averaged out on the floor's side. Pure but for awaiting the ``measure``
callback: the tests drive it with made-up windows.
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
    raw TCP windows, round after round (``transports`` without the floor)."""
    if not transports:
        return [FLOOR] * rounds
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
    rounds = (len(floor) - 1) // transports if transports else 0
    out = []
    for r in range(rounds):
        k = r * transports + index
        around = [x for x in (floor[k], floor[k + 1]) if not math.isnan(x)]
        out.append(sum(around) / len(around) if around else math.nan)
    return out


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


def pool_point(windows: dict[str, list[Window]], *, rate: float, streams: int) -> list[tuple[Row, list[Trace]]]:
    """The rows of one sweep point from :func:`in_rounds`' windows, the floor's first."""
    floor = [w.us_per_chunk() for w in windows[FLOOR]]
    others = [t for t in windows if t != FLOOR]
    rows = [pool_rounds(FLOOR, windows[FLOOR], rate=rate, streams=streams)]
    for index, transport in enumerate(others):
        rows.append(pool_rounds(transport, windows[transport], rate=rate, streams=streams,
                                floor=floor_around(floor, len(others), index)))
    return rows
