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

import CONTRACT from "./js/contract.js";
import { DirectTurn } from "./js/direct.js";
import { pageOf, resolveRoute } from "./js/route.js";
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
    if (message.status && message.status !== CONTRACT.statuses.DONE) bubble.append(node("div", "nbchat-status", message.status));
  }
  log.append(bubble);
  return bubble;
}

// ------------------------------------------------------------------ direct mode
//
// ChatWidget(direct=True): the page opens the stream itself, with the browser's
// native WebSocket, EventSource or fetch reader (js/direct.js), so the answer
// never waits for the kernel. The kernel sends the endpoint (with the server's
// token; none for a JupyterHub's service, see js/route.js) and the
// conversation in custom messages, which are never saved with the notebook; it
// sends them again until it hears from the page, so the page takes each only
// once (an ask by its id).

// Without word from the kernel for this long, the stats line says why nothing happens.
const SILENT_KERNEL_MS = 4000;
// A relayed Stop goes to the kernel again this often until the turn ends.
const STOP_RESEND_MS = 2000;
// The asks a model's page has started (a second view of the model, or a repeated ask, starts none).
const STARTED_ASKS = new WeakMap();

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
    this.stopping = 0; // relayed: the timer that repeats a Stop until the kernel ends the turn
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
    this.showProgress();
    this.log.scrollTop = this.log.scrollHeight;
  }

  showProgress() {
    if (!this.live) return;
    const via = this.turn ? ` ${this.turn.where.route}` : "";
    const stopping = this.stopping ? " · stopping…" : "";
    this.stats.textContent = `${this.model.get("transport")}${via} · streaming… ${this.live.chars} characters${stopping}`;
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
    if (!busy && this.stopping) { clearInterval(this.stopping); this.stopping = 0; }
    this.sendButton.disabled = busy;
    this.stopButton.disabled = !busy || Boolean(this.stopping);
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
    if (msg.status !== CONTRACT.statuses.DONE) bubble.append(node("div", "nbchat-status", msg.status));
    if (msg.error) bubble.append(node("div", "nbchat-error", msg.error));
    this.live = null;
  }

  onCustom(msg) {
    if (["endpoint", "context", "pending", "failed"].includes(msg.type)) this.heard();
    if (msg.type === "endpoint") this.setEndpoint(msg.endpoint);
    else if (msg.type === "context") this.context = msg.request;
    else if (msg.type === "ask") { if (OWNER.get(this.model) === this) this.askDirect(msg); }
    else if (msg.type === "stop") { if (this.turn) this.turn.stop(); }
    else if (msg.type === "pending") { if (!this.endpoint) this.stats.textContent = `${msg.what}…`; }
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

  // Relayed, Stop is a message to the kernel, which interrupts the stream it reads. The button says the click was
  // taken, and the message goes again every STOP_RESEND_MS until the kernel ends the turn (it is idempotent there),
  // so a Stop never depends on one message getting through.
  stop() {
    if (this.turn) { this.turn.stop(); return; }
    if (!this.model.get("busy") || this.stopping) return;
    const ask = () => this.model.send({ type: "stop" });
    this.stopping = setInterval(ask, STOP_RESEND_MS);
    ask();
    this.syncControls();
    this.showProgress();
  }

  // The kernel said something: the page is not waiting on a silent kernel.
  heard() {
    if (this.silence) { clearTimeout(this.silence); this.silence = 0; }
  }

  // The kernel sends the same endpoint again until it hears from the page: only a new one changes anything.
  setEndpoint(endpoint) {
    if (this.endpoint && JSON.stringify(endpoint) === JSON.stringify(this.endpoint)) return;
    this.endpoint = endpoint;
    try {
      this.where = resolveRoute(endpoint, this.model.get("route"), pageOf());
      this.root.dataset.server = this.where.base; // the address only: the token stays in memory
      this.stats.textContent = `${this.model.get("transport")} ${this.where.route} · ready`;
    } catch (e) { this.where = null; this.stats.textContent = String(e.message || e); }
  }

  // An ask from the kernel: started once, when the page has the endpoint (the kernel sends it again until then).
  askDirect(msg) {
    const started = STARTED_ASKS.get(this.model) || new Set();
    STARTED_ASKS.set(this.model, started);
    if (msg.id !== undefined && started.has(msg.id)) return;
    if (this.startDirect(msg.text, msg.request) && msg.id !== undefined) started.add(msg.id);
  }

  // Returns whether the turn started.
  startDirect(text, template) {
    if (this.turn || !text.trim()) return false;
    if (!this.endpoint || !this.where || !template) {
      if (!this.where && this.endpoint) return false; // the stats line says why the route failed
      this.stats.textContent = "no server address yet: the kernel sends it once its server is up";
      return false;
    }
    let turn;
    try {
      turn = new DirectTurn({ where: this.where, token: this.endpoint.token, transport: this.model.get("transport"),
        request: { ...template, userMessage: { role: "user", content: text } }, origin: location.origin,
        onChunk: (piece) => this.onDelta(piece),
        onEnd: (status, error, metrics, stats) => this.endDirect(text, status, error, metrics, stats) });
    } catch (e) { this.stats.textContent = String(e.message || e); return false; }
    this.startAnswer(text);
    this.turn = turn;
    this.syncControls();
    this.stats.textContent = `${this.model.get("transport")} ${this.where.route} · waiting for the first token…`;
    this.turn.start();
    return true;
  }

  onDelta(piece) {
    if (!this.live) this.startAnswer();
    this.live.md.append(piece);
    this.live.chars += piece.length;
    this.schedule();
  }

  endDirect(user, status, error, metrics, stats) {
    const answer = this.live ? this.live.md.text : "";
    if (this.live) this.endAnswer({ status, error });
    this.turn = null;
    this.lastMetrics = metrics.summary();
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
      this.silence = setTimeout(() => {
        if (!this.endpoint) this.stats.textContent = `no word from the kernel in ${SILENT_KERNEL_MS / 1000} s: `
          + "it sends the server's address as soon as the widget is made, so it may have stopped or restarted "
          + "(run the cell that makes the widget again)";
      }, SILENT_KERNEL_MS);
    }
    return () => {
      this.heard();
      if (this.frame) cancelAnimationFrame(this.frame);
      if (this.stopping) clearInterval(this.stopping);
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
