"""Provenance: every %%chat output and every ChatWidget answer says where it came
from, and the saved notebook never holds the server's token.

The notebook runs in a real kernel (nbclient) against a real echo server on a
loopback port; the test then saves it and reads the ``.ipynb`` file itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nbchat.notebook.options import ChatOptions
from nbchat.notebook.provenance import FIELDS, describe, provenance, public_url
from nbchat.notebook.render import TurnStats
from tests.helpers import TOKEN, ServerFactory, lab_module

CELLS = [
    "%load_ext nbchat",
    '%%chat -t sse --temperature 0.2 --max-tokens 100 --system "Be brief."\nWhere does this answer come from?',
    "%%chat\nAnd this one, over the WebSocket?",
    "%chat history",
    "from nbchat import ChatWidget\nw = ChatWidget(transport='stream')\ndisplay(w)\nawait w.ask('A widget question')\n"
    "w.messages[-1]['provenance']",
    "%%chat --raw\n```python\nprint(6 * 7)\n```",
    "%chat code",
]


@pytest.mark.slow
def test_saved_notebook_keeps_provenance_and_no_token(make_server: ServerFactory, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The token reaches the kernel only through its environment, as a deployment would pass it.
    secret = TOKEN + "-secret"
    server = make_server(token=secret, rate=200.0)
    monkeypatch.setenv("NBCHAT_URL", server.url)
    monkeypatch.setenv("NBCHAT_TOKEN", secret)
    nbformat, nbclient = lab_module("nbformat"), lab_module("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    replies: list[dict[str, Any]] = []
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}},
                                     on_cell_executed=lambda **kw: replies.append(kw["execute_reply"]))
    client.execute()
    # %chat code asks the front end (JupyterLab, Notebook) to fill the next cell: the kernel's reply says so
    payload = replies[-1]["content"]["payload"]
    assert payload == [{"source": "set_next_input", "text": "# python\nprint(6 * 7)\n", "replace": False}]
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    text = path.read_text(encoding="utf-8")
    assert secret not in text and TOKEN not in text

    saved = json.loads(text)
    records = [meta(cell) for cell in saved["cells"][1:3]]
    # %%chat options hold for their cell only; unset, no temperature is sent and the echo backend has no default
    sampling = [(0.2, 100, "Be brief."), (None, 512, None)]
    for record, transport, asked in zip(records, ("sse", "ws"), sampling, strict=True):
        assert sorted(record) == sorted(FIELDS)
        assert record["server"] == server.url and record["transport"] == transport
        assert (record["backend"], record["model"]) == ("echo", "echo")
        assert (record["temperature"], record["max_tokens"], record["system"]) == asked
        assert record["status"] == "[DONE]" and record["chunks"] > 2 and record["first_token_s"] > 0
        assert record["tokens_per_s"] > 0 and record["timestamp"].endswith("Z") and record["uid"]
    assert records[0]["turn_id"]  # SSE names the turn; the WebSocket contract does not
    history = "".join(joined(o.get("text", "")) for o in saved["cells"][3]["outputs"])
    assert "echo (echo) · sse to " + server.url in history and records[0]["turn_id"] in history

    widget = joined(saved["cells"][4]["outputs"][-1]["data"]["text/plain"])
    assert "'transport': 'stream'" in widget and "'backend': 'echo'" in widget and "'status': '[DONE]'" in widget
    assert "'turn_id': None" not in widget  # the NDJSON stream names its turn


def joined(text: str | list[str]) -> str:
    """A multi-line string as the .ipynb format stores it (a list of lines) or as one string."""
    return text if isinstance(text, str) else "".join(text)


def meta(cell: dict[str, Any]) -> dict[str, Any]:
    shown = [o for o in cell["outputs"] if o["output_type"] == "display_data" and "nbchat" in o.get("metadata", {})]
    assert len(shown) == 1, cell["outputs"]
    record: dict[str, Any] = shown[0]["metadata"]["nbchat"]
    return record


def test_public_url_drops_credentials() -> None:
    assert public_url("http://user:pw@127.0.0.1:8765/?token=abc#x") == "http://127.0.0.1:8765"
    assert public_url("https://[::1]:9000/chat/?token=abc") == "https://[::1]:9000/chat"
    assert public_url("http://example.org") == "http://example.org"


def test_record_never_reads_the_token() -> None:
    options = ChatOptions(token="s3cret", server="http://h:1/?token=s3cret")
    stats = TurnStats("ws")
    stats.on_chunk("a")
    stats.on_end(None, "[DONE]")
    record = provenance(options, stats, server=options.server or "", info={}, turn_id=None, uid="u",
                        timestamp="2024-01-01T00:00:00.000Z")
    assert "s3cret" not in json.dumps(record) and "s3cret" not in describe(record)
    assert record["server"] == "http://h:1" and record["chunks"] == 1
