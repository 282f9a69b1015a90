// Syntax highlighting of finished code blocks with Lezer, the parser JupyterLab's
// own editor (CodeMirror 6) uses. highlightCode hands back text pieces and their
// token classes, which become text nodes inside <span>s: the code never passes
// through an HTML string. The classes (tok-keyword, tok-string, ...) are styled in
// widget.css with JupyterLab's editor colours, so a dark theme stays readable.

import { classHighlighter, highlightCode } from "@lezer/highlight";
import { parser as cpp } from "@lezer/cpp";
import { parser as javascript } from "@lezer/javascript";
import { parser as json } from "@lezer/json";
import { parser as python } from "@lezer/python";

const typescript = javascript.configure({ dialect: "ts" });
const jsx = javascript.configure({ dialect: "jsx" });
const tsx = javascript.configure({ dialect: "jsx ts" });

const PARSERS = {
  python, py: python, python3: python, ipython: python, sage: python,
  javascript, js: javascript, mjs: javascript, cjs: javascript, node: javascript,
  jsx, typescript, ts: typescript, tsx,
  json, jsonc: json,
  c: cpp, cpp, "c++": cpp, cc: cpp, cxx: cpp, h: cpp, hpp: cpp, cuda: cpp,
};

// Past this size a block stays plain: highlighting is a nicety, not worth a stalled page.
const MAX_CHARS = 200_000;

export function canHighlight(language) {
  return Object.hasOwn(PARSERS, language.toLowerCase());
}

// Fills `code` (a <code> element) with `text`, highlighted when its language is known.
export function fillCode(code, text, language) {
  if (!language || !canHighlight(language) || text.length > MAX_CHARS) {
    code.append(document.createTextNode(text));
    return false;
  }
  const parser = PARSERS[language.toLowerCase()];
  const doc = document.createDocumentFragment();
  highlightCode(text, parser.parse(text), classHighlighter, (piece, classes) => {
    if (!classes) { doc.append(document.createTextNode(piece)); return; }
    const span = document.createElement("span");
    span.className = classes;
    span.textContent = piece;
    doc.append(span);
  }, () => doc.append(document.createTextNode("\n")));
  code.append(doc);
  code.classList.add("nbchat-highlighted");
  return true;
}
