// The browser side of nbchat.ChatWidget (an anywidget ES module).
//
// Safety: model output is never parsed as HTML. The small Markdown renderer
// below builds the DOM with createElement and text nodes only (no innerHTML),
// so "<script>" or "<img onerror=...>" in an answer shows as text.
//
// Cost: deltas are appended to the answer's text; once per animation frame
// the renderer commits the complete lines that arrived since the last frame
// and re-renders only the open block (the last paragraph, or the partial last
// line of an open code fence). Finished blocks are never touched again, so
// the work is linear in the answer's length, not quadratic.

const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|\*(?=\S)([\s\S]*?\S)\*|\b_(?=\S)([\s\S]*?\S)_\b|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g;
const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

function node(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderInline(parent, text) {
  let last = 0;
  const re = new RegExp(INLINE.source, "g"); // a fresh lastIndex: emphasis recurses
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    if (m[1] !== undefined) parent.append(node("code", null, m[2].replace(/^ (.*) $/s, "$1")));
    else if (m[3] !== undefined) renderInline(parent.appendChild(node("strong")), m[3]);
    else if (m[4] !== undefined) renderInline(parent.appendChild(node("em")), m[4]);
    else if (m[5] !== undefined) renderInline(parent.appendChild(node("em")), m[5]);
    else {
      const a = node("a", null, m[6]);
      a.href = m[7]; // only http(s) URLs match: never javascript:
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      parent.append(a);
    }
    last = re.lastIndex;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

// One block: the lines between two blank lines, outside code fences.
function renderBlock(lines) {
  const out = [];
  const paras = [];
  let para = null;
  let list = null;
  let quote = null;
  const close = () => { para = null; list = null; quote = null; };
  for (const line of lines) {
    let m;
    if ((m = HEADING.exec(line))) {
      close();
      const h = node(`h${m[1].length}`);
      renderInline(h, m[2]);
      out.push(h);
    } else if (RULE.test(line)) {
      close();
      out.push(node("hr"));
    } else if ((m = ITEM.exec(line))) {
      const ordered = /\d/.test(m[2]);
      if (!list || list.ordered !== ordered) {
        close();
        list = { ordered, el: node(ordered ? "ol" : "ul") };
        if (ordered && parseInt(m[2], 10) !== 1) list.el.start = parseInt(m[2], 10);
        out.push(list.el);
      }
      para = null;
      const li = node("li");
      renderInline(li, m[3]);
      list.el.append(li);
      list.last = li;
    } else if ((m = QUOTE.exec(line))) {
      if (!quote) { close(); quote = node("blockquote"); out.push(quote); }
      if (quote.childNodes.length) quote.append(document.createTextNode("\n"));
      renderInline(quote, m[1]);
    } else if (list && /^\s+\S/.test(line)) {
      list.last.append(document.createTextNode("\n"));
      renderInline(list.last, line.trim());
    } else {
      if (!para) { close(); para = { text: line, el: node("p") }; paras.push(para); out.push(para.el); }
      else para.text += "\n" + line;
    }
  }
  // Paragraph text is rendered whole, so inline code and emphasis may span its lines.
  for (const p of paras) renderInline(p.el, p.text);
  return out;
}

// Streams Markdown into a container: committed blocks stay, the open block is redrawn.
class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.text = "";
    this.pos = 0; // everything before pos is committed (complete lines)
    this.block = []; // complete lines of the open block
    this.fence = null; // {marker, code, partial}
    this.tail = node("div", "nbchat-tail");
    container.append(this.tail);
  }

  append(delta) { this.text += delta; }

  render() {
    for (let nl = this.text.indexOf("\n", this.pos); nl !== -1; nl = this.text.indexOf("\n", this.pos)) {
      this.line(this.text.slice(this.pos, nl));
      this.pos = nl + 1;
    }
    const partial = this.text.slice(this.pos);
    if (this.fence) {
      this.fence.partial.data = partial;
      this.tail.replaceChildren();
    } else {
      const lines = partial ? [...this.block, partial] : this.block;
      this.tail.replaceChildren(...renderBlock(lines));
    }
  }

  line(line) {
    if (this.fence) {
      this.fence.partial.data = ""; // the line is complete now: it replaces its partial text
      const closing = line.trim();
      if (closing.length >= this.fence.marker.length && closing === closing[0].repeat(closing.length)
          && closing[0] === this.fence.marker[0]) {
        this.fence = null;
      } else {
        this.fence.code.insertBefore(document.createTextNode(line + "\n"), this.fence.partial);
      }
      return;
    }
    const m = FENCE.exec(line);
    if (m) {
      this.commit();
      const pre = node("pre");
      const code = node("code", m[2] ? `language-${m[2]}` : null);
      const partial = document.createTextNode("");
      code.append(partial);
      pre.append(code);
      this.container.insertBefore(pre, this.tail);
      this.fence = { marker: m[1], code, partial };
    } else if (line.trim() === "") {
      this.commit();
    } else {
      this.block.push(line);
    }
  }

  commit() {
    if (!this.block.length) return;
    for (const el of renderBlock(this.block)) this.container.insertBefore(el, this.tail);
    this.block = [];
  }

  finish() {
    this.text += "\n";
    this.render();
    this.commit();
    this.tail.remove();
  }
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

// One view of the widget: its DOM, the answer streaming into it, and its model bindings.
class ChatView {
  constructor(model, el) {
    this.model = model;
    this.live = null; // {md, bubble, chars} while an answer streams
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
    this.stats.textContent = `${this.model.get("transport")} · streaming… ${this.live.chars} characters`;
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
    const busy = this.model.get("busy");
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
    if (msg.type === "start") this.startAnswer(msg.user);
    else if (msg.type === "delta") {
      if (!this.live) this.startAnswer(); // a view opened mid-answer
      this.live.md.append(msg.text);
      this.live.chars += msg.text.length;
      this.schedule();
    } else if (msg.type === "end" && this.live) this.endAnswer(msg);
  }

  submit() {
    const text = this.input.value;
    if (!text.trim() || this.model.get("busy")) return;
    this.input.value = "";
    this.model.send({ type: "send", text });
  }

  // Wires the controls and the model; returns the cleanup anywidget calls when the view goes.
  bind() {
    this.sendButton.addEventListener("click", () => this.submit());
    this.stopButton.addEventListener("click", () => this.model.send({ type: "stop" }));
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
    return () => {
      if (this.frame) cancelAnimationFrame(this.frame);
      for (const [name, handler] of Object.entries(handlers)) this.model.off(name, handler);
    };
  }
}

function render({ model, el }) {
  return new ChatView(model, el).bind();
}

export default { render };
