// The extension's styles: KaTeX's (its fonts as files beside the extension) and the widget's own.
import "katex/dist/katex.min.css";
import "../widget.css";
