"""The transport benchmark, layer by layer: the arithmetic, the report, the sans-I/O
chunked decoder, real mini runs of every transport, the buffering check, the command."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbchat.bench.buffering import MIN_EMIT_SPREAD, BufferingProxy, BufferingReport, assess, detect_buffering
from nbchat.bench.command import add_bench_parser, config_from_args
from nbchat.bench.loadgen import child_loop, shares, spread_window, trace_from_json, trace_to_json
from nbchat.bench.measure import ClientStreamer, echo_message, open_streamer, wire_bytes
from nbchat.bench.procs import alive, descendants, python_child, raw_server
from nbchat.bench.rawtcp import _serve_stream, stream_raw
from nbchat.bench.report import Results, Row, Target, round_ratios, summarize, wall_time
from nbchat.bench.rounds import Window, floor_around, floor_beside, in_pairs, in_rounds, pool_point, window_order
from nbchat.bench.runner import BenchConfig, load_limits, warmup_chunks
from nbchat.bench.stats import Trace, delivered_rate, percentile
from nbchat.bench.wire import ChunkedDecoder, parse_host_port
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from nbchat.wire.events import Chunk
from tests.helpers import bench_command, lab_module, read_notebook

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
    assert delivered_rate([trace, synthetic()]) == pytest.approx(20.0, rel=0.01)  # two streams at 10/s
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
        streams = [synthetic(n=21, interval=0.05) for _ in range(500)]  # 20/s each: all that was asked arrived
        results.add(summarize("concurrency", transport, streams, rate=20.0, streams=500,
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


def cpu_results(rounds: dict[str, list[float]], streams: int = 500) -> Results:
    """Sweep rows at one point with each round's server us/chunk, the pooled figure their mean."""
    rows = [Row(section="concurrency", transport=t, streams=streams, server_us_per_chunk=sum(us) / len(us),
                server_us_rounds=us) for t, us in rounds.items()]
    return Results(config={"concurrency_rate": 20.0, "rounds": len(rounds["raw"])}, rows=rows)


def cpu_targets(results: Results) -> dict[str, Target]:
    return {t.transport: t for t in results.targets() if t.name.startswith("server us/chunk")}


def test_cpu_target_is_the_median_of_the_ratios_round_by_round() -> None:
    targets = cpu_targets(cpu_results({
        "raw": [10.0, 20.0, 30.0],
        "ws": [30.0, 26.0, 36.0],  # 3.0x, 1.3x, 1.2x: the mean ratio and the ratio of the means are past 1.4
        "sse": [10.0, 30.0, 45.0],  # 1.0x, 1.5x, 1.5x: the mean ratio is 1.33, the median past 1.4
        "stream": [math.nan, 26.0, 33.0],  # a round too short to measure is left out
    }))
    ws, sse, stream = targets["ws"], targets["sse"], targets["stream"]
    assert ws.passed is True and ws.measured == "30.7 us (1.30x, median of 3 rounds)"
    assert ws.baseline == "raw 20.0 us" and ws.rounds == pytest.approx([3.0, 1.3, 1.2])
    assert sse.passed is False and "(1.50x, median of 3 rounds)" in sse.measured
    assert stream.passed is True and "(1.20x, median of 2 rounds)" in stream.measured
    assert math.isnan(stream.rounds[0])


def test_cpu_target_needs_the_load_point_and_enough_cpu() -> None:
    not_run = cpu_targets(cpu_results({"raw": [10.0], "ws": [11.0]}, streams=50))["ws"]
    assert not_run.passed is None and "not run" in not_run.measured
    idle = cpu_targets(cpu_results({"raw": [math.nan, math.nan], "ws": [math.nan, 12.0]}))["ws"]
    assert idle.passed is None and "too little" in idle.measured
    old = cpu_results({"raw": [20.0], "ws": [30.0]})  # JSON from before rounds were kept: the pooled figures
    for row in old.rows:
        row.server_us_rounds = []
    assert "(1.50x, median of 1 round)" in cpu_targets(old)["ws"].measured
    shared = cpu_results({"raw": [20.0], "ws": [25.0]})  # a --store run: shown, not judged against raw TCP
    shared.config["serve_args"] = ["--store", "redis://127.0.0.1:6379/0"]
    redis = cpu_targets(shared)["ws"]
    assert redis.passed is None and redis.measured.startswith("25.0 us (1.25x") and "memory store" in redis.measured


def test_round_figures_in_json_and_csv(tmp_path: Path) -> None:
    results = cpu_results({"raw": [10.0, math.nan], "ws": [13.0, 12.5]})
    results.write_json(tmp_path / "r.json")
    results.write_csv(tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"][0]["server_us_rounds"] == [10.0, None]
    assert [t["rounds"] for t in data["targets"] if t["name"].startswith("server")] == [[1.3, None]]
    back = Row.from_dict(data["rows"][0])
    assert back.server_us_rounds[0] == 10.0 and math.isnan(back.server_us_rounds[1])
    old = {k: v for k, v in data["rows"][1].items() if k != "server_us_rounds"}
    assert Row.from_dict(old).server_us_rounds == []
    with (tmp_path / "r.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(x) for x in rows[1]["server_us_rounds"].split()] == [13.0, 12.5]
    assert math.isnan(float(rows[0]["server_us_rounds"].split()[1]))


async def test_sweep_rounds_take_turns_and_pool_into_one_row() -> None:
    order: list[str] = []
    cpu = iter([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])

    async def measure(transport: str) -> Window:
        order.append(transport)
        return Window([synthetic() for _ in range(4)], server_cpu=next(cpu), client_cpu=0.01)

    windows = await in_rounds(("raw", "ws", "sse"), 2, measure)
    # each transport between two raw TCP windows; a round's last raw window is the next round's first
    assert order == ["raw", "ws", "raw", "sse"] * 2 + ["raw"]
    results = Results()
    for row in pool_point(windows, rate=20.0, streams=4):
        results.add(row)
    assert [(r.transport, r.streams) for r in results.rows] == [("raw", 4), ("ws", 4), ("sse", 4)]
    raw, ws, sse = results.rows
    assert ws.chunks == 2 * 4 * 5 and len(results.traces[("concurrency", "ws", 4)]) == 8
    assert ws.server_us_rounds == pytest.approx([1e6 * 0.4 / 20, 1e6 * 0.8 / 20])
    assert ws.server_us_per_chunk == pytest.approx(1e6 * 1.2 / 40)
    assert len(raw.server_us_rounds) == 5 and raw.raw_us_rounds == []
    # each round against the mean of the raw windows around it
    assert ws.raw_us_rounds == pytest.approx([1e6 * 0.4 / 20, 1e6 * 0.8 / 20])
    assert sse.raw_us_rounds == pytest.approx([1e6 * 0.6 / 20, 1e6 * 1.0 / 20])
    # chunks/s of all streams together: one round's (the rounds' mean), not over the span of both
    assert ws.total_rate == pytest.approx(delivered_rate(windows["ws"][0].traces))
    # every round's window has the same span here: over their sum, not the span of all rounds
    assert ws.server_cpu_pct == pytest.approx(100 * 1.2 / (2 * wall_time([synthetic()])))
    assert ws.client_cpu_pct == pytest.approx(100 * 0.02 / (2 * wall_time([synthetic()])))


async def test_paired_rounds_compare_each_window_with_the_raw_window_beside_it() -> None:
    order: list[str] = []
    cpu = iter([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])

    async def measure(transport: str) -> tuple[Window, Window]:
        order.append(transport)
        ours = Window([synthetic() for _ in range(4)], server_cpu=next(cpu), client_cpu=0.01)
        return ours, Window([synthetic() for _ in range(4)], server_cpu=next(cpu), client_cpu=0.01)

    windows = await in_pairs(("raw", "ws", "sse"), 2, measure)
    assert order == ["ws", "sse", "ws", "sse"]  # no raw TCP window of its own: each runs beside a transport's
    rows = [row for row, _ in pool_point(windows, rate=20.0, streams=4, paired=True)]
    raw, ws, sse = rows
    assert [r.transport for r in rows] == ["raw", "ws", "sse"]
    us = [1e6 * x / 20 for x in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
    assert ws.server_us_rounds == pytest.approx([us[0], us[4]]) and ws.raw_us_rounds == pytest.approx([us[1], us[5]])
    assert sse.server_us_rounds == pytest.approx([us[2], us[6]]) and sse.raw_us_rounds == pytest.approx([us[3], us[7]])
    assert raw.server_us_rounds == pytest.approx([us[1], us[3], us[5], us[7]]) and raw.raw_us_rounds == []
    assert round_ratios(ws, raw) == pytest.approx([0.3 / 0.4, 0.7 / 0.8])
    assert floor_beside([], 0, 0) == []


def test_paired_rounds_refuse_what_they_cannot_compare() -> None:
    config = config_from_args(bench_args("--quick", "--paired", "--rounds", "3"))
    single, transports = (len(config.transports) + 1) * 3, len(config.transports)
    assert config.paired and config.steps() == single + len(config.concurrency) * transports * 3  # no raw windows
    for other in (("--load-procs", "2"), ("--server-cpus", "0.5")):
        with pytest.raises(ValueError, match="without --load-procs and --server-cpus"):
            config_from_args(bench_args("--paired", *other))


def test_window_order_puts_raw_tcp_around_every_transport() -> None:
    assert window_order(["ws"], 3) == ["raw", "ws", "raw", "ws", "raw", "ws", "raw"]
    assert window_order(["ws", "sse", "stream"], 2) == ["raw", "ws", "raw", "sse", "raw", "stream"] * 2 + ["raw"]
    assert window_order([], 2) == ["raw", "raw"]
    assert window_order(["ws", "sse"], 1) == ["raw", "ws", "sse"]  # one round: raw TCP once, as before


def test_one_round_compares_every_transport_with_its_one_raw_window() -> None:
    assert floor_around([20.0], 3, 2) == [20.0]


def test_each_round_is_compared_with_the_floor_measured_around_it() -> None:
    floor = [10.0, 20.0, 30.0, math.nan, 50.0]  # raw, ws, raw, sse, raw, ws, raw, sse, raw
    assert floor_around(floor, 2, 0) == pytest.approx([15.0, 30.0])
    assert floor_around(floor, 2, 1) == pytest.approx([25.0, 50.0])  # a window too short to measure left out
    assert math.isnan(floor_around([math.nan, math.nan], 1, 0)[0])
    # a burst of load on one round's windows: against the pooled floor it reads 2.2x, against its own 1.1x
    rows = cpu_results({"raw": [20.0, 40.0, 20.0], "ws": [22.0, 44.0]})
    rows.rows[1].raw_us_rounds = floor_around([20.0, 40.0, 20.0], 1, 0)
    assert round_ratios(rows.rows[1], rows.rows[0]) == pytest.approx([22 / 30, 44 / 30])
    plain = cpu_results({"raw": [20.0, 20.0], "ws": [44.0, 22.0]})  # JSON from before: the raw row's rounds
    assert round_ratios(plain.rows[1], plain.rows[0]) == pytest.approx([2.2, 1.1])


def test_raw_us_rounds_in_json_and_back(tmp_path: Path) -> None:
    results = cpu_results({"raw": [10.0, 20.0], "ws": [13.0]})
    results.rows[1].raw_us_rounds = [15.0]
    results.write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"][1]["raw_us_rounds"] == [15.0]
    assert Row.from_dict(data["rows"][1]).raw_us_rounds == [15.0]
    assert [t["rounds"] for t in data["targets"] if t["name"].startswith("server")] == [[13 / 15]]


def test_load_generator_shares_and_traces_round_trip() -> None:
    assert shares(500, 3) == [167, 167, 166] and sum(shares(7, 4)) == 7
    assert shares(2, 5) == [1, 1] and shares(3, 1) == [3]
    trace = synthetic()
    trace.status, trace.wire_bytes = "[DONE]", 123
    back = trace_from_json(json.loads(json.dumps(trace_to_json(trace))))
    assert back == trace
    assert warmup_chunks(BenchConfig()) == 20 and warmup_chunks(BenchConfig(concurrency_seconds=0.3)) == 6


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
    # 30 chunks (0.3 s): one late chunk on a busy machine moves the rate by a few per cent, not a third
    async with open_streamer(paced.url, TOKEN, "ws") as streamer:
        trace = await streamer.turn(echo_message(30))
    check_trace(trace, 30)
    assert trace.client_rate() == pytest.approx(100, rel=0.3)


async def test_raw_tcp_floor() -> None:
    server = await asyncio.start_server(_serve_stream, "127.0.0.1", 0)
    async with server:
        trace = await stream_raw(server.sockets[0].getsockname()[1], 25, 0.0)
    assert trace.chunks == 25 and trace.status == "eof"
    assert all(0 < lat < 1 for lat in trace.latencies())


@pytest.mark.slow  # starts load generator processes
@pytest.mark.parametrize("kind", ["raw", "stream"])
async def test_a_window_spread_over_load_generator_processes(echo: ServerHandle, kind: str) -> None:
    server = await asyncio.start_server(_serve_stream, "127.0.0.1", 0)
    url = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}" if kind == "raw" else echo.url
    readings = iter([1.0, 1.5])
    async with server:
        spec = {"kind": kind, "url": url, "token": TOKEN, "streams": 5, "n": 6, "rate": 50.0}
        traces, server_cpu, client_cpu = await spread_window(spec, 2, lambda: next(readings))
    assert len(traces) == 5 and all(t.chunks == 6 for t in traces)
    assert {t.status for t in traces} == {"eof" if kind == "raw" else "[DONE]"}
    assert all(0 < lat < 1 for t in traces for lat in t.latencies())  # one clock across the processes
    assert server_cpu == 0.5 and client_cpu > 0  # read once every child was ready and once all were done


@pytest.mark.slow  # starts a load generator process
async def test_a_load_generator_process_runs_on_uvloop() -> None:
    server = await asyncio.start_server(_serve_stream, "127.0.0.1", 0)
    spec = {"kind": "raw", "url": f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", "token": TOKEN,
            "streams": 2, "n": 3, "rate": 0.0}
    async with server, python_child(["-m", "nbchat.bench.loadgen"], limit=1 << 20) as child:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write((json.dumps(spec) + "\n").encode())
        ready = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().split()
        child.stdin.write(b"go\n")
        done = (await asyncio.wait_for(child.stdout.readline(), 60)).decode()
    assert child_loop() == "uvloop"  # the bench extra installs it
    assert ready == ["ready", "uvloop"] and done.startswith("done ")


@pytest.mark.slow  # starts the raw TCP floor's processes
async def test_raw_tcp_floor_in_several_processes_ends_with_its_parent() -> None:
    async with raw_server(processes=3) as raw:
        assert raw.process is not None
        forked = descendants(raw.process.pid)
        assert len(forked) == 2
        traces = await asyncio.gather(*(stream_raw(raw.port, 5, 0.0) for _ in range(12)))
        assert all(t.chunks == 5 and t.status == "eof" for t in traces)
    for _ in range(100):  # SIGTERM on the parent's end
        if not any(alive(pid) for pid in forked):
            break
        await asyncio.sleep(0.05)
    assert not any(alive(pid) for pid in forked)


#: a child that starts a grandchild on its own stdout, one that outlives a SIGTERM (a worker its
#: supervisor did not stop), says so, and waits
LEAVES_A_WORKER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('worker', flush=True); time.sleep(120)"])
time.sleep(120)
"""


async def test_a_child_that_leaves_a_worker_behind_ends_with_it() -> None:
    workers: list[int] = []

    async def run() -> asyncio.subprocess.Process:
        async with python_child(["-c", LEAVES_A_WORKER], grace=0.5) as child:
            assert child.stdout is not None
            assert await asyncio.wait_for(child.stdout.readline(), 30) == b"worker\n"
            workers.extend(descendants(child.pid))
        # on the way out the child ends on SIGTERM and its worker, keeping the pipe open, does not:
        # asyncio's wait() returns only once the pipe is closed
        return child

    child = await asyncio.wait_for(run(), 30)
    assert child.returncode is not None and len(workers) == 1
    for _ in range(100):
        if not alive(workers[0]):
            break
        await asyncio.sleep(0.05)
    assert not alive(workers[0])


def test_the_tree_of_a_process_already_reaped_is_empty() -> None:
    """A child that ended on its own can be reaped between a look at its return code and the look at its
    tree (a load generator that read its last chunk): its tree is then empty, not an error."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(done.stdout)
    assert not Path(f"/proc/{pid}").exists() and descendants(pid) == []


async def paced_report(url: str) -> BufferingReport:
    """The report of a turn the server did pace. A server thread starved of the CPU (by the suite's other
    worker) sends the chunks that fell due meanwhile at once, and the detector rightly cannot judge such a
    turn: it is asked again, three times at most."""
    for _ in range(3):
        report = await detect_buffering(url, TOKEN, "stream", chunks=16)
        if report.emit_interval_ms / 1000 >= MIN_EMIT_SPREAD:
            break
    return report


async def test_buffering_proxy_is_detected(paced: ServerHandle) -> None:
    direct = await paced_report(paced.url)
    assert direct.emit_interval_ms / 1000 >= MIN_EMIT_SPREAD and not direct.buffered, direct
    async with BufferingProxy(parse_host_port(paced.url)[1], flush_after=0.06) as proxy:
        report = await paced_report(proxy.url)
    assert report.buffered and report.arrivals <= 8, report


# ---------------------------------------------------------------- command


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_rounds_option() -> None:
    assert config_from_args(bench_args()).rounds == 1
    config = config_from_args(bench_args("--rounds", "3"))
    assert config.rounds == 3 and config.concurrency_seconds == BenchConfig().concurrency_seconds
    quick = config_from_args(bench_args("--quick", "--rounds", "2"))
    assert quick.rounds == 2 and quick.concurrency == BenchConfig.quick().concurrency
    assert quick.steps() == BenchConfig.quick().steps() + 3 * len(quick.transports) * len(quick.concurrency)
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            bench_args("--rounds", bad)


@pytest.mark.slow  # a whole benchmark run, servers and all
def test_bench_quick_command(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = bench_command("--transports", "ws,stream", "--concurrency", "3", "--seconds", "0.3", "--rounds", "2",
                         "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    for needle in ("raw TCP", "WebSocket", "NDJSON", "lat p50 ms", "Targets", "PASS", "2 rounds pooled"):
        assert needle in proc.stdout
    data = json.loads(out.read_text())
    assert {r["section"] for r in data["rows"]} == {"ttft", "latency", "max_rate", "concurrency"}
    assert all(r["errors"] == 0 for r in data["rows"])
    sweep = [r for r in data["rows"] if r["section"] == "concurrency"]
    assert sorted((r["transport"], r["streams"]) for r in sweep) == [("raw", 3), ("stream", 3), ("ws", 3)]
    per_stream = max(2, round(data["config"]["concurrency_rate"] * 0.3))
    # every transport's window between two raw TCP windows: 2 rounds x 2 transports + 1 of raw TCP
    windows = {"raw": 5, "ws": 2, "stream": 2}
    assert all(r["chunks"] == windows[r["transport"]] * 3 * per_stream for r in sweep)
    assert all(len(r["server_us_rounds"]) == windows[r["transport"]] for r in sweep)
    assert all(len(r["raw_us_rounds"]) == (0 if r["transport"] == "raw" else 2) for r in sweep)
    cpu = [t for t in data["targets"] if t["name"].startswith("server us/chunk")]
    assert {t["transport"] for t in cpu} == {"ws", "stream"}
    assert all(t["passed"] is None for t in cpu)  # no 500-stream point in this run


@pytest.mark.slow  # a whole benchmark run, servers and all
def test_bench_paired_command(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = bench_command("--transports", "sse,stream", "--concurrency", "3", "--seconds", "0.3", "--rounds", "2",
                         "--paired", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    sweep = {r["transport"]: r for r in data["rows"] if r["section"] == "concurrency"}
    assert data["config"]["paired"] is True and set(sweep) == {"raw", "sse", "stream"}
    assert all(r["errors"] == 0 for r in sweep.values())
    # two rounds of each transport, each beside a raw TCP window of its own: four raw TCP windows
    assert len(sweep["raw"]["server_us_rounds"]) == 4
    for transport in ("sse", "stream"):
        assert len(sweep[transport]["server_us_rounds"]) == 2
        assert len(sweep[transport]["raw_us_rounds"]) == 2
        assert set(sweep[transport]["raw_us_rounds"]) <= set(sweep["raw"]["server_us_rounds"])
    assert bench_command("--paired", "--load-procs", "2").returncode == 2


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
    check_comparison_notebook(read_notebook(NOTEBOOK))


@pytest.mark.slow
def test_notebook_runs_on_a_fresh_kernel(tmp_path: Path) -> None:
    nbformat, nbclient = lab_module("nbformat"), lab_module("nbclient")
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


def test_failed_streams_are_counted_and_named_in_the_notes() -> None:
    lost = "[ERROR] turn_lost: the turn's record is gone from the store"
    traces = [synthetic() for _ in range(5)]
    for trace, status in zip(traces, (lost, lost, "error: connection reset", "[DONE]", "eof"), strict=True):
        trace.status = status
    results = Results()
    results.add(summarize("concurrency", "sse", traces, streams=5))
    assert results.rows[0].errors == 3
    assert results.notes == [f"concurrency SSE x5: 3 streams failed: 2 x {lost}; 1 x error: connection reset"]
    clean = Results()
    clean.add(summarize("concurrency", "ws", [synthetic()], streams=1))
    assert clean.notes == []


def test_long_answer_is_markdown_of_the_asked_size_with_math_code_and_tables() -> None:
    from nbchat.bench.longpage import long_answer, stream_seconds
    from nbchat.notebook.render import code_blocks

    answer = long_answer(40_000)
    assert 40_000 <= len(answer) < 42_000 and answer == long_answer(40_000)  # deterministic
    assert not answer.endswith("\n") and answer.count("```") % 2 == 0
    assert len(code_blocks(answer)) >= 20 and answer.count("$$") >= 20 and "\\[" in answer and "|---:|" in answer
    assert stream_seconds("x" * 4000, 1000.0) == 1.0  # 4-character pieces, one per millisecond


def test_long_answer_table_marks_runs_stopped_before_the_answer_showed() -> None:
    from nbchat.bench.longpage import markdown

    run = {"seconds": 60.4, "timed_out": True, "ratio": 6.02, "stalled_s": 59.9, "stalls": 152, "longest_ms": 1753}
    table = markdown({"sizes": {40: {"stream_s": 10.04}}, "runs": {"chat lab": {40: run}}})
    assert "| chat lab | 40 KB | 10.04 | > 60.4 (not shown) | > 6.02 | > 59.9 | 152 | 1753 |" in table


@pytest.mark.parametrize(("argv", "expected"), [(["--long"], 1000.0), (["--long", "--rate", "50"], 50.0),
                                                (["--long", "--rate", "200"], 200.0)])
def test_page_benchmark_long_runs_at_the_rate_asked_for(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                        expected: float) -> None:
    from nbchat.bench import longpage, page

    rates: list[float] = []

    def run(sizes: tuple[int, ...], rate: float, surfaces: tuple[str, ...]) -> dict[str, object]:
        rates.append(rate)
        return {"sizes": {}, "runs": {}}

    monkeypatch.setattr(longpage, "run", run)
    page.main(argv)
    assert rates == [expected]
