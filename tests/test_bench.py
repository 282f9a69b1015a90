"""The transport benchmark, layer by layer: the arithmetic, the report, the sans-I/O
chunked decoder, real mini runs of every transport, the buffering check, the command."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbchat.bench.buffering import BufferingProxy, assess, detect_buffering
from nbchat.bench.measure import ClientStreamer, echo_message, open_streamer, wire_bytes
from nbchat.bench.rawtcp import _serve_stream, stream_raw
from nbchat.bench.report import Results, Row, summarize
from nbchat.bench.runner import BenchConfig, load_limits
from nbchat.bench.stats import Trace, delivered_rate, percentile
from nbchat.bench.wire import ChunkedDecoder, parse_host_port
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from nbchat.wire.events import Chunk

TOKEN = "bench-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]
TRANSPORTS = ("ws", "sse", "stream", "openai")


# ---------------------------------------------------------------- arithmetic


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def synthetic(n: int = 5, interval: float = 0.1, delays: tuple[float, ...] = (0.001,)) -> Trace:
    trace = Trace(sent=99.95, status="[DONE]")
    for i in range(n):
        emitted = 100.0 + i * interval
        trace.add(emitted, emitted + delays[i % len(delays)])
    return trace


def test_trace_latency_jitter_rate_and_ttft() -> None:
    trace = synthetic(delays=(0.001, 0.003))
    assert trace.latencies() == pytest.approx([0.001, 0.003, 0.001, 0.003, 0.001])
    assert trace.jitter() == pytest.approx([0.002] * 4)
    assert trace.client_rate() == pytest.approx(10.0, rel=0.01)
    assert trace.ttft() == pytest.approx(0.051)
    assert delivered_rate([trace, synthetic()]) == pytest.approx(10 / 0.402, rel=0.01)
    assert math.isnan(Trace(sent=0.0).ttft())


def test_buffering_assessment_from_timings() -> None:
    live = synthetic(n=20, interval=0.02)
    assert not assess(live).buffered
    bursty = Trace(sent=0.0)
    for i in range(20):  # emitted every 20 ms, received four at a time
        bursty.add(i * 0.02, (i // 4 + 1) * 0.08 + 0.001)
    report = assess(bursty)
    assert report.buffered and report.arrivals == 5
    assert "BUFFERED" in str(report)


# ---------------------------------------------------------------- report


def sample_results() -> Results:
    results = Results(config={"latency_rate": 100.0, "concurrency_rate": 20.0})
    for transport, delay in (("raw", 0.0002), ("ws", 0.0003), ("openai", 0.0009)):
        results.add(summarize("latency", transport, [synthetic(n=50, interval=0.01, delays=(delay,))], rate=100.0))
        results.add(summarize("max_rate", transport, [synthetic(n=50, interval=1e-5 if transport == "ws" else 1e-3)]))
        results.add(summarize("concurrency", transport, [synthetic(), synthetic()], rate=20.0, streams=500,
                              server_cpu=0.1, client_cpu=0.05))
    return results


def test_table_shows_every_transport_and_the_targets() -> None:
    text = sample_results().table()
    for needle in ("raw TCP", "WebSocket", "OpenAI SSE", "Concurrent streams at 20 chunks/s", "Targets"):
        assert needle in text
    targets = {(t.name.split()[0], t.transport): t for t in sample_results().targets()}
    assert targets[("p50", "ws")].passed and "1.50x" in targets[("p50", "ws")].measured
    assert targets[("p50", "openai")].passed is False  # 4.5x the floor
    assert targets[(">=", "ws")].passed and targets[(">=", "openai")].passed is False
    assert targets[("500", "ws")].passed
    assert "PASS" in text and "MISS" in text


def test_json_and_csv_outputs(tmp_path: Path) -> None:
    results = sample_results()
    results.rows.append(Row(section="ttft", transport="sse"))  # unmeasured figures stay empty
    results.write_json(tmp_path / "r.json")
    results.write_csv(tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"][0]["transport"] == "raw" and data["rows"][-1]["latency_p50_ms"] is None
    assert {t["transport"] for t in data["targets"]} == {"ws", "openai", "sse"}
    with (tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results.rows) and rows[-1]["latency_p50_ms"] == ""
    assert float(rows[0]["latency_p50_ms"]) == pytest.approx(0.2)


# ---------------------------------------------------------------- wire


def test_chunked_decoder_at_every_split() -> None:
    payload = [b"hello ", b"", b"world\r\n", b"x" * 300]
    framed = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in payload if p) + b"0\r\n\r\n"
    for cut in range(len(framed) + 1):
        decoder = ChunkedDecoder()
        out = decoder.feed(framed[:cut]) + decoder.feed(framed[cut:])
        assert out == b"".join(payload) and decoder.done
    one_by_one = ChunkedDecoder()
    assert b"".join(one_by_one.feed(framed[i : i + 1]) for i in range(len(framed))) == b"".join(payload)


def test_wire_bytes_grow_with_framing() -> None:
    chunk = Chunk(content="abcd", seq=7, server_time=1_700_000_000.123456)
    sizes = {t: wire_bytes(t, chunk) for t in TRANSPORTS}
    assert sizes["ws"] < sizes["stream"] < sizes["sse"] < sizes["openai"]
    assert parse_host_port("http://127.0.0.1:8765/x") == ("127.0.0.1", 8765)


@pytest.fixture(scope="module")
def echo() -> Iterator[ServerHandle]:
    handle = start_server_thread(Settings(port=0, token=TOKEN, backend="echo", rate=0.0))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def paced() -> Iterator[ServerHandle]:
    handle = start_server_thread(Settings(port=0, token=TOKEN, backend="echo", rate=100.0))
    yield handle
    handle.stop()


def check_trace(trace: Trace, chunks: int) -> None:
    assert trace.status == "[DONE]" and trace.chunks == chunks
    assert all(0 < lat < 1 for lat in trace.latencies())
    assert 0 < trace.ttft() < 1
    assert trace.wire_bytes > 40 * chunks


@pytest.mark.parametrize("client", ["wire", "nbchat"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_mini_run_of_each_transport(echo: ServerHandle, transport: str, client: str) -> None:
    async with open_streamer(echo.url, TOKEN, transport, client) as streamer:
        for _ in range(2):  # a second turn on the same connection
            check_trace(await streamer.turn(echo_message(12)), 12)
        assert isinstance(streamer, ClientStreamer) == (client == "nbchat")


async def test_paced_stream_keeps_its_cadence(paced: ServerHandle) -> None:
    async with open_streamer(paced.url, TOKEN, "ws") as streamer:
        trace = await streamer.turn(echo_message(10))
    check_trace(trace, 10)
    assert trace.client_rate() == pytest.approx(100, rel=0.3)


async def test_raw_tcp_floor() -> None:
    server = await asyncio.start_server(_serve_stream, "127.0.0.1", 0)
    async with server:
        trace = await stream_raw(server.sockets[0].getsockname()[1], 25, 0.0)
    assert trace.chunks == 25 and trace.status == "eof"
    assert all(0 < lat < 1 for lat in trace.latencies())


async def test_buffering_proxy_is_detected(paced: ServerHandle) -> None:
    assert not (await detect_buffering(paced.url, TOKEN, "stream", chunks=16)).buffered
    async with BufferingProxy(parse_host_port(paced.url)[1], flush_after=0.06) as proxy:
        report = await detect_buffering(proxy.url, TOKEN, "stream", chunks=16)
    assert report.buffered and report.arrivals <= 8


# ---------------------------------------------------------------- command


def test_bench_quick_command(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "nbchat.cli.main", "bench", "--quick", "--no-progress", "--transports", "ws,stream",
         "--concurrency", "3", "--seconds", "0.3", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for needle in ("raw TCP", "WebSocket", "NDJSON", "lat p50 ms", "Targets", "PASS"):
        assert needle in proc.stdout
    data = json.loads(out.read_text())
    assert {r["section"] for r in data["rows"]} == {"ttft", "latency", "max_rate", "concurrency"}
    assert all(r["errors"] == 0 for r in data["rows"])


# ---------------------------------------------------------------- notebook

NOTEBOOK = ROOT / "notebooks" / "transport_comparison.ipynb"


def check_comparison_notebook(nb: object) -> None:
    """A run of the notebook shows the table, a figure per section and the buffering verdicts."""
    cells = [c for c in nb.cells if c.cell_type == "code"]  # type: ignore[attr-defined]
    outputs = [o for c in cells for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{errors[0].ename}: {errors[0].evalue}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for needle in ("raw TCP", "WebSocket", "NDJSON", "OpenAI SSE", "Concurrent streams", "Targets"):
        assert needle in text
    assert "direct:  live" in text and "proxied: BUFFERED" in text
    assert "WAN section skipped" in text or "emulated WAN" in text
    figures = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert len(figures) >= 5  # TTFT, intervals, concurrency, bytes, emit vs receive


def test_committed_notebook_shows_its_results() -> None:
    nbformat = pytest.importorskip("nbformat")
    check_comparison_notebook(nbformat.read(NOTEBOOK, as_version=4))


@pytest.mark.slow
def test_notebook_runs_on_a_fresh_kernel(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / NOTEBOOK.name)  # kept for a failure's post-mortem
    check_comparison_notebook(nb)


def test_the_concurrency_server_admits_the_largest_sweep_point() -> None:
    # past --max-connections (1,000 by default) the server answers 503: a 1,500-stream point needs room
    assert load_limits(BenchConfig(concurrency=(500, 1000, 1500))) == ("--max-connections", "1756")
    assert load_limits(BenchConfig(concurrency=(1, 10, 100, 500))) == ()
