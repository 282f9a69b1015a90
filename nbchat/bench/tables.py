"""The printed report: the per-transport tables and the targets with PASS/MISS."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for annotations only: report imports this module, not the other way round
    from .report import Results, Row

NAMES = {"raw": "raw TCP", "ws": "WebSocket", "sse": "SSE", "stream": "NDJSON", "openai": "OpenAI SSE"}
LATENCY_RATIO = 2.0  # p50 latency at most twice the raw TCP floor
MIN_CHUNK_RATE = 10_000.0  # chunks/s in one stream
LOAD_STREAMS, LOAD_P99_MS = 500, 50.0  # 500 streams at 20/s with p99 under 50 ms


@dataclass
class Target:
    name: str
    transport: str
    measured: str
    passed: bool | None  # None: not measured in this run
    baseline: str = ""


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
    """The three targets per transport, each against the raw TCP floor of the same run."""
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
    return out


def _load_target(results: Results, transport: str) -> Target:
    name = f"{LOAD_STREAMS} streams x 20/s, p99 < {LOAD_P99_MS:g} ms"
    load, raw = results.get("concurrency", transport, LOAD_STREAMS), results.get("concurrency", "raw", LOAD_STREAMS)
    if load is None:
        return Target(name, transport, "not run (the full run includes it)", None)
    base = f"raw p99 {fmt(raw.latency_p99_ms)} ms" if raw is not None else ""
    passed = load.latency_p99_ms < LOAD_P99_MS and load.errors == 0
    return Target(name, transport, f"p99 {fmt(load.latency_p99_ms)} ms, {fmt(load.rate_per_stream)}/s per stream",
                  passed, base)


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
             fmt(r.rate_per_stream), fmt(r.total_rate), fmt(r.server_cpu_pct, 0), fmt(r.server_us_per_chunk, 0),
             fmt(r.client_cpu_pct, 0), str(r.errors)] for r in _load_rows(results, "concurrency")]
    rate = results.config.get("concurrency_rate", math.nan)
    header = ["transport", "streams", "lat p50 ms", "lat p99 ms", "per stream/s", "total/s", "server CPU%",
              "server us/chunk", "client CPU%", "errors"]
    return f"Concurrent streams at {fmt(rate, 0)} chunks/s each\n" + grid(header, rows)


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
        parts.append(_concurrency(results))
    if any(r.section == "model" for r in results.rows):
        parts.append(_model(results))
    parts.append(_targets(results))
    parts.extend(f"note: {n}" for n in results.notes)
    return "\n\n".join(parts)
