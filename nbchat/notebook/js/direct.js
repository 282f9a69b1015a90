// One turn streamed by the page itself (ChatWidget(direct=True)), and its figures.
//
// Each transport is read the way its name says: "ws" a WebSocket on the
// WebSocket path; "sse" the turn queued with POST /turns, then an EventSource;
// "stream" a fetch POST of the NDJSON path read line by line, resumed with a GET
// naming the turn and the last seq. Every wire name comes from ./contract.js,
// generated from Python's definitions by build.mjs.
//
// No DOM here: the network constructors (fetch, WebSocket, EventSource) are
// taken from `net` (the page's globals by default), so node --test can drive
// each reader with fakes.
//
// On a JupyterHub's service (route "hub", see ./route.js) the page has no
// token: it signs in with the user's Hub login before its first request, and
// again once if the service stops taking its login cookie.

import CONTRACT from "./contract.js";
import { TurnMetrics, statsLine } from "./metrics.js";
import { signIn } from "./route.js";

const { paths: PATHS, params: PARAMS, statuses: STATUS } = CONTRACT;
export const STATUSES = new Set(Object.values(STATUS));
export const MAX_RESUMES = 5;
const utf8 = new TextEncoder();

// The canonical name of a transport the page streams itself ("fetch" and "ndjson" are "stream").
export function transportName(name) {
  const canonical = CONTRACT.aliases[name] ?? name;
  if (!CONTRACT.directTransports.includes(canonical)) {
    throw new Error(`the page cannot stream over ${JSON.stringify(name)}: use one of ${CONTRACT.directTransports.join(", ")}`);
  }
  return canonical;
}

function fillPath(path, values) {
  return path.replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(values[key]));
}

export async function describe(res, what) {
  let detail = "";
  try { detail = (await res.json()).error.message; } catch (e) { /* not nbchat's JSON: the status says enough */ }
  const hint = res.status === 403 && !detail ? " (Jupyter refused the request: is the page logged in?)" : "";
  return `${what} answered ${res.status}${detail ? ": " + detail : ""}${hint}`;
}

// A request the server answered with an HTTP error; `status` says whether signing in again may help.
export class Refused extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function refused(res, what) {
  return new Refused(await describe(res, what), res.status);
}

// One turn streamed by the page. Chunks are taken only when their seq is new, so a resumed stream
// never repeats text; a connection that drops before the status is reattached after the last seq.
export class DirectTurn {
  constructor({ where, token, transport, request, onChunk, onEnd, origin = "", net = globalThis, clock }) {
    Object.assign(this, { where, token, request, onChunk, onEnd, origin, net });
    this.transport = transportName(transport);
    this.uid = "page-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
    this.id = null;
    this.seq = 0;
    this.ended = false;
    this.stopping = false;
    this.error = null;
    this.errorCode = null; // set when the error is the server's, sent with its status
    this.conn = null; // the socket, EventSource or AbortController of the current attempt
    this.metrics = new TurnMetrics(this.transport, where.route, clock);
  }

  // The token as a query parameter and a header, when there is one (a Hub's page has none: its cookie signs it in).
  tokenQuery() { return this.token ? { [PARAMS.token]: this.token } : {}; }

  url(path, query) {
    const q = new URLSearchParams({ ...query, ...this.tokenQuery() });
    return `${this.where.base}${path}?${q}`;
  }

  headers(extra) {
    return { ...this.where.headers, ...this.tokenQuery(), ...extra };
  }

  async start() {
    const hub = this.where.route === "hub";
    try {
      if (hub) await signIn(this.where.base, this.net);
      try { await this.open(); } catch (e) {
        // the login cookie expired, or the Hub revoked its token: sign in anew, once
        if (!(hub && e instanceof Refused && e.status === 401)) throw e;
        await signIn(this.where.base, this.net, true);
        await this.open();
      }
    } catch (e) { this.fail(this.explain(e)); }
  }

  async open() {
    if (this.transport === "stream") await this.fetchStream(null);
    else {
      await this.queue();
      if (this.transport === "ws") this.openSocket(false);
      else this.openEventSource();
    }
  }

  // A refused cross-origin request reaches the page only as "Failed to fetch": say what to check.
  explain(e) {
    const text = String(e.message || e);
    if (!(e instanceof TypeError) || this.where.route !== "direct") return text;
    return `${text}: the page could not reach ${this.where.base}; the server must run and admit this page's origin `
      + `(nbchat serve --allow-origin ${this.origin}), or use route="proxy"`;
  }

  // The WebSocket and EventSource GET start the turn POST /turns queued for this uid (as the seed's clients imply).
  async queue() {
    const res = await this.net.fetch(`${this.where.base}${PATHS.turns}`, { method: "POST", credentials: "same-origin",
      headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ ...this.request, [PARAMS.uid]: this.uid }) });
    if (!res.ok) throw await refused(res, `POST ${PATHS.turns}`);
    this.id = (await res.json()).id;
    if (this.stopping) this.interrupt();
  }

  chunk(rec, bytes) {
    if (typeof rec.seq === "number" && rec.seq <= this.seq) return; // already seen (a resume overlaps)
    if (typeof rec.seq === "number") this.seq = rec.seq;
    this.metrics.chunk(rec, bytes);
    this.onChunk(rec.content);
  }

  record(text, bytes) {
    let rec;
    try { rec = JSON.parse(text); } catch (e) {
      this.fail(`the server sent a record that is not JSON: ${text.slice(0, 80)}`);
      return;
    }
    if (rec.error) {
      this.error = rec.error.message || rec.error.code;
      this.errorCode = rec.error.code || null;
    }
    else if (typeof rec.content === "string") this.chunk(rec, bytes);
    else if (typeof rec.status === "string") this.end(rec.status);
  }

  end(status) {
    if (this.ended) return;
    this.ended = true;
    this.close();
    this.onEnd(status, this.error, this.metrics, this.statsLine(status));
  }

  // The server's error goes with the status, as Python's footer puts an End's; the page's own comes after.
  statsLine(status) {
    if (this.errorCode) return this.metrics.footer(`${status} ${this.errorCode}: ${this.error}`);
    return statsLine(this.metrics.footer(status), this.error);
  }

  fail(message) {
    this.error = message;
    this.errorCode = null;
    this.end(STATUS.ERROR);
  }

  close() {
    const conn = this.conn;
    this.conn = null;
    if (!conn) return;
    if (conn instanceof AbortController) conn.abort();
    else conn.close();
  }

  // The connection went away before the status: reattach after the last seq, a few times.
  dropped(why) {
    if (this.ended) return;
    this.conn = null;
    if (this.metrics.resumes >= MAX_RESUMES) { this.fail(`the connection dropped (${why}) and did not come back`); return; }
    this.metrics.resumes += 1;
    setTimeout(() => {
      if (this.ended) return;
      if (this.transport === "ws") this.openSocket(true);
      else if (this.transport === "sse") this.openEventSource();
      else this.fetchStream(this.seq).catch((e) => this.dropped(String(e.message || e)));
    }, 200 * this.metrics.resumes);
  }

  // A test's stand-in for a network failure: the page closes the connection; resume must recover.
  drop() {
    const conn = this.conn;
    if (!conn || this.ended) return false;
    this.conn = null;
    if (conn instanceof AbortController) conn.abort();
    else { conn.onclose = null; conn.onerror = null; conn.close(); this.dropped("dropped on purpose"); }
    return true;
  }

  openSocket(resume) {
    const base = this.where.base.replace(/^http/, "ws");
    const path = fillPath(PATHS.websocket, { uid: this.uid });
    const query = new URLSearchParams(this.tokenQuery());
    const socket = new this.net.WebSocket(`${base}${path}${this.token ? "?" + query : ""}`);
    this.conn = socket;
    socket.onopen = () => {
      const spec = { [PARAMS.after]: this.seq, [PARAMS.turn]: this.id };
      socket.send(resume ? JSON.stringify({ [CONTRACT.resumeKey]: spec }) : ""); // "": start the queued turn
      if (this.stopping) socket.send(CONTRACT.interruptFrame);
    };
    socket.onmessage = (event) => {
      if (STATUSES.has(event.data)) { this.end(event.data); return; }
      this.record(event.data, utf8.encode(event.data).length);
    };
    socket.onclose = (event) => { if (this.conn === socket) this.dropped(`WebSocket closed with ${event.code}`); };
  }

  openEventSource() {
    const query = this.seq ? { [PARAMS.turn]: this.id, [PARAMS.lastEventId]: String(this.seq) } : { [PARAMS.uid]: this.uid };
    const source = new this.net.EventSource(this.url(PATHS.sse, query));
    this.conn = source;
    source.onmessage = (event) => {
      const id = event.lastEventId;
      if (STATUSES.has(id) && event.data === id) { this.end(id); return; }
      // the bytes of `id: N\ndata: ...\n\n`: EventSource hides the raw stream
      this.record(event.data, utf8.encode(event.data).length + id.length + 13);
    };
    // EventSource would reconnect by itself; resuming here keeps one count and one backoff for every transport.
    source.onerror = () => { if (this.conn === source) { source.close(); this.dropped("EventSource error"); } };
  }

  async fetchStream(after) {
    const abort = new AbortController();
    this.conn = abort;
    // jupyter-server-proxy streams a response only when the request's Accept is exactly text/event-stream and
    // buffers any other; nbchat ignores Accept, so this header buys a live stream through the proxy.
    const init = { headers: this.headers({ Accept: "text/event-stream" }), signal: abort.signal, credentials: "same-origin" };
    const res = after === null
      ? await this.net.fetch(`${this.where.base}${PATHS.ndjson}`, { ...init, method: "POST",
          body: JSON.stringify(this.request), headers: { ...init.headers, "Content-Type": "application/json" } })
      : await this.net.fetch(this.url(PATHS.ndjson, { [PARAMS.turn]: this.id, [PARAMS.after]: String(after) }), init);
    if (res.status === 204) { this.fail("the turn ended and expired before it could be resumed"); return; }
    if (!res.ok) throw await refused(res, PATHS.ndjson);
    this.id = this.id || res.headers.get(CONTRACT.turnHeader);
    if (this.stopping) this.interrupt();
    if (res.headers.get("Content-Length") !== null) {
      // A length up front means something on the way held the whole answer back: refuse rather than pretend.
      this.interrupt();
      this.fail(`the ${this.where.route} path buffered the fetch stream into one response (Content-Length set): `
        + "pick ws or sse, or a proxy that streams (jupyter-server-proxy streams when Accept is text/event-stream)");
      return;
    }
    await this.readLines(res.body.getReader(), abort);
  }

  async readLines(reader, abort) {
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      let read;
      try { read = await reader.read(); } catch (e) { break; } // aborted by end() or drop(), or the network failed
      if (read.done) break;
      buf += decoder.decode(read.value, { stream: true }); // {stream: true}: a character split across reads survives
      for (let nl = buf.indexOf("\n"); nl >= 0 && !this.ended; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim()) this.record(line, utf8.encode(line).length + 1);
      }
    }
    if (!this.ended && (this.conn === abort || this.conn === null)) this.dropped("the fetch stream ended early");
  }

  stop() {
    this.stopping = true;
    this.interrupt();
  }

  interrupt() {
    if (this.ended) return;
    const open = this.net.WebSocket && this.conn instanceof this.net.WebSocket && this.conn.readyState === 1;
    if (this.transport === "ws" && open) {
      this.conn.send(CONTRACT.interruptFrame);
    } else if (this.id) {
      this.net.fetch(`${this.where.base}${fillPath(PATHS.interrupt, { turn_id: this.id })}`,
        { method: "POST", headers: this.headers({}), credentials: "same-origin" }).catch(() => {});
    } // else: interrupted as soon as the turn has an id (see queue and fetchStream)
  }
}
