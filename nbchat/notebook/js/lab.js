// The JupyterLab (and Notebook 7) extension nbchat installs: a renderer for the transcript a ChatWidget keeps
// in the notebook beside itself (application/vnd.nbchat.transcript+json, see nbchat.notebook.export).
//
// The same output also carries the conversation as text/markdown for nbconvert, GitHub and a Jupyter without
// nbchat. Ranked ahead of Markdown, this renderer spares JupyterLab typesetting that copy after every turn
// (its Markdown pipeline sanitizes, parses and runs MathJax over the whole conversation each time): where the
// live widget shows the conversation the transcript draws nothing, and in a notebook opened without a kernel
// it draws the conversation with the widget's own renderer, a slice per frame. Model text goes through the
// widget's renderer (markdown-it tokens to DOM nodes, never HTML), so the renderer is safe for untrusted
// notebooks.
//
// Built by build.sh (`jupyter labextension build`) into ../labextension/, which the wheel installs into
// share/jupyter/labextensions/nbchat; the styles come from style.js.

import { Widget } from "@lumino/widgets";

import { TranscriptView } from "./transcript.js";

export const MIME_TYPE = "application/vnd.nbchat.transcript+json";

class TranscriptRenderer extends Widget {
  constructor() {
    super();
    this.addClass("nbchat-transcript-output");
    this.view = null;
  }

  async renderModel(model) {
    if (this.view) this.view.dispose();
    this.node.replaceChildren();
    this.view = new TranscriptView(this.node, model.data[MIME_TYPE]);
  }

  dispose() {
    if (this.view) this.view.dispose();
    this.view = null;
    super.dispose();
  }
}

export default {
  id: "nbchat:transcript",
  // JupyterLab's Markdown renderer ranks 60; lower ranks win
  rank: 10,
  dataType: "json",
  rendererFactory: { safe: true, mimeTypes: [MIME_TYPE], createRenderer: () => new TranscriptRenderer() },
};
