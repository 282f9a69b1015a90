"""Figures of a benchmark run, with matplotlib (imported here only: the ``bench`` extra).

Each function takes :class:`~.report.Results` (or traces) and returns a Figure,
so a notebook cell is one call.
"""

from __future__ import annotations

import math
from typing import Any

from .report import NAMES, Results
from .stats import Trace, ms, pooled

COLORS = {"raw": "#777777", "ws": "#1f77b4", "sse": "#ff7f0e", "stream": "#2ca02c", "openai": "#d62728"}


def _plt() -> Any:
    # pyplot picks the notebook's inline backend in a kernel, and Agg where there is no display
    import matplotlib.pyplot as plt

    return plt


def _bars(results: Results, section: str, attr: str, ylabel: str, title: str) -> Any:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    rows = [r for r in results.rows if r.section == section and r.streams == 1]
    values = [getattr(r, attr) for r in rows]
    ax.bar([NAMES[r.transport] for r in rows], values, color=[COLORS[r.transport] for r in rows])
    for i, v in enumerate(values):
        if not math.isnan(v):
            ax.annotate(f"{v:.2f}" if v < 100 else f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_ttft(results: Results) -> Any:
    """Time to first token per transport (warm connection, echo at rate 0)."""
    return _bars(results, "ttft", "ttft_p50_ms", "ms (p50)", "Time to first token on loopback")


def plot_bytes(results: Results) -> Any:
    """Bytes on the wire per chunk (four characters of content), framing included."""
    return _bars(results, "latency", "bytes_per_chunk", "bytes per chunk", "Bytes on the wire per 4-character chunk")


def plot_intervals(results: Results) -> Any:
    """Inter-chunk interval at the client against the server's emit cadence, per transport."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    transports = [t for t in results.transports() if ("latency", t, 1) in results.traces]
    data, labels = [], []
    for t in transports:
        traces = results.traces[("latency", t, 1)]
        data += [[ms(x) for x in pooled(traces, what)] for what in ("emit_intervals", "receive_intervals")]
        labels += [f"{NAMES[t]}\nemit", f"{NAMES[t]}\nreceive"]
    ax.boxplot(data, whis=(1, 99), showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel("interval, ms (whiskers p1..p99)")
    ax.set_title(f"Inter-chunk interval at {results.config.get('latency_rate', 0):g} chunks/s: server vs client")
    fig.tight_layout()
    return fig


def plot_concurrency(results: Results) -> Any:
    """p50 and p99 one-way latency against the number of concurrent streams."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, (attr, label) in zip(axes, (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")), strict=True):
        for t in results.transports():
            rows = sorted((r for r in results.rows if r.section == "concurrency" and r.transport == t),
                          key=lambda r: r.streams)
            if rows:
                ax.plot([r.streams for r in rows], [getattr(r, attr) for r in rows], marker="o",
                        color=COLORS[t], label=NAMES[t], linestyle="--" if t == "raw" else "-")
        ax.set_xscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_title(f"{label} latency at {results.config.get('concurrency_rate', 0):g} chunks/s each")
    axes[0].set_ylabel("one-way latency, ms")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_emit_vs_receive(traces: dict[str, Trace]) -> Any:
    """Receive time against emit time, one line per labelled trace: a buffering proxy shows as steps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for label, trace in traces.items():
        t0 = trace.emitted[0]
        ax.step([ms(e - t0) for e in trace.emitted], [ms(r - t0) for r in trace.received], where="post",
                marker=".", label=label)
    ax.set_xlabel("server emit time, ms")
    ax.set_ylabel("client receive time, ms")
    ax.set_title("Emit vs receive: live streams follow the diagonal")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
