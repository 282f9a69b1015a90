"""What a run found: result rows, the printed tables, the targets, JSON and CSV.

One :class:`Row` per (scenario, transport, number of streams), computed from
traces by :func:`summarize`; :class:`Results` keeps the rows (and the traces,
for plots) and renders them through :mod:`.tables`. Pure: no network, no heavy imports.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import Trace, delivered_rate, ms, percentile, pooled
from .tables import Target

GOOD_STATUSES = {"[DONE]", "[TOKENS]", "eof"}
MIN_CPU_SECONDS = 0.2


@dataclass
class Row:
    section: str
    transport: str
    streams: int = 1
    rate: float = math.nan  # the set rate per stream (chunks/s), NaN when unpaced
    chunks: int = 0
    ttft_p50_ms: float = math.nan
    ttft_p99_ms: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    jitter_p50_ms: float = math.nan
    jitter_p99_ms: float = math.nan
    rate_per_stream: float = math.nan  # chunks/s at the client, mean over streams
    total_rate: float = math.nan  # chunks/s delivered to all streams together
    bytes_per_chunk: float = math.nan
    server_cpu_pct: float = math.nan  # of one core, while the streams ran
    client_cpu_pct: float = math.nan
    server_us_per_chunk: float = math.nan  # server CPU per chunk delivered: its cost, whatever else ran
    errors: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """A row back from JSON (where unmeasured figures are null)."""
        fields: dict[str, Any] = {k: (math.nan if v is None else v) for k, v in data.items()}
        return cls(**fields)


def summarize(section: str, transport: str, traces: list[Trace], *, rate: float = math.nan, streams: int = 1,
              server_cpu: float = math.nan, client_cpu: float = math.nan) -> tuple[Row, list[Trace]]:
    """A row from the traces of one measurement (returned with them, for :meth:`Results.add`)."""
    lat, jit = pooled(traces, "latencies"), pooled(traces, "jitter")
    ttft = [t.ttft() for t in traces if t.chunks]
    rates = [r for r in (t.client_rate() for t in traces) if not math.isnan(r)]
    chunks = sum(t.chunks for t in traces)
    receiving = [t for t in traces if t.chunks]
    wall = max(t.received[-1] for t in receiving) - min(t.sent for t in traces) if receiving else math.nan
    row = Row(
        section=section, transport=transport, streams=streams, rate=rate, chunks=chunks,
        ttft_p50_ms=ms(percentile(ttft, 50)), ttft_p99_ms=ms(percentile(ttft, 99)),
        latency_p50_ms=ms(percentile(lat, 50)), latency_p99_ms=ms(percentile(lat, 99)),
        jitter_p50_ms=ms(percentile(jit, 50)), jitter_p99_ms=ms(percentile(jit, 99)),
        rate_per_stream=sum(rates) / len(rates) if rates else math.nan, total_rate=delivered_rate(traces),
        bytes_per_chunk=sum(t.wire_bytes for t in traces) / chunks if chunks else math.nan,
        server_cpu_pct=100 * server_cpu / wall if wall > 0 else math.nan,
        client_cpu_pct=100 * client_cpu / wall if wall > 0 else math.nan,
        # /proc counts CPU in 10 ms ticks: a per-chunk cost from a handful of ticks would be noise
        server_us_per_chunk=1e6 * server_cpu / chunks if chunks and server_cpu >= MIN_CPU_SECONDS else math.nan,
        errors=sum(1 for t in traces if t.status not in GOOD_STATUSES),
    )
    return row, traces


@dataclass
class Results:
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    traces: dict[tuple[str, str, int], list[Trace]] = field(default_factory=dict, repr=False)

    def add(self, summary: tuple[Row, list[Trace]]) -> None:
        row, traces = summary
        self.rows.append(row)
        self.traces[(row.section, row.transport, row.streams)] = traces

    def get(self, section: str, transport: str, streams: int = 1) -> Row | None:
        return next((r for r in self.rows if (r.section, r.transport, r.streams) == (section, transport, streams)),
                    None)

    def transports(self) -> list[str]:
        return list(dict.fromkeys(r.transport for r in self.rows))

    # ------------------------------------------------------------ outputs

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "notes": self.notes, "rows": [_clean(dataclasses.asdict(r)) for r in self.rows],
                "targets": [dataclasses.asdict(t) for t in self.targets()]}

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> None:
        names = [f.name for f in dataclasses.fields(Row)]
        with Path(path).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for row in self.rows:
                writer.writerow(_clean(dataclasses.asdict(row)))

    def targets(self) -> list[Target]:
        from .tables import evaluate

        return evaluate(self)

    def table(self) -> str:
        from .tables import render

        return render(self)


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: unmeasured figures become null (an empty CSV cell)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
