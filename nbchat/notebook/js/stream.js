// Streams Markdown into a container, re-rendering only the block still being written.
//
// Deltas are appended to the answer's text; once per animation frame render()
// parses the text after the last committed block. Each top-level block that the
// text still to come cannot change is committed: its nodes are placed for good
// and the parse starts after it next time. What is left (the open block, usually
// one paragraph or an open code fence) is redrawn in a tail element. The work per
// frame is the open block's, so the whole answer costs time linear in its length.
//
// A block is final once a later block starts and either a blank line lies between
// them or the block closes itself (a closed fence, display math, an ATX heading, a
// rule). Only lists and indented code go on past a blank line, so after one of them
// the later block must start on a complete line: "3" may yet become "3. item".

import { renderTokens } from "./dom.js";
import { md } from "./parse.js";

const SELF_CLOSING = new Set(["fence", "math_block", "hr"]);
const SPANS_BLANK_LINES = new Set(["bullet_list_open", "ordered_list_open", "code_block"]);

// Top-level blocks as [{tokens, map}]: an opening token at level 0 and everything up to its closing one.
function splitBlocks(tokens) {
  const blocks = [];
  let current = null;
  for (const t of tokens) {
    if (!current) {
      current = { tokens: [], map: t.map, first: t };
      blocks.push(current);
    }
    current.tokens.push(t);
    if (t.level === 0 && t.nesting !== 1) current = null;
  }
  return blocks;
}

function selfClosing(block) {
  const t = block.first;
  return SELF_CLOSING.has(t.type) || (t.type === "heading_open" && t.markup[0] === "#");
}

// The offset of each line's start in `text`.
function lineStarts(text) {
  const starts = [0];
  for (let nl = text.indexOf("\n"); nl !== -1; nl = text.indexOf("\n", nl + 1)) starts.push(nl + 1);
  return starts;
}

// Committed blocks go into chunks of this many: each chunk is skipped by layout and paint while it is out of
// view (content-visibility, see widget.css), so a frame costs what is on screen, not the whole answer.
const CHUNK_BLOCKS = 16;

export class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.text = "";
    this.pos = 0; // everything before pos is committed: whole blocks, placed for good
    this.chunk = null; // the chunk taking committed blocks now, and how many it holds
    this.chunkBlocks = 0;
    this.tail = document.createElement("div");
    this.tail.className = "nbchat-tail";
    container.append(this.tail);
  }

  // Places finished blocks for good, in chunks of CHUNK_BLOCKS.
  commit(blocks) {
    for (let i = 0; i < blocks.length;) {
      if (!this.chunk || this.chunkBlocks >= CHUNK_BLOCKS) {
        this.chunk = document.createElement("div");
        this.chunk.className = "nbchat-chunk";
        this.chunkBlocks = 0;
        this.container.insertBefore(this.chunk, this.tail);
      }
      const take = blocks.slice(i, i + CHUNK_BLOCKS - this.chunkBlocks);
      this.chunk.append(renderTokens(take.flatMap((b) => b.tokens), Infinity));
      this.chunkBlocks += take.length;
      i += take.length;
    }
  }

  append(delta) { this.text += delta; }

  render() { this.draw(false); }

  draw(finished) {
    const rest = this.text.slice(this.pos);
    const starts = lineStarts(rest);
    const complete = finished ? Infinity : starts.length - 1; // the lines ended by a newline
    const blocks = splitBlocks(md.parse(rest, {}));
    let keep = 0; // blocks[0..keep) are final
    for (let i = 0; i + 1 < blocks.length; i++) {
      const [next] = blocks[i + 1].map;
      if (next >= complete && SPANS_BLANK_LINES.has(blocks[i].first.type)) break;
      if (next > blocks[i].map[1] || selfClosing(blocks[i])) keep = i + 1;
    }
    if (finished) keep = blocks.length;
    if (keep) {
      this.commit(blocks.slice(0, keep));
      this.pos += keep < blocks.length ? starts[blocks[keep].map[0]] : rest.length;
    }
    this.tail.replaceChildren(renderTokens(blocks.slice(keep).flatMap((b) => b.tokens), complete));
  }

  finish() {
    this.draw(true);
    this.tail.remove();
  }
}
