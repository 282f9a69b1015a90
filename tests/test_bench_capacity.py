"""The concurrency sweep's knee counts delivery: a point holds when p99 < 50 ms and at least 95 %
of the asked chunks/s arrived; saturation is the most chunks/s delivered at any count (pure)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nbchat.bench.capacity import Capacity, capacities, holds
from nbchat.bench.report import Results, Row, summarize
from nbchat.bench.scaling import main as scaling_main
from nbchat.bench.scaling import saturation, verdict
from nbchat.bench.stats import Trace, delivered_rate, span_rate

RATE = 20.0


def point(transport: str, streams: int, delivered: float, p99: float = 10.0) -> Row:
    """A sweep row as the runner makes it: ``delivered`` chunks/s of the ``streams`` x 20/s asked for."""
    asked = streams * RATE
    return Row(section="concurrency", transport=transport, streams=streams, rate=RATE, latency_p99_ms=p99,
               total_rate=delivered, asked_rate=asked, delivered=delivered / asked)


def test_a_point_holds_only_when_its_chunks_arrive() -> None:
    assert holds(point("stream", 150, 2_910))  # 97 %
    # the latency alone would pass this one: the server stretched its pacing, 25 % of the chunks never came
    assert not holds(point("stream", 600, 9_008, p99=7.7))
    assert not holds(point("stream", 150, 3_000, p99=50.0))
    assert holds(point("stream", 150, 2_850, p99=49.9))  # exactly 95 %
    assert not holds(point("stream", 150, math.nan))  # nothing arrived: NaN never holds
    assert not holds(point("stream", 150, 3_000, p99=math.nan))


def one_worker_sweep() -> list[Row]:
    """One worker at 0.3 cores against the uncapped raw TCP floor, all p99s under 50 ms."""
    raw = [point("raw", n, 0.99 * n * RATE, p99=5.0) for n in (150, 300, 450, 600, 1200)]
    stream = [point("stream", 150, 2_910, 7.7), point("stream", 300, 5_448, 9.0),
              point("stream", 450, 7_983, 20.0), point("stream", 600, 9_008, 48.9)]
    return raw + stream


def test_knee_counts_delivery_and_saturation_is_the_most_delivered() -> None:
    found = {c.transport: c for c in capacities(one_worker_sweep())}
    assert found["raw"] == Capacity("raw", 1200, 0.99 * 1200 * RATE, 1200, "")
    stream = found["stream"]
    # p99 < 50 ms alone would put the knee at 600; 300 streams got 91 % of what they asked for
    assert stream.knee == 150 and stream.first_miss == "300 streams: 91% delivered"
    assert (stream.saturation_rate, stream.saturation_streams) == (9_008, 600)


def test_knee_stops_at_the_first_miss_and_can_be_none() -> None:
    sweep = [point("ws", 100, 2_000), point("ws", 200, 4_000, p99=80.0), point("ws", 300, 6_000)]
    ws = capacities(reversed(sweep))[0]  # the order rows come in does not matter
    assert ws.knee == 100 and ws.first_miss == "200 streams: p99 80 ms"
    assert ws.saturation_streams == 300  # a point past the knee may still deliver the most
    overloaded = capacities([point("sse", 100, 1_000, p99=120.0)])[0]
    assert overloaded.knee == 0 and overloaded.first_miss == "100 streams: p99 120 ms, 50% delivered"


def test_a_saturation_near_the_generators_ceiling_is_marked_as_its_limit() -> None:
    raw = [point("raw", n, d) for n, d in ((450, 8_800), (900, 13_000))]  # the generator tops out near 13,000
    found = {c.transport: c for c in capacities([*raw, point("stream", 450, 8_500), point("stream", 900, 12_000),
                                                 point("ws", 900, 11_600)])}
    assert found["stream"].generator_bound and not found["ws"].generator_bound  # 92 % and 89 % of 13,000
    assert not found["raw"].generator_bound
    results = Results(config={"concurrency_rate": RATE}, rows=[*raw, point("stream", 900, 12_000)])
    line = next(x for x in results.table().splitlines() if x.startswith("NDJSON") and "at 900" in x)
    assert "92%: the generator's limit, not the server's" in line
    alone = capacities([point("stream", 900, 12_000)])[0]  # no raw TCP in the run: nothing to judge by
    assert not alone.generator_bound


def paced(n: int, every: float, start: float = 100.0) -> Trace:
    trace = Trace(sent=start - 0.01, status="[DONE]")
    for i in range(n):
        trace.add(start + i * every, start + i * every + 0.002)
    return trace


def test_sweep_rows_report_delivered_against_asked() -> None:
    # 4 streams asked for 20/s each; the server, short of CPU, paced them at 10/s
    row, _ = summarize("concurrency", "stream", [paced(21, 0.1) for _ in range(4)], rate=RATE, streams=4)
    assert row.asked_rate == 80.0
    assert row.total_rate == pytest.approx(40.0)  # 4 streams x 10/s
    assert row.delivered == pytest.approx(0.5)
    assert row.latency_p99_ms == pytest.approx(2.0)  # latency alone sees nothing wrong
    unpaced, _ = summarize("max_rate", "stream", [paced(21, 0.001)])
    assert math.isnan(unpaced.asked_rate) and math.isnan(unpaced.delivered)


def test_delivered_rate_counts_the_streaming_not_the_turns_start() -> None:
    # ten streams of 30 chunks at 10/s whose turns a slow server started 0.1 s apart: each keeps its pace
    staggered = [paced(30, 0.1, 100 + 0.1 * i) for i in range(10)]
    assert delivered_rate(staggered) == pytest.approx(100, rel=0.05)
    assert span_rate(staggered) == pytest.approx(300 / 3.8, rel=0.01)  # the start counted as missed chunks
    # the same streams at half their pace (a server short of CPU for the streaming): half the rate
    assert delivered_rate([paced(30, 0.2, 100 + 0.1 * i) for i in range(10)]) == pytest.approx(50, rel=0.05)
    # streams that overlap for less than a quarter of the span: the span's rate
    apart = [paced(30, 0.1), paced(30, 0.1, 102.0)]
    assert delivered_rate(apart) == pytest.approx(span_rate(apart)) == pytest.approx(60 / 4.9, rel=0.01)
    assert math.isnan(delivered_rate([Trace(sent=0.0)]))


def sweep_results() -> Results:
    results = Results(config={"concurrency_rate": RATE, "server_cpus": 0.3,
                              "serve_args": ["--store", "redis://127.0.0.1:6379/0", "--workers", "2"]})
    results.rows.extend([*one_worker_sweep(), point("stream", 500, 7_000, p99=9.0)])
    return results


def test_table_shows_delivery_the_knee_and_the_load_generators_ceiling() -> None:
    text = sweep_results().table()
    assert "each nbchat server held to 2 workers x 0.3 cores, raw TCP uncapped" in text
    assert "9,008 / 12,000" in text and "75%" in text
    assert "Capacity: a point holds when p99 < 50 ms and >= 95% of the asked chunks/s arrived" in text
    capacity = text[text.index("Capacity:"):].splitlines()
    assert capacity[3].split() == ["raw", "TCP", "1200", "23,760", "at", "1200", "the", "load", "generator's",
                                   "ceiling", "-"]
    assert capacity[4].split() == ["NDJSON", "150", "9,008", "at", "600", "38%", "300", "streams:", "91%",
                                   "delivered"]
    target = next(t for t in sweep_results().targets() if t.name.startswith("500 streams"))
    assert target.passed is False and target.measured == "p99 9.00 ms, 70% delivered"


def test_json_rows_keep_their_fields_and_carry_the_capacity(tmp_path: Path) -> None:
    sweep_results().write_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    row = next(r for r in data["rows"] if (r["transport"], r["streams"]) == ("stream", 600))
    for key in ("transport", "streams", "total_rate", "latency_p99_ms", "server_us_per_chunk", "server_us_rounds"):
        assert key in row
    assert (row["asked_rate"], row["delivered"]) == (12_000.0, pytest.approx(0.7507, abs=1e-4))
    assert {c["transport"]: c["knee"] for c in data["capacity"]} == {"raw": 1200, "stream": 150}
    assert Row.from_dict(row).delivered == pytest.approx(0.7507, abs=1e-4)


def run_json(rate: float, ceiling: float, bound: bool = False) -> dict[str, object]:
    """The ``capacity`` list of a --server-cpus run's JSON."""
    return {"capacity": [{"transport": "raw", "saturation_rate": ceiling, "saturation_streams": 900},
                         {"transport": "stream", "saturation_rate": rate, "saturation_streams": 600,
                          "generator_bound": bound}]}


def test_scaling_takes_the_best_of_each_and_says_when_the_generator_was_the_limit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = [saturation(run_json(8_000, 12_000)), saturation(run_json(8_800, 12_000))]
    assert verdict(one, [saturation(run_json(17_000, 25_000)), saturation(run_json(16_000, 25_000))], 1.9) == (
        pytest.approx(17_000 / 8_800), "PASS")
    assert verdict(one, [saturation(run_json(16_000, 25_000))], 1.9)[1] == "MISS"
    # the larger setup held back by the generator: a lower bound, which shows a target it reaches only
    bound = [saturation(run_json(18_000, 18_500, bound=True))]
    assert verdict(one, bound, 1.9)[1].startswith("PASS (a lower bound")
    assert verdict(one, bound, 2.1)[1].startswith("not shown: the load generator")
    # a one-worker baseline the generator held back is no baseline
    held = [saturation(run_json(9_000, 9_200, bound=True)), saturation(run_json(8_000, 12_000))]
    ratio, said = verdict(held, [saturation(run_json(17_000, 25_000))], 1.9)
    assert math.isnan(ratio) and said.startswith("no ratio")
    assert verdict([], [], 1.9)[1] == "not measured"
    paths = []
    for name, data in (("w1.json", run_json(8_800, 12_000)), ("w2.json", run_json(17_000, 25_000))):
        (tmp_path / name).write_text(json.dumps(data))
        paths.append(str(tmp_path / name))
    assert scaling_main(["--one", paths[0], "--many", paths[1], "--target", "1.9"]) == 0
    out = capsys.readouterr().out
    assert "8,800 chunks/s at 600 streams (raw TCP's ceiling 12,000)" in out
    assert out.strip().endswith("best of each: 1.93x (target 1.9x): PASS")
