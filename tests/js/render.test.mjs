// The renderer's streaming property: an answer streamed in any pieces, rendered after each, ends as
// the same DOM as the whole answer rendered at once.

import assert from "node:assert/strict";
import { test } from "node:test";

import { container, serialize } from "./fake_dom.mjs";

const { MarkdownStream } = await import("../../nbchat/notebook/js/stream.js");

const SAMPLES = {
  prose: "A paragraph with *emphasis*, `code` and a [link](https://example.org).\n\nA second one,\nsoftly broken.\n",
  lists: "1. first\n2. second\n   - nested\n   - more\n\n3. third after a blank line\n\n- a\n- b\n\nAfter the list.",
  code: "Before:\n\n```python\ndef f(x):\n    return x * 2  # twice\n```\n\n    indented code\n\nAfter `f`.",
  math: "Inline $e^{i\\pi} + 1 = 0$ and \\(a^2\\), display:\n\n$$\\sum_{k=1}^{n} k$$\n\n\\[x = 1\\]\n\nCosts $5 and $6.",
  blocks: "# Title\n\n> quoted\n> twice\n\n---\n\n| a | b |\n|---|:-:|\n| 1 | 2 |\n\n## End\ntext",
  hostile: "Hi <img src=x onerror=alert(1)> and <script>x()</script> **bold**",
};

function oneShot(text) {
  const box = container();
  const md = new MarkdownStream(box);
  md.append(text);
  md.finish();
  return serialize(box);
}

function streamed(text, cuts) {
  const box = container();
  const md = new MarkdownStream(box);
  let at = 0;
  for (const cut of [...cuts, text.length]) {
    md.append(text.slice(at, cut));
    md.render(); // a frame between deltas: blocks get committed as they finish
    at = cut;
  }
  md.finish();
  return serialize(box);
}

for (const [name, text] of Object.entries(SAMPLES)) {
  test(`${name}: split in two at every position, it renders as the whole`, () => {
    const whole = oneShot(text);
    for (let cut = 0; cut <= text.length; cut++) assert.equal(streamed(text, [cut]), whole, `cut at ${cut}`);
  });
}

test("every sample streamed one character a frame, and in random pieces, renders as the whole", () => {
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (const text of Object.values(SAMPLES)) {
    const whole = oneShot(text);
    assert.equal(streamed(text, [...Array(text.length).keys()]), whole);
    for (let round = 0; round < 20; round++) {
      const cuts = [...Array(text.length).keys()].filter(() => random() < 0.15);
      assert.equal(streamed(text, cuts), whole, `cuts ${cuts}`);
    }
  }
});

test("model text stays text: no element comes from the answer's HTML", () => {
  const html = oneShot(SAMPLES.hostile);
  assert.ok(!html.includes("<img") && !html.includes("<script"), html);
  assert.ok(html.includes("&lt;script>x()&lt;/script>") && html.includes("<strong>bold</strong>"), html);
});

test("finished blocks go into chunks of 16, in order, however the answer streams", () => {
  const text = Array.from({ length: 40 }, (_, i) => `Paragraph ${i} with $x_${i}$.`).join("\n\n");
  const whole = oneShot(text);
  const chunks = whole.match(/<div class="nbchat-chunk">/g) || [];
  assert.equal(chunks.length, 3, whole); // 16 + 16 + 8 paragraphs, each chunk skipped by the browser out of view
  assert.ok(whole.indexOf("Paragraph 15") < whole.indexOf('<div class="nbchat-chunk">', 30));
  const starts = [0, 17, 300, 301, 555, text.length - 3];
  assert.equal(streamed(text, starts), whole);
  assert.equal(streamed(text, [...Array(text.length).keys()].filter((i) => i % 7 === 0)), whole);
});
