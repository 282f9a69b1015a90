// A fake nbchat server behind fake fetch, WebSocket and EventSource, for DirectTurn's readers under node.
//
// One turn's records (content pieces with seq, then one status) are served the way each transport
// encodes them; a scenario says where a connection drops, what an HTTP call answers instead, and
// whether a resume overlaps what the page already has (the page must then skip the repeats).

import CONTRACT from "../../nbchat/notebook/js/contract.js";

const { paths: PATHS, params: PARAMS, statuses: STATUS } = CONTRACT;
export const BASE = "http://127.0.0.1:9999";
export const TOKEN = "secret-token";
export const TURN_ID = "turn-1";
const utf8 = new TextEncoder();
const later = (fn) => setTimeout(fn, 0);

export function pieces(text, size = 3) {
  const out = [];
  for (const ch of text) { // whole characters: a piece is a string
    if (!out.length || [...out[out.length - 1]].length >= size) out.push("");
    out[out.length - 1] += ch;
  }
  return out;
}

export class FakeServer {
  constructor(text, { status = STATUS.DONE, error = null, ...scenario } = {}) {
    this.records = pieces(text).map((content, i) => ({ content, seq: i + 1, ts: 1700000000 + i / 100 }));
    this.status = status;
    this.error = error; // {code, message}: sent just before the status
    // dropAfter: one count per connection; prefix: the path the server is mounted under (a Hub's service)
    this.scenario = { dropAfter: [], overlap: 0, answer: {}, prefix: "", ...scenario };
    this.calls = []; // [method, url, init] of every fetch
    this.sockets = [];
    this.sources = [];
    this.connections = 0;
    this.net = { fetch: (url, init) => this.fetch(url, init), WebSocket: this.socketClass(),
                 EventSource: this.sourceClass() };
  }

  after(seq) { return this.records.filter((r) => r.seq > Math.max(0, seq - this.scenario.overlap)); }

  // Where the next connection stops early (undefined: it runs to the status).
  nextDrop() { return this.scenario.dropAfter[this.connections++]; }

  ndjson(seq) {
    const lines = this.after(seq).map((r) => JSON.stringify(r));
    if (this.error) lines.push(JSON.stringify({ error: this.error }));
    lines.push(JSON.stringify({ status: this.status }));
    return utf8.encode(lines.map((l) => l + "\n").join(""));
  }

  async fetch(url, init = {}) {
    const method = init.method || "GET";
    this.calls.push([method, url, init]);
    const u = new URL(url);
    const { prefix } = this.scenario;
    if (prefix && !u.pathname.startsWith(prefix)) return Response.json({ error: { code: "not_found", message: "outside" } }, { status: 404 });
    u.pathname = u.pathname.slice(prefix.length) || "/";
    const key = `${method} ${u.pathname}`;
    if (this.scenario.answer[key]) return this.scenario.answer[key](u, init);
    if (key === `POST ${PATHS.turns}`) return Response.json({ id: TURN_ID, uid: JSON.parse(init.body).uid });
    if (u.pathname === PATHS.interrupt.replace("{turn_id}", TURN_ID)) return Response.json({ interrupted: true });
    if (u.pathname !== PATHS.ndjson) return Response.json({ error: { code: "not_found", message: "no" } }, { status: 404 });
    const after = method === "GET" ? Number(u.searchParams.get(PARAMS.after)) : 0;
    return this.streamResponse(this.ndjson(after), init.signal);
  }

  // The body in the pieces `split` cuts it into (byte offsets), failing at byte `dropAt` if the scenario says so.
  streamResponse(bytes, signal) {
    const cuts = (this.scenario.split || (() => []))(bytes.length);
    const drop = this.nextDrop();
    const edges = [0, ...cuts.filter((c) => c > 0 && c < bytes.length), bytes.length];
    let i = 0;
    let failed = false;
    // One piece per read, as a network delivers them; the failure comes after the bytes before it.
    const body = new ReadableStream({
      start(controller) {
        signal?.addEventListener("abort", () => { try { controller.error(new Error("aborted")); } catch (e) { /* closed */ } });
      },
      pull(controller) {
        const [from, to] = [edges[i], edges[i + 1]];
        if (failed || (drop !== undefined && from >= drop)) { failed = true; controller.error(new TypeError("network error")); return; }
        if (to === undefined) { controller.close(); return; }
        i += 1;
        if (drop !== undefined && to > drop) { controller.enqueue(bytes.slice(from, drop)); edges[i] = drop; return; }
        controller.enqueue(bytes.slice(from, to));
      },
    });
    return new Response(body, { headers: { "Content-Type": "application/x-ndjson", [CONTRACT.turnHeader]: TURN_ID } });
  }

  socketClass() {
    const server = this;
    return class FakeWebSocket {
      static OPEN = 1;

      constructor(url) {
        this.url = url;
        this.sent = [];
        this.readyState = 0;
        server.sockets.push(this);
        later(() => { this.readyState = 1; this.onopen?.(); });
      }

      send(data) {
        this.sent.push(data);
        if (data === CONTRACT.interruptFrame) { server.status = STATUS.INTERRUPTED; return; }
        const resume = data ? JSON.parse(data)[CONTRACT.resumeKey] : null;
        const frames = server.after(resume ? resume[PARAMS.after] : 0).map((r) => JSON.stringify(r));
        if (server.error) frames.push(JSON.stringify({ error: server.error }));
        const drop = server.nextDrop();
        later(() => {
          for (const [i, frame] of frames.entries()) {
            if (this.readyState !== 1) return;
            if (drop !== undefined && i >= drop) { this.readyState = 3; this.onclose?.({ code: 1006 }); return; }
            this.onmessage?.({ data: frame });
          }
          if (this.readyState === 1) this.onmessage?.({ data: server.status });
        });
      }

      close() {
        if (this.readyState === 3) return;
        this.readyState = 3;
        later(() => this.onclose?.({ code: 1000 }));
      }
    };
  }

  sourceClass() {
    const server = this;
    return class FakeEventSource {
      constructor(url) {
        this.url = url;
        this.closed = false;
        server.sources.push(this);
        const q = new URL(url).searchParams;
        const messages = server.after(Number(q.get(PARAMS.lastEventId) || 0))
          .map((r) => ({ lastEventId: String(r.seq), data: JSON.stringify(r) }));
        if (server.error) messages.push({ lastEventId: "", data: JSON.stringify({ error: server.error }) });
        messages.push({ lastEventId: server.status, data: server.status });
        const drop = server.nextDrop();
        later(() => {
          for (const [i, message] of messages.entries()) {
            if (this.closed) return;
            if (drop !== undefined && i >= drop) { this.onerror?.(new Event("error")); return; }
            this.onmessage?.(message);
          }
        });
      }

      close() { this.closed = true; }
    };
  }
}

// Runs one DirectTurn against `server`; resolves with how it ended and what the page was given.
export function run(DirectTurn, server, transport, { route = "direct", request, before, where, token = TOKEN } = {}) {
  return new Promise((resolve) => {
    const given = [];
    const turn = new DirectTurn({
      where: where || { base: BASE, route, headers: {} }, token, transport, net: server.net, origin: "http://page:8888",
      request: request || { userMessage: { role: "user", content: "hi" }, conversation: [] },
      onChunk: (piece) => given.push(piece),
      onEnd: (status, error, metrics, stats) => resolve({ status, error, text: given.join(""), given, metrics, turn, stats }),
    });
    before?.(turn);
    turn.start();
  });
}
