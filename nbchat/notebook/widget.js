// The browser side of nbchat.ChatWidget (an anywidget ES module).
//
// Safety: model output is never parsed as HTML. The Markdown renderer
// (js/stream.js, js/dom.js) builds the DOM from markdown-it's tokens with
// createElement and text nodes only (no innerHTML), so "<script>" or
// "<img onerror=...>" in an answer shows as text; math is typeset by KaTeX.
//
// Cost: deltas are appended to the answer's text; once per animation frame
// the renderer commits the blocks that are finished and re-renders only the
// open block. Finished blocks are never touched again, so the work is linear
// in the answer's length, not quadratic.
//
// This file is the source: js/build.sh bundles it with js/ and its npm
// libraries into static/widget.js, the module the widget loads.

import { MarkdownStream } from "./js/stream.js";

function node(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderMessage(log, message) {
  const bubble = node("div", `nbchat-msg nbchat-${message.role}`);
  if (message.role === "user") bubble.append(node("div", "nbchat-user-text", message.content));
  else {
    const md = new MarkdownStream(bubble);
    md.append(message.content);
    md.finish();
    if (message.status && message.status !== "[DONE]") bubble.append(node("div", "nbchat-status", message.status));
  }
  log.append(bubble);
  return bubble;
}

// ------------------------------------------------------------------ direct mode
//
// ChatWidget(direct=True): the page opens the stream itself, with the browser's
// native WebSocket, EventSource or fetch reader, so the answer never waits for
// the kernel. The kernel sends the endpoint (with the server's token) and the
// conversation in custom messages, which are never saved with the notebook.

const STATUSES = new Set(["[DONE]", "[TOKENS]", "[INTERRUPTED]", "[MODEL_TIMEOUT]", "TEMPERATURE_THRESHOLD", "[ERROR]"]);
const MAX_RESUMES = 5;
const utf8 = new TextEncoder();

// Jupyter's page config: the base URL (/user/NAME/ on a hub) and the token JupyterLab itself uses.
function jupyterConfig() {
  const el = document.getElementById("jupyter-config-data");
  if (!el) return null;
  try { return JSON.parse(el.textContent); } catch (e) { return null; }
}

function cookie(name) {
  const m = document.cookie.match(new RegExp("(?:^|;\\s*)" + name + "=([^;]*)"));
  return m ? decodeURIComponent(m[1]) : null;
}

// Where the page sends its requests: the server itself, or Jupyter's /proxy/<port>/ in front of it.
function resolveRoute(endpoint, route) {
  const config = jupyterConfig();
  const proxied = route === "proxy" || (route === "auto" && endpoint.loopback && endpoint.proxy && !!config);
  if (!proxied) return { base: endpoint.url, route: "direct", headers: {} };
  if (!config) throw new Error("route='proxy' needs a page served by Jupyter (no jupyter-config-data here)");
  const baseUrl = new URL(config.baseUrl || "/", location.origin);
  const headers = {};
  // Jupyter's own credentials: its token when the page has one, else the XSRF cookie of the login session.
  if (config.token) headers.Authorization = "token " + config.token;
  const xsrf = cookie("_xsrf");
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  return { base: new URL(`proxy/${endpoint.port}`, baseUrl).href.replace(/\/$/, ""), route: "proxy", headers };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

// Per chunk: arrival (performance.now()), the server's emit time (ts) and the bytes it took on the wire.
class TurnMetrics {
  constructor(transport, route) {
    this.transport = transport;
    this.route = route;
    this.t0 = performance.now();
    this.arrivals = [];
    this.lags = []; // arrival minus the server's ts (one clock on one host), ms
    this.bytes = 0;
    this.resumes = 0;
  }

  chunk(rec, bytes) {
    const now = performance.now();
    this.arrivals.push(now);
    this.bytes += bytes;
    if (typeof rec.ts === "number") this.lags.push(performance.timeOrigin + now - rec.ts * 1000);
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
      + (s.resumes ? ` · resumed ${s.resumes}×` : "") + ` · ${status}`;
  }
}

// One turn streamed by the page. Chunks are taken only when their seq is new, so a resumed stream
// never repeats text; a connection that drops before the status is reattached after the last seq.
class DirectTurn {
  constructor({ where, token, transport, request, onChunk, onEnd }) {
    Object.assign(this, { where, token, transport, request, onChunk, onEnd });
    this.uid = "page-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
    this.id = null;
    this.seq = 0;
    this.ended = false;
    this.stopping = false;
    this.error = null;
    this.conn = null; // the socket, EventSource or AbortController of the current attempt
    this.metrics = new TurnMetrics(transport, where.route);
  }

  url(path, query) {
    const q = new URLSearchParams({ ...query, token: this.token });
    return `${this.where.base}${path}?${q}`;
  }

  headers(extra) {
    return { ...this.where.headers, token: this.token, ...extra };
  }

  async start() {
    try {
      if (this.transport === "fetch") await this.fetchStream(null);
      else {
        await this.queue();
        if (this.transport === "ws") this.openSocket(false);
        else this.openEventSource();
      }
    } catch (e) { this.fail(this.explain(e)); }
  }

  // A refused cross-origin request reaches the page only as "Failed to fetch": say what to check.
  explain(e) {
    const text = String(e.message || e);
    if (!(e instanceof TypeError) || this.where.route !== "direct") return text;
    return `${text}: the page could not reach ${this.where.base}; the server must run and admit this page's origin `
      + `(nbchat serve --allow-origin ${location.origin}), or use route="proxy"`;
  }

  // The WebSocket and EventSource GET start the turn POST /turns queued for this uid (as the seed's clients imply).
  async queue() {
    const res = await fetch(`${this.where.base}/turns`, { method: "POST", credentials: "same-origin",
      headers: this.headers({ "Content-Type": "application/json" }), body: JSON.stringify({ ...this.request, uid: this.uid }) });
    if (!res.ok) throw new Error(await describe(res, "POST /turns"));
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
    const rec = JSON.parse(text);
    if (rec.error) this.error = rec.error.message || rec.error.code;
    else if (typeof rec.content === "string") this.chunk(rec, bytes);
    else if (typeof rec.status === "string") this.end(rec.status);
  }

  end(status) {
    if (this.ended) return;
    this.ended = true;
    this.close();
    this.onEnd(status, this.error, this.metrics);
  }

  fail(message) {
    this.error = message;
    this.end("[ERROR]");
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
    const socket = new WebSocket(`${base}/websocket/${encodeURIComponent(this.uid)}?token=${encodeURIComponent(this.token)}`);
    this.conn = socket;
    socket.onopen = () => {
      socket.send(resume ? JSON.stringify({ resume: { after: this.seq, turn: this.id } }) : "");
      if (this.stopping) socket.send("[INTERRUPT]");
    };
    socket.onmessage = (event) => {
      if (STATUSES.has(event.data)) { this.end(event.data); return; }
      this.record(event.data, utf8.encode(event.data).length);
    };
    socket.onclose = (event) => { if (this.conn === socket) this.dropped(`WebSocket closed with ${event.code}`); };
  }

  openEventSource() {
    const query = this.seq ? { turn: this.id, lastEventId: String(this.seq) } : { uid: this.uid };
    const source = new EventSource(this.url("/createSse", query));
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
      ? await fetch(`${this.where.base}/talkByStream`, { ...init, method: "POST", body: JSON.stringify(this.request),
          headers: { ...init.headers, "Content-Type": "application/json" } })
      : await fetch(this.url("/talkByStream", { turn: this.id, after: String(after) }), init);
    if (res.status === 204) { this.fail("the turn ended and expired before it could be resumed"); return; }
    if (!res.ok) throw new Error(await describe(res, "/talkByStream"));
    this.id = this.id || res.headers.get("X-NBChat-Turn");
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
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true }); // {stream: true}: a character split across reads survives
        for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim()) this.record(line, utf8.encode(line).length + 1);
        }
      }
    } catch (e) {
      // aborted by end() (nothing to do), by drop() or by the network (both resume below)
    }
    if (!this.ended && (this.conn === abort || this.conn === null)) this.dropped("the fetch stream ended early");
  }

  stop() {
    this.stopping = true;
    this.interrupt();
  }

  interrupt() {
    if (this.ended) return;
    if (this.transport === "ws" && this.conn instanceof WebSocket && this.conn.readyState === WebSocket.OPEN) {
      this.conn.send("[INTERRUPT]");
    } else if (this.id) {
      fetch(`${this.where.base}/turns/${encodeURIComponent(this.id)}/interrupt`,
        { method: "POST", headers: this.headers({}), credentials: "same-origin" }).catch(() => {});
    } // else: interrupted as soon as the turn has an id (see queue and fetchStream)
  }
}

async function describe(res, what) {
  let detail = "";
  try { detail = (await res.json()).error.message; } catch (e) { /* not nbchat's JSON: the status says enough */ }
  const hint = res.status === 403 && !detail ? " (Jupyter refused the request: is the page logged in?)" : "";
  return `${what} answered ${res.status}${detail ? ": " + detail : ""}${hint}`;
}

// One view of the widget: its DOM, the answer streaming into it, and its model bindings.
// Direct mode: which view of a model streams the turns the kernel asks for (one page, one stream).
const OWNER = new WeakMap();

class ChatView {
  constructor(model, el) {
    this.model = model;
    this.live = null; // {md, bubble, chars} while an answer streams
    this.endpoint = null; // direct mode: {url, token, port, ...} from the kernel, never saved
    this.context = null; // direct mode: the request template (the conversation so far)
    this.turn = null; // direct mode: the DirectTurn streaming now
    this.lastMetrics = null;
    this.frame = 0;
    this.root = node("div", "nbchat-widget");
    this.root.setAttribute("data-lm-suppress-shortcuts", "true"); // typing must not trigger notebook shortcuts
    this.log = node("div", "nbchat-log");
    this.input = node("textarea", "nbchat-input");
    this.input.rows = 2;
    this.input.placeholder = "Ask something (Enter sends, Shift+Enter for a new line)";
    this.picker = node("select", "nbchat-transport");
    this.picker.title = "transport";
    this.sendButton = node("button", "nbchat-send", "Send");
    this.stopButton = node("button", "nbchat-stop", "Stop");
    this.stats = node("div", "nbchat-stats");
    const bar = node("div", "nbchat-bar");
    bar.append(this.input, this.picker, this.sendButton, this.stopButton);
    this.root.append(this.log, bar, this.stats);
    this.root.nbchatView = this; // for tests and the page-side benchmark: the last turn's figures
    el.append(this.root);
  }

  // Once per animation frame at most, however many deltas arrived since the last one.
  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    if (!this.live) return;
    this.live.md.render();
    const via = this.turn ? ` ${this.turn.where.route}` : "";
    this.stats.textContent = `${this.model.get("transport")}${via} · streaming… ${this.live.chars} characters`;
    this.log.scrollTop = this.log.scrollHeight;
  }

  // The history traitlet changes once per turn; it is drawn only when the view does not show it yet.
  drawHistory() {
    const messages = this.model.get("messages");
    if (this.live || this.log.childElementCount === messages.length) return;
    this.log.replaceChildren();
    for (const message of messages) renderMessage(this.log, message);
    this.log.scrollTop = this.log.scrollHeight;
  }

  syncControls() {
    const busy = this.model.get("busy") || this.turn !== null;
    this.sendButton.disabled = busy;
    this.stopButton.disabled = !busy;
    this.picker.disabled = busy;
  }

  syncPicker() {
    this.picker.replaceChildren(...this.model.get("transports").map((t) => node("option", null, t)));
    this.picker.value = this.model.get("transport");
  }

  syncStats() {
    if (!this.live) this.stats.textContent = this.model.get("stats");
  }

  startAnswer(user) {
    if (user !== undefined) renderMessage(this.log, { role: "user", content: user });
    const bubble = node("div", "nbchat-msg nbchat-assistant nbchat-streaming");
    this.log.append(bubble);
    this.live = { md: new MarkdownStream(bubble), bubble, chars: 0 };
  }

  endAnswer(msg) {
    if (this.frame) { cancelAnimationFrame(this.frame); this.frame = 0; }
    const { md, bubble } = this.live;
    md.finish();
    bubble.classList.remove("nbchat-streaming");
    if (msg.status !== "[DONE]") bubble.append(node("div", "nbchat-status", msg.status));
    if (msg.error) bubble.append(node("div", "nbchat-error", msg.error));
    this.live = null;
  }

  onCustom(msg) {
    if (msg.type === "endpoint") this.setEndpoint(msg.endpoint);
    else if (msg.type === "context") this.context = msg.request;
    else if (msg.type === "ask") { if (OWNER.get(this.model) === this) this.startDirect(msg.text, msg.request); }
    else if (msg.type === "stop") { if (this.turn) this.turn.stop(); }
    else if (msg.type === "failed") this.stats.textContent = msg.error;
    else if (msg.type === "start") this.startAnswer(msg.user);
    else if (msg.type === "delta") {
      if (!this.live) this.startAnswer(); // a view opened mid-answer
      this.live.md.append(msg.text);
      this.live.chars += msg.text.length;
      this.schedule();
    } else if (msg.type === "end" && this.live) this.endAnswer(msg);
  }

  submit() {
    const text = this.input.value;
    if (!text.trim() || this.model.get("busy") || this.turn) return;
    this.input.value = "";
    // Direct: the page starts the turn itself, from the conversation the kernel sent last (no kernel round trip).
    if (this.model.get("direct")) this.startDirect(text, this.context);
    else this.model.send({ type: "send", text });
  }

  stop() {
    if (this.turn) this.turn.stop();
    else this.model.send({ type: "stop" });
  }

  setEndpoint(endpoint) {
    this.endpoint = endpoint;
    try {
      this.where = resolveRoute(endpoint, this.model.get("route"));
      this.root.dataset.server = this.where.base; // the address only: the token stays in memory
      this.stats.textContent = `${this.model.get("transport")} ${this.where.route} · ready`;
    } catch (e) { this.where = null; this.stats.textContent = String(e.message || e); }
  }

  startDirect(text, template) {
    if (this.turn || !text.trim()) return;
    if (!this.endpoint || !this.where || !template) {
      this.stats.textContent = "no server address yet: the kernel sends it when it is free";
      return;
    }
    this.startAnswer(text);
    const request = { ...template, userMessage: { role: "user", content: text } };
    this.turn = new DirectTurn({ where: this.where, token: this.endpoint.token, transport: this.model.get("transport"),
      request, onChunk: (piece) => this.onDelta(piece), onEnd: (status, error, metrics) => this.endDirect(text, status, error, metrics) });
    this.syncControls();
    this.stats.textContent = `${this.model.get("transport")} ${this.where.route} · waiting for the first token…`;
    this.turn.start();
  }

  onDelta(piece) {
    if (!this.live) this.startAnswer();
    this.live.md.append(piece);
    this.live.chars += piece.length;
    this.schedule();
  }

  endDirect(user, status, error, metrics) {
    const answer = this.live ? this.live.md.text : "";
    if (this.live) this.endAnswer({ status, error });
    this.turn = null;
    this.lastMetrics = metrics.summary();
    const stats = metrics.footer(status) + (error ? ` · ${error}` : "");
    this.stats.textContent = stats;
    this.syncControls();
    // The kernel records it when it is free: the conversation %%chat shares stays one.
    this.model.send({ type: "done", user, answer, status, error, metrics: this.lastMetrics, stats });
  }

  // Wires the controls and the model; returns the cleanup anywidget calls when the view goes.
  bind() {
    this.sendButton.addEventListener("click", () => this.submit());
    this.stopButton.addEventListener("click", () => this.stop());
    this.input.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.submit(); }
    });
    this.picker.addEventListener("change", () => {
      this.model.set("transport", this.picker.value);
      this.model.save_changes();
    });
    const handlers = {
      "msg:custom": (msg) => this.onCustom(msg),
      "change:messages": () => this.drawHistory(),
      "change:busy": () => this.syncControls(),
      "change:stats": () => this.syncStats(),
      "change:transport": () => this.syncPicker(),
      "change:transports": () => this.syncPicker(),
    };
    for (const [name, handler] of Object.entries(handlers)) this.model.on(name, handler);
    this.syncPicker();
    this.syncControls();
    this.drawHistory();
    this.syncStats();
    if (this.model.get("direct")) {
      OWNER.set(this.model, this);
      this.model.send({ type: "hello", origin: location.origin });
    }
    return () => {
      if (this.frame) cancelAnimationFrame(this.frame);
      if (this.turn) this.turn.stop();
      if (OWNER.get(this.model) === this) OWNER.delete(this.model);
      for (const [name, handler] of Object.entries(handlers)) this.model.off(name, handler);
    };
  }
}

// A %%chat answer while it streams (nbchat.notebook.live.LiveAnswer): the answer alone, no controls. The kernel
// sends only new text; the cell's output is replaced by the answer as Markdown when the turn ends.
function renderAnswer(model, el) {
  const root = node("div", "nbchat-widget nbchat-answer-view");
  const bubble = node("div", "nbchat-assistant nbchat-streaming");
  const note = node("div", "nbchat-note", model.get("note"));
  root.append(note, bubble);
  el.append(root);
  const md = new MarkdownStream(bubble);
  let frame = 0;
  const grow = (text) => {
    if (!text) return;
    note.remove();
    md.append(text);
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; md.render(); });
  };
  // Deltas sent before this view's module loaded never reached it: the text synced about once a second
  // (the answer so far) fills the gap, and a delta that does not follow on from what is shown waits for it.
  const catchUp = () => {
    const text = model.get("text");
    if (text.length > md.text.length && text.startsWith(md.text)) grow(text.slice(md.text.length));
  };
  const onNote = () => { note.textContent = model.get("note"); };
  const onCustom = (msg) => {
    if (msg.type !== "delta" || msg.at > md.text.length) return;
    grow(msg.text.slice(md.text.length - msg.at));
  };
  model.on("change:note", onNote);
  model.on("change:text", catchUp);
  model.on("msg:custom", onCustom);
  catchUp();
  return () => {
    if (frame) cancelAnimationFrame(frame);
    model.off("change:note", onNote);
    model.off("change:text", catchUp);
    model.off("msg:custom", onCustom);
  };
}

function render({ model, el }) {
  if (model.get("view") === "answer") return renderAnswer(model, el);
  return new ChatView(model, el).bind();
}

export default { render };
