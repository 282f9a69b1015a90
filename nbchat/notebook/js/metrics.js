// A direct turn's figures as the page measures them, and the stats line under its answer.
//
// The line has the format of Python's stats_line (nbchat/notebook/turn.py), so
// a relayed and a direct widget read the same.

// What the stats line says of a history the server shortened to fit its model (Python's trimmed_note).
export function trimmedNote(exchanges) {
  return `history trimmed: ${exchanges} exchange${exchanges === 1 ? "" : "s"}`;
}

// The line under an answer, in the format of Python's stats_line (nbchat/notebook/turn.py): the figures,
// the status (with the server's error, as "[ERROR] code: message"), the trimmed history, then why the
// page itself had to end the turn.
export function statsLine(footer, error) {
  return footer + (error ? ` · ${error}` : "");
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

// Per chunk: arrival (clock.now(), ms), the server's emit time (ts, s) and the bytes it took on the wire.
export class TurnMetrics {
  constructor(transport, route, clock = globalThis.performance) {
    this.transport = transport;
    this.route = route;
    this.clock = clock;
    this.t0 = clock.now();
    this.arrivals = [];
    this.lags = []; // arrival minus the server's ts (one clock on one host), ms
    this.bytes = 0;
    this.resumes = 0;
    this.trimmed = 0; // exchanges the server dropped from the history: its first chunk says so
  }

  chunk(rec, bytes) {
    const now = this.clock.now();
    this.arrivals.push(now);
    this.bytes += bytes;
    if (Number.isInteger(rec.trimmed) && rec.trimmed > 0) this.trimmed = rec.trimmed;
    if (typeof rec.ts === "number") this.lags.push(this.clock.timeOrigin + now - rec.ts * 1000);
  }

  summary() {
    const gaps = this.arrivals.slice(1).map((t, i) => t - this.arrivals[i]).sort((a, b) => a - b);
    const lags = [...this.lags].sort((a, b) => a - b);
    const n = this.arrivals.length;
    const round = (x) => (x === null ? null : Math.round(x * 10) / 10);
    return { transport: this.transport, route: this.route, chunks: n, resumes: this.resumes,
             ttft_ms: n ? round(this.arrivals[0] - this.t0) : null,
             cadence_p50_ms: round(percentile(gaps, 50)), cadence_p99_ms: round(percentile(gaps, 99)),
             lag_p50_ms: round(percentile(lags, 50)), bytes_per_chunk: n ? round(this.bytes / n) : null };
  }

  footer(status) {
    const s = this.summary();
    const ms = (x) => (x === null ? "–" : `${Math.round(x)} ms`);
    return `${s.transport} ${s.route} · first token ${ms(s.ttft_ms)} · ${s.chunks} chunks · cadence p50 ${ms(s.cadence_p50_ms)}`
      + ` p99 ${ms(s.cadence_p99_ms)} · ${s.bytes_per_chunk ?? "–"} B/chunk`
      + (s.resumes ? ` · resumed ${s.resumes}×` : "") + ` · ${status}`
      + (this.trimmed ? ` · ${trimmedNote(this.trimmed)}` : "");
  }
}
