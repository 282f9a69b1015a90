// Draws a saved ChatWidget conversation, the transcript a notebook keeps beside the widget, with the widget's
// own renderer (./stream.js): a slice of work per animation frame, so a long conversation never holds the page.
//
// The answers are fed to a MarkdownStream as if they streamed, a few thousand characters at a time: each
// slice commits the blocks it finished and redraws only the open one, so the whole draw is linear in the
// transcript's length and each frame does a bounded share of it. Nothing is drawn while the transcript is not
// shown: the live widget's stylesheet hides it in the cell where the widget itself shows the conversation,
// so there it costs nothing; it starts (or resumes) when the transcript comes into view.

import CONTRACT from "./contract.js";
import { el as node } from "./dom.js";
import { MarkdownStream } from "./stream.js";

// The time one frame spends drawing; the rest of the frame is the page's.
const FRAME_BUDGET_MS = 8;
// How many characters of an answer one step feeds to its renderer (cut back to a line's end when one is in it).
const PIECE = 4000;

function piece(text, from) {
  const end = Math.min(text.length, from + PIECE);
  if (end === text.length) return end;
  const newline = text.lastIndexOf("\n", end);
  return newline > from ? newline + 1 : end;
}

export class TranscriptView {
  // `transcript`: {title, system, messages: [{role, content, status?, caption?}]} (nbchat.notebook.export).
  constructor(container, transcript) {
    this.root = node("div", "nbchat-mirror nbchat-transcript");
    container.append(this.root);
    const data = transcript && typeof transcript === "object" ? transcript : {};
    this.messages = Array.isArray(data.messages) ? data.messages : [];
    this.root.append(node("div", "nbchat-transcript-title", String(data.title || "ChatWidget conversation")));
    if (data.system) this.root.append(node("div", "nbchat-note", `System: ${data.system}`));
    if (!this.messages.length) this.root.append(node("div", "nbchat-note", "(no messages yet)"));
    this.index = 0; // the message being drawn
    this.live = null; // {md, bubble, at} while an answer is fed to its renderer
    this.frame = 0;
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) this.schedule();
    }, { rootMargin: "1000px 0px" });
    this.observer.observe(this.root);
  }

  get done() { return this.index >= this.messages.length; }

  schedule() {
    if (!this.frame && !this.done) this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.frame = 0;
    // Hidden (display: none has no boxes): wait for the observer to report it shown again.
    if (!this.root.isConnected || this.root.getClientRects().length === 0) return;
    const start = performance.now();
    while (!this.done && performance.now() - start < FRAME_BUDGET_MS) this.step();
    if (this.done) {
      this.root.dataset.drawn = "true";
      this.observer.disconnect();
    } else this.schedule();
  }

  // One message started, or one piece of an answer drawn.
  step() {
    const message = this.messages[this.index] || {};
    const text = String(message.content ?? "");
    if (message.role !== "assistant") {
      this.root.append(node("div", `nbchat-msg nbchat-${message.role === "user" ? "user" : "note"}`, text));
      this.index += 1;
      return;
    }
    if (!this.live) {
      const bubble = node("div", "nbchat-msg nbchat-assistant");
      this.root.append(bubble);
      this.live = { md: new MarkdownStream(bubble), bubble, at: 0 };
    }
    const { md, bubble, at } = this.live;
    const end = piece(text, at);
    md.append(text.slice(at, end));
    this.live.at = end;
    if (end < text.length) { md.render(); return; }
    md.finish();
    if (message.status && message.status !== CONTRACT.statuses.DONE) bubble.append(node("div", "nbchat-status", message.status));
    if (message.caption) this.root.append(node("div", "nbchat-caption", message.caption));
    this.live = null;
    this.index += 1;
  }

  dispose() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.observer.disconnect();
  }
}
