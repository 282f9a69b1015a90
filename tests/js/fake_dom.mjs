// Just enough of a DOM for the widget's Markdown renderer (js/stream.js, js/dom.js) and KaTeX under node:
// elements, text nodes and fragments, and a serializer to compare two renderings.

class Node {
  constructor() { this.parentNode = null; this.childNodes = []; }

  get firstChild() { return this.childNodes[0] ?? null; }

  append(...nodes) { for (const n of nodes) this.insertBefore(typeof n === "string" ? new Text(n) : n, null); }

  appendChild(node) { this.insertBefore(node, null); return node; }

  insertBefore(node, ref) {
    const moving = node instanceof Fragment ? [...node.childNodes] : [node];
    if (node instanceof Fragment) node.childNodes = [];
    for (const n of moving) {
      if (n.parentNode) n.remove();
      n.parentNode = this;
      const at = ref === null ? this.childNodes.length : this.childNodes.indexOf(ref);
      if (at < 0) throw new Error("insertBefore: the reference is not a child");
      this.childNodes.splice(at, 0, n);
    }
    return node;
  }

  replaceChildren(...nodes) {
    for (const n of this.childNodes) n.parentNode = null;
    this.childNodes = [];
    this.append(...nodes);
  }

  remove() {
    if (!this.parentNode) return;
    const siblings = this.parentNode.childNodes;
    siblings.splice(siblings.indexOf(this), 1);
    this.parentNode = null;
  }

  get textContent() { return this.childNodes.map((n) => n.textContent).join(""); }

  set textContent(text) { this.replaceChildren(...(text === "" ? [] : [new Text(String(text))])); }
}

class Text extends Node {
  constructor(data) { super(); this.data = data; }

  get textContent() { return this.data; }

  set textContent(text) { this.data = String(text); }
}

class Fragment extends Node {}

class Element extends Node {
  constructor(tag, ns = null) {
    super();
    this.tagName = tag.toUpperCase();
    this.namespaceURI = ns;
    this.attributes = new Map();
    this.style = {};
    this.listeners = [];
    this.dataset = {};
  }

  get className() { return this.attributes.get("class") ?? ""; }

  set className(value) { this.attributes.set("class", String(value)); }

  get classList() {
    const el = this;
    const list = () => el.className.split(/\s+/).filter(Boolean);
    return { add: (...c) => { el.className = [...new Set([...list(), ...c])].join(" "); },
             remove: (...c) => { el.className = list().filter((x) => !c.includes(x)).join(" "); },
             contains: (c) => list().includes(c) };
  }

  setAttribute(name, value) { this.attributes.set(name, String(value)); }

  getAttribute(name) { return this.attributes.get(name) ?? null; }

  removeAttribute(name) { this.attributes.delete(name); }

  addEventListener(type, fn) { this.listeners.push([type, fn]); }
}

// The properties the renderer sets directly, kept as attributes so the serializer sees them.
for (const prop of ["href", "title", "target", "rel", "type", "start"]) {
  Object.defineProperty(Element.prototype, prop, {
    get() { return this.attributes.get(prop) ?? ""; },
    set(value) { this.attributes.set(prop, String(value)); },
  });
}

export const document = {
  compatMode: "CSS1Compat", // KaTeX refuses to typeset in quirks mode
  createElement: (tag) => new Element(tag),
  createElementNS: (ns, tag) => new Element(tag, ns),
  createTextNode: (text) => new Text(String(text)),
  createDocumentFragment: () => new Fragment(),
};

// A node as HTML-like text: tags, sorted attributes, styles and text (escaped), for comparing renderings.
export function serialize(node) {
  if (node instanceof Text) return node.data.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const inner = node.childNodes.map(serialize).join("");
  if (!(node instanceof Element)) return inner;
  const attrs = [...node.attributes].sort().map(([k, v]) => ` ${k}="${v}"`).join("");
  const style = Object.entries(node.style).sort().map(([k, v]) => `${k}:${v}`).join(";");
  const tag = node.tagName.toLowerCase();
  return `<${tag}${attrs}${style ? ` style="${style}"` : ""}>${inner}</${tag}>`;
}

export function container() {
  return document.createElement("div");
}

globalThis.document = document;
