// The ChatWidget's Markdown parser: markdown-it with raw HTML off, plus math.
//
// markdown-it only produces tokens here; ./dom.js turns them into DOM nodes
// (its HTML renderer is never used). Math follows the delimiters notebooks and
// models use: $…$ and \(…\) inline, $$…$$ and \[…\] for display. The dollar
// rules are pandoc's, so prices stay text: an opening $ is followed by a
// non-space, a closing $ follows a non-space and is not followed by a digit.

import MarkdownIt from "markdown-it";

export const md = new MarkdownIt({ html: false, linkify: false, typographer: false });
// A reference definition may come after the link that uses it, so a streamed
// answer could render differently from the whole; answers rarely use them.
md.disable("reference");

const BACKSLASH = 0x5c;
const DOLLAR = 0x24;

// The end of inline math starting at `start` (after the opener), or -1.
function inlineEnd(src, start, max, dollar) {
  if (!dollar) {
    const end = src.indexOf("\\)", start);
    return end >= 0 && end < max ? end : -1;
  }
  if (start >= max || /\s/.test(src[start])) return -1;
  for (let pos = start; pos < max; pos++) {
    const ch = src.charCodeAt(pos);
    if (ch === BACKSLASH) { pos++; continue; } // \$ inside math is a dollar sign
    if (ch !== DOLLAR) continue;
    if (/\s/.test(src[pos - 1]) || /[0-9]/.test(src[pos + 1] || "")) return -1;
    return pos > start ? pos : -1;
  }
  return -1;
}

function mathInline(state, silent) {
  const { src, pos, posMax } = state;
  let open;
  let close;
  if (src.startsWith("$$", pos)) [open, close] = ["$$", "$$"];
  else if (src.charCodeAt(pos) === DOLLAR) [open, close] = ["$", "$"];
  else if (src.startsWith("\\(", pos)) [open, close] = ["\\(", "\\)"];
  else if (src.startsWith("\\[", pos)) [open, close] = ["\\[", "\\]"];
  else return false;
  const start = pos + open.length;
  let end;
  if (open === "$") end = inlineEnd(src, start, posMax, true);
  else if (open === "\\(") end = inlineEnd(src, start, posMax, false);
  else {
    end = src.indexOf(close, start);
    if (end >= posMax || end === start) end = -1;
  }
  if (end < 0) {
    if (open !== "$$") return false;
    if (!silent) state.pending += "$$"; // an unmatched $$ is text, not two single openers
    state.pos = start;
    return true;
  }
  if (!silent) {
    const token = state.push("math_inline", "math", 0);
    token.content = src.slice(start, end);
    token.markup = open;
    token.meta = { display: open === "$$" || open === "\\[" };
  }
  state.pos = end + close.length;
  return true;
}

// $$…$$ or \[…\] starting a line, closed on the same or a later line before any blank line
// (a blank line ends it, as it would end a paragraph: an unclosed block is shown as text).
function mathBlock(state, startLine, endLine, silent) {
  if (state.sCount[startLine] - state.blkIndent >= 4) return false;
  const first = state.src.slice(state.bMarks[startLine] + state.tShift[startLine], state.eMarks[startLine]);
  const open = first.startsWith("$$") ? "$$" : first.startsWith("\\[") ? "\\[" : null;
  if (!open) return false;
  const close = open === "$$" ? "$$" : "\\]";
  let body = first.slice(2);
  let line = startLine;
  for (;;) {
    const at = body.lastIndexOf(close);
    const rest = body.trimEnd();
    if (at >= 0 && rest.endsWith(close) && (line > startLine || rest.length > close.length - 1)) {
      body = rest.slice(0, -close.length);
      break;
    }
    line++;
    if (line >= endLine || state.isEmpty(line)) return false;
    body += "\n" + state.src.slice(state.bMarks[line] + state.tShift[line], state.eMarks[line]);
  }
  if (!body.trim()) return false;
  if (silent) return true;
  state.line = line + 1;
  const token = state.push("math_block", "math", 0);
  token.content = body.trim();
  token.markup = open;
  token.map = [startLine, state.line];
  return true;
}

// markdown-it's fence token does not say whether its closing fence came, but its line map
// does: the fence took its opening line, its content lines and, if closed, one more.
export function fenceClosed(token) {
  const content = token.content;
  const lines = content === "" ? 0 : content.split("\n").length - (content.endsWith("\n") ? 1 : 0);
  return token.map[1] - token.map[0] === lines + 2;
}

const BLOCK_ALT = { alt: ["paragraph", "reference", "blockquote", "list"] };
md.block.ruler.before("fence", "math_block", mathBlock, BLOCK_ALT);
md.inline.ruler.before("escape", "math_inline", mathInline);
