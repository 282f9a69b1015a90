// The extension's styles: KaTeX's, with the same inlined fonts as the widget's bundle (katex-inline.css, written
// by build.mjs), and the widget's own.
import "./katex-inline.css";
import "../widget.css";
