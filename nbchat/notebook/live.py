"""How a ``%%chat`` answer is shown while it streams, and how it ends as one Markdown output.

Replacing a Markdown output with the whole answer so far makes the page parse,
sanitize and typeset everything again on every update: the cost of an update
grows with the answer, and the total with its square. So in a kernel,
:class:`StreamView` shows the growing answer through :class:`LiveAnswer`, a
view of the ChatWidget's own front end (the same bundle): the kernel sends only
the new text, and the page renders each finished block once and re-renders only
the block still being written. When the turn ends, that output is replaced in
place by the answer as a plain ``text/markdown`` output, the one the saved
notebook keeps (with its provenance in ``metadata["nbchat"]``), which
JupyterLab, Notebook 7, nbconvert and GitHub render without a kernel.

Outside a kernel (IPython in a terminal, tests), or with ``%%chat --no-widget``
for a front end without Jupyter widgets, the answer grows as a Markdown output
replaced at most ~20 times a second, as it always could.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import time
from typing import Any

from .render import Throttle, answer_markdown, split_blocks

_STATIC = pathlib.Path(__file__).parent / "static"
#: seconds between syncs of the whole answer so far to the live view. Deltas are custom messages, which
#: the page drops until the view's module has loaded (a few hundred ms after it is shown, longer on a busy
#: page); the synced text is kept, so a late view catches up from it, at a bounded cost in traffic.
RESYNC_INTERVAL = 1.0
#: characters per Markdown output of a finished answer (whole blocks: a part may run a little over). In
#: JupyterLab a 40 KB answer rendered as one output stalled the page 1.5-2.7 s in one frame: the Markdown
#: parse and code highlighting, then MathJax typesetting ~250 formulas (measuring each), then the layout.
#: A part of this size costs ~30-70 ms on a busy 2-core machine.
PART_CHARS = 1000
#: at most this many parts: JupyterLab and Notebook 7 show 50 outputs of a cell (``maxNumberOutputs``) and
#: hide the rest behind "Show more outputs", so a longer answer has longer parts
MAX_PARTS = 40
#: seconds between the parts' messages. Sent at once, they reach the page together and Chromium runs
#: their renders back to back until it must paint (~100 ms later); spaced, each gets a frame of its own.
PART_INTERVAL = 0.03


def widgets_available() -> bool:
    """True inside a Jupyter kernel, whose front end can show widgets (a terminal IPython cannot)."""
    try:
        from IPython.core.getipython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


#: a live answer's module once its turn has ended (its view is gone): it draws nothing
SPENT_MODULE = "export default { render() {} };\n"


@functools.cache
def live_module() -> str:
    """The bundle with its CSS inside: the module adds the styles to the page once (by their digest).

    A widget's state holds its module and CSS (~1 MB), and nbclient saves the last state of every widget
    it saw, closed or not, in the notebook's metadata. Carrying the CSS in the module leaves one trait to
    empty when the turn ends (:data:`SPENT_MODULE`); a ``_css`` trait emptied would remove the styles that
    other live answers on the page (the same widget class, so the same style element) still use.
    """
    css = (_STATIC / "widget.css").read_text(encoding="utf-8")
    style = f"nbchat-css-{hashlib.sha256(css.encode()).hexdigest()[:16]}"
    return ((_STATIC / "widget.js").read_text(encoding="utf-8")
            + f"\n{{ if (!document.getElementById({json.dumps(style)})) {{"
            f" const style = document.createElement('style'); style.id = {json.dumps(style)};"
            f" style.textContent = {json.dumps(css)}; document.head.append(style); }} }}\n")


def _live_answer_class() -> type[Any]:
    # anywidget and traitlets load only once a kernel streams an answer: `import nbchat` stays light.
    import anywidget
    import traitlets

    class LiveAnswer(anywidget.AnyWidget):
        """One answer as it streams, rendered by the ChatWidget's bundle in its ``answer`` view."""

        _esm = live_module()
        #: tells the bundle to draw the answer alone (no input, no buttons)
        view = traitlets.Unicode("answer").tag(sync=True)
        #: shown until the first text arrives
        note = traitlets.Unicode("").tag(sync=True)
        #: the answer so far, synced about once a second: a view that missed deltas catches up from it
        text = traitlets.Unicode("").tag(sync=True)

    return LiveAnswer


class StreamView:
    """The cell's live output: one display that grows, updated at most ~20 times a second.

    Updates are coalesced by time (:class:`~nbchat.notebook.render.Throttle`), not by
    sleeping: a chunk that arrives within the interval waits for the next one
    or for the end, so a fast stream of thousands of chunks costs a bounded
    number of messages. With ``widget`` (the default in a kernel) a message
    carries only the new text; without, it carries the whole answer so far.
    """

    def __init__(self, throttle: Throttle | None = None, widget: bool | None = None) -> None:
        self.throttle = throttle or Throttle()
        self._resync = Throttle(RESYNC_INTERVAL)
        self.updates = 0
        self.widget = widgets_available() if widget is None else widget
        self._handle: Any = None
        #: the LiveAnswer shown while the answer streams (None before and after)
        self.live: Any = None
        self._pieces: list[str] = []
        self._sent = 0  # pieces already sent to the live view
        self._sent_chars = 0

    @property
    def started(self) -> bool:
        return self._handle is not None

    def start(self, note: str = "*waiting for the first token…*") -> None:
        from IPython.display import display

        if self.widget:
            if self.live is None:
                self.live = _live_answer_class()(note=note.strip("*"))
                self._handle = display(self.live, display_id=True)
            else:
                self.live.note = note.strip("*")
            return
        if self._handle is None:
            self._handle = display(self._bundle(note, ""), raw=True, display_id=True)
        else:
            self._update(self._bundle(note, ""))

    def add(self, content: str) -> None:
        self._pieces.append(content)
        if self.throttle.due():
            self._flush()

    def _flush(self) -> None:
        if self.live is not None:
            if self._sent < len(self._pieces):
                self.updates += 1
                new = "".join(self._pieces[self._sent:])
                self.live.send({"type": "delta", "text": new, "at": self._sent_chars})
                self._sent, self._sent_chars = len(self._pieces), self._sent_chars + len(new)
                if self._resync.due():
                    self.live.text = "".join(self._pieces)
            return
        text = "".join(self._pieces)
        self._update(self._bundle(answer_markdown(text), text))

    def finish(self, answer: str, footer: str, metadata: dict[str, Any] | None = None) -> None:
        """Show the whole answer and its footer as the Markdown the notebook keeps, ``metadata`` on its last part.

        A long answer ends as several Markdown outputs of whole blocks (:data:`PART_CHARS` each), sent
        as separate messages: the page renders each in a task of its own (its Markdown parse, sanitizer
        and math typesetting), so it keeps painting between them instead of stalling once for the whole.
        """
        from IPython.display import display

        live, self.live = self.live, None
        parts = split_blocks(answer, max(PART_CHARS, -(-len(answer) // MAX_PARTS)))
        last = parts.pop()
        bundles = [self._bundle(answer_markdown(part), part) for part in parts]
        bundles.append(self._bundle(answer_markdown(last, footer), f"{last}\n\n{footer}".lstrip()))
        self._update(bundles[0], metadata if len(bundles) == 1 else None)
        for n, bundle in enumerate(bundles[1:], 2):
            time.sleep(PART_INTERVAL)  # pacing for the page's sake: nothing here to wait for
            self.updates += 1
            display(bundle, raw=True, metadata=metadata if n == len(bundles) else None)
        if live is not None:  # its view is gone, replaced above: nothing of it stays in the notebook
            with live.hold_sync():  # nbclient keeps a closed widget's last state: make that a few bytes
                live._esm, live.text = SPENT_MODULE, ""
            live.close()

    def _update(self, bundle: dict[str, str], metadata: dict[str, Any] | None = None) -> None:
        self.updates += 1
        self._handle.update(bundle, raw=True, metadata=metadata)

    @staticmethod
    def _bundle(markdown: str, plain: str) -> dict[str, str]:
        return {"text/markdown": markdown, "text/plain": plain}

