"""What a run found: result rows, the printed tables, the targets, JSON and CSV.

One :class:`Row` per (scenario, transport, number of streams), computed from
traces by :func:`summarize`; :class:`Results` keeps the rows (and the traces,
for plots); :func:`evaluate` and :func:`render` read them into the targets and
the printed tables. One module, because the results and their tables refer to
each other (the JSON carries the targets). Pure: no network, no heavy imports.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .capacity import LOAD_P99_MS, MIN_DELIVERED, Capacity, capacities, holds
from .stats import Trace, delivered_rate, ms, percentile, pooled

NAMES = {"raw": "raw TCP", "ws": "WebSocket", "sse": "SSE", "stream": "NDJSON", "openai": "OpenAI SSE"}
LATENCY_RATIO = 2.0  # p50 latency at most twice the raw TCP floor
MIN_CHUNK_RATE = 10_000.0  # chunks/s in one stream
LOAD_STREAMS = 500  # 500 streams at 20/s hold: p99 under 50 ms, 95 % of the asked chunks delivered
CPU_RATIO = 1.4  # server CPU per chunk at LOAD_STREAMS at most 1.4 times the raw TCP server's
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
    asked_rate: float = math.nan  # chunks/s asked for: streams x the set rate (NaN when unpaced)
    delivered: float = math.nan  # total_rate / asked_rate: a server short of CPU stretches its pacing
    bytes_per_chunk: float = math.nan
    server_cpu_pct: float = math.nan  # of one core, while the streams ran
    client_cpu_pct: float = math.nan
    server_us_per_chunk: float = math.nan  # server CPU per chunk delivered: its cost, whatever else ran
    errors: int = 0
    #: server_us_per_chunk of each round of a sweep point (empty where the row is not a sweep point's)
    server_us_rounds: list[float] = field(default_factory=list)
    #: the raw TCP floor each of those rounds is compared with: the mean of the raw windows measured just
    #: before and just after it (empty for raw TCP itself, and in JSON from before it was kept)
    raw_us_rounds: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """A row back from JSON (where unmeasured figures are null)."""
        fields: dict[str, Any] = {k: ([_nan(x) for x in v] if isinstance(v, list) else _nan(v))
                                  for k, v in data.items()}
        return cls(**fields)


def _nan(value: Any) -> Any:
    return math.nan if value is None else value


def wall_time(traces: Sequence[Trace]) -> float:
    """Seconds from the first request sent to the last chunk received (NaN if none arrived)."""
    receiving = [t for t in traces if t.chunks]
    return max(t.received[-1] for t in receiving) - min(t.sent for t in traces) if receiving else math.nan


def us_per_chunk(server_cpu: float, chunks: int) -> float:
    """The server's CPU per chunk delivered, in microseconds."""
    # /proc counts CPU in 10 ms ticks: a per-chunk cost from a handful of ticks would be noise
    return 1e6 * server_cpu / chunks if chunks and server_cpu >= MIN_CPU_SECONDS else math.nan


def summarize(section: str, transport: str, traces: list[Trace], *, rate: float = math.nan, streams: int = 1,
              server_cpu: float = math.nan, client_cpu: float = math.nan, wall: float = math.nan,
              server_us_rounds: Sequence[float] = (), total_rate: float = math.nan) -> tuple[Row, list[Trace]]:
    """A row from the traces of one measurement (returned with them, for :meth:`Results.add`).

    ``wall`` is the time the CPU figures were spent in, by default the traces' span; rounds
    pooled from windows taken in turn with other transports pass the sum of their own windows,
    and their mean ``total_rate`` (over the span of all rounds it would count the gaps between).
    """
    lat, jit = pooled(traces, "latencies"), pooled(traces, "jitter")
    ttft = [t.ttft() for t in traces if t.chunks]
    rates = [r for r in (t.client_rate() for t in traces) if not math.isnan(r)]
    chunks = sum(t.chunks for t in traces)
    if math.isnan(wall):
        wall = wall_time(traces)
    if math.isnan(total_rate):
        total_rate = delivered_rate(traces)
    asked = streams * rate if rate > 0 else math.nan
    row = Row(
        section=section, transport=transport, streams=streams, rate=rate, chunks=chunks,
        ttft_p50_ms=ms(percentile(ttft, 50)), ttft_p99_ms=ms(percentile(ttft, 99)),
        latency_p50_ms=ms(percentile(lat, 50)), latency_p99_ms=ms(percentile(lat, 99)),
        jitter_p50_ms=ms(percentile(jit, 50)), jitter_p99_ms=ms(percentile(jit, 99)),
        rate_per_stream=sum(rates) / len(rates) if rates else math.nan,
        total_rate=total_rate, asked_rate=asked, delivered=total_rate / asked,
        bytes_per_chunk=sum(t.wire_bytes for t in traces) / chunks if chunks else math.nan,
        server_cpu_pct=100 * server_cpu / wall if wall > 0 else math.nan,
        client_cpu_pct=100 * client_cpu / wall if wall > 0 else math.nan,
        server_us_per_chunk=us_per_chunk(server_cpu, chunks),
        errors=sum(1 for t in traces if t.status not in GOOD_STATUSES),
        server_us_rounds=list(server_us_rounds),
    )
    return row, traces


def error_summary(traces: Iterable[Trace], most: int = 3) -> str:
    """The commonest ways the streams of one measurement ended badly, with their counts."""
    found = Counter(t.status for t in traces if t.status not in GOOD_STATUSES)
    return "; ".join(f"{count} x {status[:160]}" for status, count in found.most_common(most))


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
        if row.errors:  # the count alone would not say what failed
            self.notes.append(f"{row.section} {NAMES.get(row.transport, row.transport)} x{row.streams}: "
                              f"{row.errors} streams failed: {error_summary(traces)}")

    def get(self, section: str, transport: str, streams: int = 1) -> Row | None:
        return next((r for r in self.rows if (r.section, r.transport, r.streams) == (section, transport, streams)),
                    None)

    def transports(self) -> list[str]:
        return list(dict.fromkeys(r.transport for r in self.rows))

    # ------------------------------------------------------------ outputs

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "notes": self.notes, "rows": [_clean(dataclasses.asdict(r)) for r in self.rows],
                "targets": [_clean(dataclasses.asdict(t)) for t in self.targets()],
                "capacity": [_clean(dataclasses.asdict(c)) for c in self.capacity()]}

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | Path) -> None:
        names = [f.name for f in dataclasses.fields(Row)]
        with Path(path).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: _cell(v) for k, v in _clean(dataclasses.asdict(row)).items()})

    def targets(self) -> list[Target]:
        return evaluate(self)

    def capacity(self) -> list[Capacity]:
        """Each transport's knee and saturation throughput in the concurrency sweep."""
        return capacities(r for r in self.rows if r.section == "concurrency")

    def table(self) -> str:
        return render(self)


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: unmeasured figures become null (an empty CSV cell)."""
    return {k: ([_null(x) for x in v] if isinstance(v, list) else _null(v)) for k, v in d.items()}


def _null(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _cell(value: Any) -> Any:
    """A CSV cell: a list (one figure per round) as its figures separated by spaces, null ones as nan."""
    if isinstance(value, list):
        return " ".join("nan" if x is None else str(x) for x in value)
    return value


# ---------------------------------------------------------------- targets and tables


@dataclass
class Target:
    name: str
    transport: str
    measured: str
    passed: bool | None  # None: not measured in this run
    baseline: str = ""
    #: the figure of each round where the target takes their median (NaN: a round too short to measure)
    rounds: list[float] = field(default_factory=list)


def fmt(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def grid(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A plain text table, first column left-aligned, the rest right-aligned."""
    lines = [list(header), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def render(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    return "\n".join([render(lines[0]), "  ".join("-" * w for w in widths), *(render(r) for r in lines[1:])])


def _name(transport: str) -> str:
    return NAMES.get(transport, transport)


def evaluate(results: Results) -> list[Target]:
    """The four targets per transport, each against the raw TCP floor of the same run."""
    out: list[Target] = []
    raw_lat, raw_max = results.get("latency", "raw"), results.get("max_rate", "raw")
    for transport in (t for t in results.transports() if t != "raw"):
        lat = results.get("latency", transport)
        if lat is not None and raw_lat is not None:
            ratio = lat.latency_p50_ms / raw_lat.latency_p50_ms
            out.append(Target(f"p50 latency <= {LATENCY_RATIO:g}x raw TCP", transport,
                              f"{fmt(lat.latency_p50_ms, 3)} ms ({ratio:.2f}x)", ratio <= LATENCY_RATIO,
                              f"raw {fmt(raw_lat.latency_p50_ms, 3)} ms"))
        top = results.get("max_rate", transport)
        if top is not None:
            base = f"raw {fmt(raw_max.rate_per_stream)}/s" if raw_max is not None else ""
            ratio_text = f" ({top.rate_per_stream / raw_max.rate_per_stream:.2f}x raw)" if raw_max else ""
            out.append(Target(f">= {MIN_CHUNK_RATE:,.0f} chunks/s in one stream", transport,
                              f"{fmt(top.rate_per_stream)}/s{ratio_text}", top.rate_per_stream >= MIN_CHUNK_RATE,
                              base))
        out.append(_load_target(results, transport))
        out.append(_cpu_target(results, transport))
    return out


def _load_target(results: Results, transport: str) -> Target:
    name = f"{LOAD_STREAMS} streams x 20/s, p99 < {LOAD_P99_MS:g} ms, >= {MIN_DELIVERED:.0%} delivered"
    load, raw = results.get("concurrency", transport, LOAD_STREAMS), results.get("concurrency", "raw", LOAD_STREAMS)
    if load is None:
        return Target(name, transport, "not run (the full run includes it)", None)
    base = f"raw p99 {fmt(raw.latency_p99_ms)} ms, {_pct(raw.delivered)} delivered" if raw is not None else ""
    passed = holds(load) and load.errors == 0
    return Target(name, transport, f"p99 {fmt(load.latency_p99_ms)} ms, {_pct(load.delivered)} delivered",
                  passed, base)


def _pct(fraction: float) -> str:
    return "-" if math.isnan(fraction) else f"{100 * fraction:.0f}%"


def _cpu_target(results: Results, transport: str) -> Target:
    name = f"server us/chunk <= {CPU_RATIO:g}x raw TCP"
    load, raw = results.get("concurrency", transport, LOAD_STREAMS), results.get("concurrency", "raw", LOAD_STREAMS)
    if load is None or raw is None:
        return Target(name, transport, "not run (the full run includes it)", None)
    ratios = round_ratios(load, raw)
    measured = [r for r in ratios if not math.isnan(r)]
    base = f"raw {fmt(raw.server_us_per_chunk, 1)} us"
    if not measured:
        return Target(name, transport, "too little server CPU to measure", None, base, ratios)
    # the median of ratios taken round by round: a burst of load from elsewhere falls on one round's raw and
    # transport windows alike, and a round it skewed anyway does not move the median
    ratio, count = percentile(measured, 50), len(measured)
    text = f"{fmt(load.server_us_per_chunk, 1)} us ({ratio:.2f}x, median of {count} round{'s' if count > 1 else ''})"
    if results.config.get("serve_args"):  # --store, --workers: compared with a run on the memory store instead
        return Target(name, transport, f"{text}; the target is for one process on the memory store", None,
                      base, ratios)
    return Target(name, transport, text, ratio <= CPU_RATIO, base, ratios)


def round_ratios(row: Row, raw: Row) -> list[float]:
    """The row's server us/chunk over raw TCP's, round by round, each against the floor measured around
    it where the row has one; rows without rounds (from before rounds were kept) count as one round of
    their pooled figures."""
    ours = row.server_us_rounds or [row.server_us_per_chunk]
    theirs = row.raw_us_rounds or raw.server_us_rounds or [raw.server_us_per_chunk]
    return [a / b for a, b in zip(ours, theirs, strict=False)]


def _single(results: Results) -> str:
    raw = results.get("latency", "raw")
    rows = []
    for transport in results.transports():
        ttft, lat, top = (results.get(s, transport) for s in ("ttft", "latency", "max_rate"))
        ratio = lat.latency_p50_ms / raw.latency_p50_ms if lat is not None and raw is not None else math.nan
        rows.append([_name(transport),
                     fmt(ttft.ttft_p50_ms) if ttft else "-",
                     fmt(lat.latency_p50_ms, 3) if lat else "-", fmt(lat.latency_p99_ms) if lat else "-",
                     fmt(ratio), fmt(lat.jitter_p99_ms) if lat else "-",
                     fmt(top.rate_per_stream) if top else "-", fmt(lat.bytes_per_chunk, 1) if lat else "-"])
    rate = results.config.get("latency_rate", math.nan)
    wan = results.config.get("wan")
    where = (f"over an emulated WAN (netem {wan['delay_ms']:g} ms each way, {wan['loss_pct']:g}% loss)" if wan
             else "on loopback")
    title = f"One stream {where} (latency and jitter at {fmt(rate, 0)} chunks/s; max rate at rate 0)"
    header = ["transport", "TTFT p50 ms", "lat p50 ms", "lat p99 ms", "p50 x raw", "jitter p99 ms",
              "max chunks/s", "bytes/chunk"]
    return title + "\n" + grid(header, rows)


def _load_rows(results: Results, section: str) -> list[Row]:
    order = {t: i for i, t in enumerate(NAMES)}
    return sorted((r for r in results.rows if r.section == section),
                  key=lambda r: (r.streams, order.get(r.transport, len(order))))


def _concurrency(results: Results) -> str:
    rows = [[_name(r.transport), str(r.streams), fmt(r.latency_p50_ms), fmt(r.latency_p99_ms),
             fmt(r.rate_per_stream), f"{fmt(r.total_rate, 0)} / {fmt(r.asked_rate, 0)}", _pct(r.delivered),
             fmt(r.server_cpu_pct, 0), fmt(r.server_us_per_chunk, 0), fmt(r.client_cpu_pct, 0), str(r.errors)]
            for r in _load_rows(results, "concurrency")]
    rate, rounds = results.config.get("concurrency_rate", math.nan), results.config.get("rounds", 1)
    header = ["transport", "streams", "lat p50 ms", "lat p99 ms", "per stream/s", "delivered / asked /s",
              "delivered", "server CPU%", "server us/chunk", "client CPU%", "errors"]
    pooled_rounds = f", {rounds} rounds pooled" if rounds > 1 else ""
    title = f"Concurrent streams at {fmt(rate, 0)} chunks/s each ({_servers(results.config)}{pooled_rounds})"
    return title + "\n" + grid(header, rows)


def serve_workers(serve_args: Sequence[str]) -> int:
    """Processes per measured server: the ``--workers N`` among the ``nbchat serve`` options."""
    args = list(serve_args)
    return int(args[args.index("--workers") + 1]) if "--workers" in args[:-1] else 1


def _servers(config: dict[str, Any]) -> str:
    """How the measured servers ran: their CPU quota, if any; raw TCP is never capped."""
    cpus = config.get("server_cpus") or 0.0
    if not cpus:
        return "servers uncapped"
    workers = serve_workers(config.get("serve_args") or ())
    per = f"{workers} workers x {cpus:g} cores" if workers > 1 else f"{cpus:g} cores"
    return f"each nbchat server held to {per}, raw TCP uncapped"


def _capacity(results: Results) -> str:
    found = results.capacity()
    ceiling = next((c.saturation_rate for c in found if c.transport == "raw"), math.nan)
    rows = []
    for c in found:
        # a transport near the ceiling was held back by the load generator: the server may have more to give
        share = "the load generator's ceiling" if c.transport == "raw" else _pct(c.saturation_rate / ceiling)
        if c.generator_bound:
            share += ": the generator's limit, not the server's"
        rows.append([_name(c.transport), str(c.knee) if c.knee else "none",
                     f"{fmt(c.saturation_rate)} at {c.saturation_streams}", share, c.first_miss or "-"])
    title = (f"Capacity: a point holds when p99 < {LOAD_P99_MS:g} ms and >= {MIN_DELIVERED:.0%} of the asked "
             "chunks/s arrived; knee = largest count up to which every point holds")
    header = ["transport", "knee (streams)", "saturation chunks/s", "of raw TCP's", "first miss"]
    return title + "\n" + grid(header, rows)


def _model(results: Results) -> str:
    rows = [[_name(r.transport), fmt(r.ttft_p50_ms), fmt(r.latency_p50_ms, 3), fmt(r.latency_p99_ms),
             fmt(r.jitter_p99_ms), fmt(r.rate_per_stream)] for r in _load_rows(results, "model")]
    header = ["transport", "TTFT p50 ms", "lat p50 ms", "lat p99 ms", "jitter p99 ms", "chunks/s"]
    return "Embedded model (smollm2)\n" + grid(header, rows)


def _targets(results: Results) -> str:
    mark = {True: "PASS", False: "MISS", None: "-"}
    rows = [[mark[t.passed], t.name, _name(t.transport), t.measured, t.baseline] for t in results.targets()]
    return "Targets\n" + grid(["", "target", "transport", "measured", "baseline (same run)"], rows)


def render(results: Results) -> str:
    parts = [_single(results)]
    if any(r.section == "concurrency" for r in results.rows):
        parts.extend([_concurrency(results), _capacity(results)])
    if any(r.section == "model" for r in results.rows):
        parts.append(_model(results))
    parts.append(_targets(results))
    parts.extend(f"note: {n}" for n in results.notes)
    return "\n\n".join(parts)
