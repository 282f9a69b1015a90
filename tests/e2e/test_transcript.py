"""nbchat's JupyterLab extension in a real JupyterLab and Notebook 7: a widget's saved conversation, opened
without a kernel, is drawn from its transcript (application/vnd.nbchat.transcript+json) by the widget's own
renderer, not typeset as Markdown; model text stays inert; a long one is drawn a slice per frame.

The notebook is written here with the output a ``ChatWidget`` keeps (its saved copy, as the widget builds it);
``test_jupyterlab.py`` saves one from a live widget and reopens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbchat.bench.longpage import Lab, long_answer
from tests.e2e.conftest import START_TIMEOUT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS = 'Hi <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> **bold** done'
ANSWER = ("Euler's identity $e^{i\\pi} + 1 = 0$.\n\n```python\ndef total(n: int) -> int:\n    return n\n```\n\n"
          + XSS)
PROVENANCE = {"model": "echo", "backend": "echo", "server": "http://127.0.0.1:1", "transport": "ws", "chunks": 3,
              "status": "[DONE]"}

# The transcript outputs of the open notebook's first cell: how many, drawn or not, what they hold.
TRANSCRIPT = """() => {
  const cell = (window.jupyterapp ? jupyterapp.shell.currentWidget.content : null)?.widgets[0].node
    || document.querySelector('.jp-Cell');
  const outputs = [...cell.querySelectorAll('.jp-OutputArea-output')];
  const ours = outputs.filter((o) => o.classList.contains('nbchat-transcript-output'));
  const t = ours.length ? ours[0].querySelector('.nbchat-transcript') : null;
  return {outputs: outputs.length, ours: ours.length, markdown: cell.querySelectorAll('.jp-RenderedMarkdown').length,
          drawn: !!t && t.dataset.drawn === 'true', text: t ? t.textContent : '',
          katex: t ? t.querySelectorAll('.katex').length : 0,
          keywords: t ? [...t.querySelectorAll('.tok-keyword')].map((e) => e.textContent) : [],
          strong: t ? [...t.querySelectorAll('strong')].map((e) => e.textContent) : [],
          img: cell.querySelectorAll('img').length, script: cell.querySelectorAll('script').length,
          xss: window.__xss ?? null};
}"""


def saved_widget_notebook(path: Path, answer: str) -> None:
    """A notebook whose one cell holds what a ChatWidget displays, with a conversation of one exchange: its view
    (with no widget state saved, as JupyterLab saves by default) and its copy of the conversation."""
    import nbformat
    from IPython.display import display
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    from nbchat import ChatWidget
    from nbchat.notebook.conversation import Conversation

    start_ipython()  # a shell to display into (once per process)
    conversation = Conversation()
    conversation.record("Show me " + XSS, answer, "[DONE]", PROVENANCE)
    widget = ChatWidget(conversation)
    with capture_output() as captured:
        display(widget)
    widget.close()
    cell = nbformat.v4.new_code_cell("w")
    cell.outputs = [nbformat.v4.new_output("display_data", data=o.data) for o in captured.outputs]
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)


def open_without_kernel(tab: Any, lab: Lab, path: str, ui: str) -> None:
    if ui == "lab":
        tab.goto(f"{lab.url}/lab/workspaces/{Path(path).stem}?reset&token={lab.token}")
        tab.wait_for_function("() => !!window.jupyterapp", timeout=START_TIMEOUT * 1000)
        tab.evaluate("async (path) => { await jupyterapp.restored;"
                     " await jupyterapp.commands.execute('docmanager:open', {path, factory: 'Notebook',"
                     " kernelPreference: {shouldStart: false, canStart: false}}); }", path)
    else:  # Notebook 7 asks which kernel to start, over the notebook, which it shows meanwhile
        tab.goto(f"{lab.url}/notebooks/{path}?token={lab.token}")
    tab.wait_for_function("() => !!document.querySelector('.jp-Cell .nbchat-transcript')",
                          timeout=START_TIMEOUT * 1000)


def widget_manager_race(error: str) -> bool:
    """An error of ipywidgets' JupyterLab manager reading the kernel of a session that has none."""
    return "reading 'kernel'" in error and "/@jupyter-widgets/jupyterlab-manager/" in error


@pytest.mark.parametrize("ui", ["lab", "nb7"])
def test_a_saved_conversation_is_drawn_by_the_extension_and_stays_inert(lab: Lab, browser: Any, ui: str) -> None:
    if ui == "nb7":
        pytest.importorskip("notebook", reason="needs Notebook 7 (pip install -e '.[lab]')")
    path = f"transcript-{ui}.ipynb"
    saved_widget_notebook(lab.root / path, ANSWER)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"{exc}\n{exc.stack}"))
    try:
        open_without_kernel(tab, lab, path, ui)
        tab.wait_for_function(f"() => ({TRANSCRIPT})().drawn", timeout=30_000)
        seen = tab.evaluate(TRANSCRIPT)
        assert seen["ours"] == 1 and seen["markdown"] == 0, seen  # the transcript, not the Markdown copy
        assert "ChatWidget conversation (1 exchange)" in seen["text"], seen
        assert "def total(n: int) -> int:" in seen["text"] and "echo (echo) · ws to" in seen["text"], seen
        assert seen["katex"] == 1 and "def" in seen["keywords"] and seen["strong"] == ["bold"], seen
        assert seen["text"].count("<script>window.__xss=2</script>") == 2, seen  # the question and the answer
        assert seen["img"] == 0 and seen["script"] == 0 and seen["xss"] is None, seen
        # Notebook 7 (7.6) raises one error of its own while it opens any notebook, with or without nbchat;
        # ipywidgets' manager now and then reads the kernel of a notebook opened without one (its own race)
        assert not [e for e in errors if (ui == "lab" and not widget_manager_race(e)) or "/extensions/nbchat/" in e], \
            errors
    finally:
        context.close()


def test_a_long_saved_conversation_is_drawn_a_slice_per_frame(lab: Lab, browser: Any) -> None:
    answer = long_answer(150_000)
    saved_widget_notebook(lab.root / "transcript-long.ipynb", answer)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    try:
        open_without_kernel(tab, lab, "transcript-long.ipynb", "lab")
        lengths: list[int] = []
        for _ in range(600):  # the length drawn at each frame until it is all there
            seen = tab.evaluate("() => new Promise((done) => requestAnimationFrame(() => {"
                                " const t = document.querySelector('.jp-Cell .nbchat-transcript');"
                                " done([t.textContent.length, t.dataset.drawn === 'true']); }))")
            lengths.append(seen[0])
            if seen[1]:
                break
        assert seen[1], lengths[-5:]
        assert len(set(lengths)) >= 5, lengths  # drawn over many frames, not in one long one
        text = tab.evaluate("() => document.querySelector('.jp-Cell .nbchat-transcript').textContent")
        assert "def step_5(values: list[float]" in text and "echo (echo) · ws to http://127.0.0.1:1" in text
        last_step = answer.rsplit("**Step ", 1)[1].split(".**", 1)[0]
        assert f"Step {last_step}." in text, text[-500:]
    finally:
        context.close()
