// markdown-it tokens to DOM nodes, built with createElement and text nodes only.
//
// Model text only ever becomes text nodes or attribute values checked here (link
// targets must be http(s) or mailto). Math is typeset by KaTeX's katex.render,
// which builds its own nodes from the math source with trust off, so \href,
// \htmlClass and the like stay inert.

import katex from "katex";

import { fillCode } from "./highlight.js";
import { fenceClosed } from "./parse.js";

// The elements markdown-it's block and inline rules open (never a tag from the model's text).
const TAGS = new Set(["p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "em", "strong", "s",
  "table", "thead", "tbody", "tr", "th", "td"]);
const SAFE_URL = /^(https?:|mailto:)/i;
const ALIGN = /^text-align:(left|center|right)$/;

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// Typesets `source` into a new element; an error shows the source in red (throwOnError: false).
function math(source, display) {
  const box = el(display ? "div" : "span", display ? "nbchat-math nbchat-math-display" : "nbchat-math");
  try {
    katex.render(source, box, { displayMode: display, throwOnError: false, trust: false, strict: "ignore",
      maxExpand: 500 });
  } catch (e) { // only non-ParseErrors reach here (e.g. KaTeX's quirks-mode refusal): the source as text
    box.textContent = source;
  }
  return box;
}

// A copy button for a finished code block: the code's text, as text, through the Clipboard API.
function copyButton(text) {
  const button = el("button", "nbchat-copy", "Copy");
  button.type = "button";
  button.title = "Copy the code";
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (e) { // no clipboard (a page served over plain http, or permission refused)
      button.textContent = "Copy failed";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  });
  return button;
}

function language(info) {
  const word = (info || "").trim().split(/\s+/)[0];
  return /^[\w+#.-]{1,32}$/.test(word) ? word : "";
}

// A code block: plain monospace while its fence is open, highlighted with a copy button once closed.
function codeBlock(text, info, finished) {
  const lang = language(info);
  const box = el("div", "nbchat-code");
  const pre = el("pre");
  const code = el("code", lang ? `language-${lang}` : null);
  if (finished) fillCode(code, text, lang);
  else code.append(document.createTextNode(text));
  pre.append(code);
  box.append(pre);
  if (finished) box.append(copyButton(text));
  return box;
}

function link(token) {
  const href = token.attrGet("href") || "";
  if (!SAFE_URL.test(href)) return null;
  const a = el("a");
  a.href = href;
  const title = token.attrGet("title");
  if (title) a.title = title;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

// An image is shown as a link to it: nothing is loaded from a URL the model wrote.
function image(token) {
  const alt = token.children ? token.children.map((t) => t.content).join("") : token.content;
  const a = link({ attrGet: (name) => (name === "href" ? token.attrGet("src") : token.attrGet(name)) });
  if (!a) return document.createTextNode(alt);
  a.className = "nbchat-image-link";
  a.textContent = `🖼 ${alt || "image"}`;
  return a;
}

function inline(parent, tokens) {
  const stack = [parent];
  for (const t of tokens) {
    const top = stack[stack.length - 1];
    if (t.nesting === 1) {
      const opened = t.type === "link_open" ? link(t) : TAGS.has(t.tag) ? el(t.tag) : null;
      // An unsafe link keeps its text, without the anchor: its children go to the parent.
      if (opened) top.append(opened);
      stack.push(opened || top);
    } else if (t.nesting === -1) {
      stack.pop();
    } else if (t.type === "text" || t.type === "text_special") {
      top.append(document.createTextNode(t.content));
    } else if (t.type === "code_inline") {
      top.append(el("code", null, t.content));
    } else if (t.type === "softbreak") {
      top.append(document.createTextNode("\n"));
    } else if (t.type === "hardbreak") {
      top.append(el("br"));
    } else if (t.type === "math_inline") {
      top.append(math(t.content, t.meta.display));
    } else if (t.type === "image") {
      top.append(image(t));
    } else if (t.content) { // anything else markdown-it may add: its text, never markup
      top.append(document.createTextNode(t.content));
    }
  }
}

function opened(t) {
  if (t.hidden) return null; // the paragraphs of a tight list: their text goes in the <li>
  if (!TAGS.has(t.tag)) return el("div");
  const e = el(t.tag);
  if (t.tag === "ol") {
    const start = Number.parseInt(t.attrGet("start") || "1", 10);
    if (start !== 1 && Number.isFinite(start)) e.start = start;
  }
  const align = ALIGN.exec(t.attrGet("style") || "");
  if (align) e.style.textAlign = align[1];
  return e;
}

// Block tokens (one or more whole top-level blocks) to DOM nodes.
// `completeLines`: a fence ending after it is not finished yet (its closing line is still being written).
export function renderTokens(tokens, completeLines = Infinity) {
  const root = document.createDocumentFragment();
  const stack = [root];
  for (const t of tokens) {
    const top = stack[stack.length - 1];
    if (t.nesting === 1) {
      const e = opened(t);
      if (e) top.append(e);
      stack.push(e || top);
    } else if (t.nesting === -1) {
      stack.pop();
    } else if (t.type === "inline") {
      inline(top, t.children || []);
    } else if (t.type === "fence") {
      top.append(codeBlock(t.content, t.info, fenceClosed(t) && t.map[1] <= completeLines));
    } else if (t.type === "code_block") {
      top.append(codeBlock(t.content, "", true));
    } else if (t.type === "math_block") {
      top.append(math(t.content, true));
    } else if (t.type === "hr") {
      top.append(el("hr"));
    } else if (t.content) {
      top.append(el("p", null, t.content));
    }
  }
  return root;
}
