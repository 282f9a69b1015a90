"""A ChatWidget notebook saved and opened without a kernel still shows the conversation:
the widget keeps a copy of it in the saved outputs, updated at each turn end, as nbchat's
transcript (the conversation as data, which nbchat's JupyterLab extension draws) beside the
same conversation as Markdown (which nbconvert, GitHub and a Jupyter without nbchat show).

The notebook runs in a real kernel (nbclient) against a real echo server; it
is saved as JupyterLab saves by default (no widget state) and converted with
``jupyter nbconvert`` to HTML and to Markdown.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nbchat.notebook.conversation import Conversation
from nbchat.notebook.export import MIRROR_MARKER, TRANSCRIPT_MIME, mirror_markdown, mirror_transcript
from tests.helpers import TOKEN, ServerFactory, lab_module

QUESTIONS = ["First: is **this** kept?", "Second, with <img src=x onerror=alert(1)> and `code`"]
CELLS = [
    "from nbchat import ChatWidget\nw = ChatWidget(transport='sse')\nw",
    f"await w.ask({QUESTIONS[0]!r})",
    f"await w.ask({QUESTIONS[1]!r})",
]


def mirrors(nb: Any) -> list[dict[str, Any]]:
    return [o for c in nb.cells for o in c.get("outputs", [])
            if "text/markdown" in o.get("data", {}) and MIRROR_MARKER in o["data"]["text/markdown"]]


@pytest.mark.slow
def test_saved_widget_notebook_shows_the_conversation_without_a_kernel(
        make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_server(rate=200.0)
    monkeypatch.setenv("NBCHAT_URL", server.url)
    monkeypatch.setenv("NBCHAT_TOKEN", TOKEN)
    nbformat, nbclient = lab_module("nbformat"), lab_module("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    nb.metadata.pop("widgets", None)  # JupyterLab saves no widget state unless asked to
    path = tmp_path / "widget.ipynb"
    nbformat.write(nb, path)

    saved = nbformat.read(path, as_version=4)
    [mirror] = mirrors(saved)  # one copy, under the widget's cell, updated in place by the later cells
    assert mirror in saved.cells[0].outputs
    markdown = mirror["data"]["text/markdown"]
    assert "ChatWidget conversation (2 exchanges)" in markdown
    assert "First: is **this** kept?" in markdown and "&lt;img src=x" in markdown
    assert "echo (echo) · sse to " + server.url in markdown and TOKEN not in path.read_text(encoding="utf-8")
    assert list(mirror["data"]) == [TRANSCRIPT_MIME, "text/markdown", "text/plain"]  # the transcript first
    transcript = mirror["data"][TRANSCRIPT_MIME]
    assert [m["content"] for m in transcript["messages"] if m["role"] == "user"] == QUESTIONS
    assert transcript["messages"][-1]["status"] == "[DONE]" and server.url in transcript["messages"][-1]["caption"]

    jupyter = shutil.which("jupyter")
    assert jupyter is not None, "jupyter is not on PATH: pip install -e '.[lab]'"
    subprocess.run([jupyter, "nbconvert", "--to", "html", str(path)], check=True, capture_output=True, timeout=120)
    html = (tmp_path / "widget.html").read_text(encoding="utf-8")
    assert "ChatWidget conversation (2 exchanges)" in html
    assert html.count("First: is <strong>this</strong> kept?") == 2  # the question and its echo, as Markdown
    assert "<img src=x" not in html and "<img src=\"x\"" not in html  # the model's HTML stays text
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 2
    assert '"role"' not in html  # nbconvert knows no transcript: it shows the Markdown, not the data

    subprocess.run([jupyter, "nbconvert", "--to", "markdown", str(path)], check=True, capture_output=True,
                   timeout=120)
    exported = (tmp_path / "widget.md").read_text(encoding="utf-8")
    assert "# ChatWidget conversation (2 exchanges)" in exported and "## Assistant" in exported
    assert "## User\n\nFirst: is **this** kept?\n\n## Assistant" in exported  # the conversation, as Markdown
    assert "&lt;img src=x onerror=alert(1)>" in exported
    assert '"role"' not in exported and TRANSCRIPT_MIME not in exported


def test_mirror_is_markdown_of_the_conversation_with_its_marker() -> None:
    conversation = Conversation()
    assert mirror_markdown(conversation).startswith(MIRROR_MARKER)
    conversation.record("hi <b>", "hello **there**", "[DONE]", {"model": "m", "backend": "b", "server": "s",
                                                                 "transport": "ws", "chunks": 2, "status": "[DONE]"})
    text = mirror_markdown(conversation)
    assert "(1 exchange)" in text and "hi &lt;b>" in text and "hello **there**" in text and "m (b) · ws to s" in text
    assert json.dumps(text)  # plain JSON-able text, as a saved output must be


def test_transcript_is_the_conversation_as_data() -> None:
    conversation = Conversation()
    provenance = {"model": "m", "backend": "b", "server": "s", "transport": "ws", "chunks": 2, "status": "[DONE]"}
    conversation.record("hi <b>", "hello **there**", "[DONE]", provenance)
    conversation.record("again", "cut sh", "[INTERRUPTED]")
    transcript = mirror_transcript(conversation)
    assert transcript["title"] == "ChatWidget conversation (2 exchanges)" and transcript["system"] == ""
    user, answer, _, cut = transcript["messages"]
    assert user == {"role": "user", "content": "hi <b>"}  # as typed: the renderer makes it inert, not the data
    assert answer["content"] == "hello **there**" and answer["provenance"] == provenance
    assert answer["caption"].startswith("m (b) · ws to s · ")
    assert cut == {"role": "assistant", "content": "cut sh", "status": "[INTERRUPTED]", "provenance": None,
                   "caption": ""}
    assert json.loads(json.dumps(transcript)) == transcript  # JSON, as a saved +json output must be


@pytest.mark.slow
def test_a_chat_cell_leaves_no_live_view_state_in_the_saved_notebook(
        make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live view of a ``%%chat`` answer is a widget; nbclient keeps the last state of every widget it
    saw (closed or not) in the notebook's metadata: the bundle and CSS, ~1 MB per cell, before."""
    server = make_server(rate=500.0)
    monkeypatch.setenv("NBCHAT_URL", server.url)
    monkeypatch.setenv("NBCHAT_TOKEN", TOKEN)
    nbformat, nbclient = lab_module("nbformat"), lab_module("nbclient")
    answer = "".join(f"Step {i}: $x_{i}$ and `code`.\n\n" for i in range(100))
    cells = ["%load_ext nbchat", f"%%chat --max-tokens 100000\n{answer}", "%%chat --new\nshort"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    path = tmp_path / "chat.ipynb"
    nbformat.write(nb, path)

    saved = nbformat.read(path, as_version=4)
    states = saved.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    views = [s for s in states.values() if s["model_name"] == "AnyModel"]
    assert len(views) == 2, states  # nbclient saw the two live views (and their layouts)...
    widgets = json.dumps(saved.metadata.get("widgets", {}))
    assert len(widgets) < 4000, len(widgets)  # ...but keeps only their emptied states
    assert path.stat().st_size < len(answer) * 4 + 20_000, path.stat().st_size
    for cell in saved.cells[1:]:  # each answer is Markdown, its provenance on the last output
        assert cell.outputs and all(set(o.data) == {"text/markdown", "text/plain"} for o in cell.outputs)
        assert cell.outputs[-1].metadata["nbchat"]["status"] == "[DONE]"
    assert "".join(o.data["text/markdown"] for o in saved.cells[1].outputs).startswith(answer.strip())
