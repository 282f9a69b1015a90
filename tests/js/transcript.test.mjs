// The saved-conversation renderer of nbchat's JupyterLab extension (js/transcript.js): it draws nothing while
// hidden, starts when it is shown, and ends with each answer rendered exactly as the widget renders it.

import assert from "node:assert/strict";
import { test } from "node:test";

import { container, serialize } from "./fake_dom.mjs";

// The page's scheduling, driven by the test: animation frames run when it says, and the observer reports
// visibility when it says.
const frames = [];
globalThis.requestAnimationFrame = (callback) => frames.push(callback);
globalThis.cancelAnimationFrame = () => {};
const observers = [];
globalThis.IntersectionObserver = class {
  constructor(callback) { this.callback = callback; this.observed = []; observers.push(this); }
  observe(node) { this.observed.push(node); }
  disconnect() { this.observed = []; }
};

const { MarkdownStream } = await import("../../nbchat/notebook/js/stream.js");
const { TranscriptView } = await import("../../nbchat/notebook/js/transcript.js");

const ANSWER = ["# Steps", "Inline $e^{i\\pi} + 1 = 0$ and **bold**.", "```python\ndef f(x):\n    return x\n```",
  "Hi <img src=x onerror=alert(1)> done.\n\n"].join("\n\n").repeat(40);
const TRANSCRIPT = {
  title: "ChatWidget conversation (2 exchanges)",
  system: "",
  messages: [
    { role: "user", content: "first <b>question</b>" },
    { role: "assistant", content: ANSWER, status: "[DONE]", provenance: null, caption: "m (b) · ws to s" },
    { role: "user", content: "again" },
    { role: "assistant", content: "cut sh", status: "[INTERRUPTED]", provenance: null, caption: "" },
  ],
};

function widgetRendering(text) {
  const box = container();
  const md = new MarkdownStream(box);
  md.append(text);
  md.finish();
  return box.childNodes.map(serialize).join("");
}

// A transcript view in a node that is (or is not) laid out.
function view(shown) {
  const host = container();
  const transcript = new TranscriptView(host, TRANSCRIPT);
  Object.defineProperty(transcript.root, "isConnected", { value: true });
  transcript.root.getClientRects = () => (shown.value ? [{}] : []);
  return transcript;
}

function runFrames() {
  let count = 0;
  while (frames.length) {
    frames.shift()();
    count += 1;
  }
  return count;
}

test("hidden, it draws nothing; shown, it draws the conversation and each answer as the widget does", () => {
  const shown = { value: false };
  const transcript = view(shown);
  const observer = observers.at(-1);
  observer.callback([{ isIntersecting: true }]); // reported in view, but hidden by a stylesheet
  runFrames();
  assert.equal(transcript.root.childNodes.length, 1); // the title only
  assert.equal(transcript.root.dataset.drawn, undefined);

  shown.value = true;
  observer.callback([{ isIntersecting: true }]);
  assert.ok(runFrames() >= 1);
  assert.equal(transcript.root.dataset.drawn, "true");
  const [title, user, answer, caption, again, cut] = transcript.root.childNodes;
  assert.equal(title.textContent, TRANSCRIPT.title);
  assert.equal(serialize(user), '<div class="nbchat-msg nbchat-user">first &lt;b>question&lt;/b></div>');
  assert.equal(serialize(answer), `<div class="nbchat-msg nbchat-assistant">${widgetRendering(ANSWER)}</div>`);
  assert.equal(caption.textContent, "m (b) · ws to s");
  assert.equal(again.textContent, "again");
  assert.equal(cut.childNodes.at(-1).textContent, "[INTERRUPTED]");
  assert.ok(!serialize(transcript.root).includes("<img"));
});

test("hidden again midway, it stops until it is shown again", () => {
  const shown = { value: true };
  const transcript = view(shown);
  transcript.step(); // the user's message
  transcript.step(); // the first piece of the answer
  const partial = serialize(transcript.root);
  shown.value = false;
  observers.at(-1).callback([{ isIntersecting: true }]);
  runFrames();
  assert.equal(serialize(transcript.root), partial);
  assert.notEqual(transcript.root.dataset.drawn, "true");
  shown.value = true;
  observers.at(-1).callback([{ isIntersecting: true }]);
  runFrames();
  assert.equal(transcript.root.dataset.drawn, "true");
  assert.ok(serialize(transcript.root).length > partial.length);
});
