// The page's per-turn figures: TTFT, inter-chunk cadence p50/p99, lag behind the server's ts, bytes per chunk.

import assert from "node:assert/strict";
import { test } from "node:test";

import { TurnMetrics } from "../../nbchat/notebook/js/metrics.js";

function clockAt(times) {
  const clock = { timeOrigin: 1_700_000_000_000, t: times.shift(), now: () => clock.t };
  return { clock, tick: () => { clock.t = times.shift(); } };
}

test("TTFT, cadence percentiles, lag and bytes come from the arrivals", () => {
  const { clock, tick } = clockAt([1000, 1100, 1120, 1150, 1300]);
  const metrics = new TurnMetrics("sse", "proxy", clock);
  const ts = (ms) => (clock.timeOrigin + ms) / 1000; // the server's emit time, in seconds
  for (const [bytes, sent] of [[40, 1095], [42, 1110], [38, 1149], [40, 1290]]) {
    tick();
    metrics.chunk({ content: "x", ts: ts(sent) }, bytes);
  }
  const s = metrics.summary();
  assert.deepEqual(s, { transport: "sse", route: "proxy", chunks: 4, resumes: 0, ttft_ms: 100,
    cadence_p50_ms: 30, cadence_p99_ms: 150, lag_p50_ms: 5, bytes_per_chunk: 40 });
  assert.equal(metrics.footer("[DONE]"),
    "sse proxy · first token 100 ms · 4 chunks · cadence p50 30 ms p99 150 ms · 40 B/chunk · [DONE]");
});

test("a turn with no chunk has no figures, and a resume shows in the footer", () => {
  const { clock } = clockAt([5]);
  const metrics = new TurnMetrics("ws", "direct", clock);
  metrics.resumes = 2;
  const s = metrics.summary();
  assert.equal(s.chunks, 0);
  assert.equal(s.ttft_ms, null);
  assert.equal(s.cadence_p50_ms, null);
  assert.equal(s.bytes_per_chunk, null);
  assert.equal(metrics.footer("[ERROR]"),
    "ws direct · first token – · 0 chunks · cadence p50 – p99 – · – B/chunk · resumed 2× · [ERROR]");
});

test("a chunk without the server's ts counts for cadence but not for lag", () => {
  const { clock, tick } = clockAt([0, 10, 30]);
  const metrics = new TurnMetrics("stream", "direct", clock);
  tick();
  metrics.chunk({ content: "a" }, 10);
  tick();
  metrics.chunk({ content: "b" }, 20);
  const s = metrics.summary();
  assert.equal(s.lag_p50_ms, null);
  assert.equal(s.cadence_p50_ms, 20);
  assert.equal(s.bytes_per_chunk, 15);
});
