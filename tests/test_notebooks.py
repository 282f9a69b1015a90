"""The demo notebooks run top to bottom on a fresh kernel and show what their prose says.

Three layers share one set of checks (``check_quickstart``, ``check_clients``):

- the notebooks as committed, with their saved outputs (fast: nothing runs);
- the notebooks executed now with nbclient in this environment (slow: the
  embedded model answers every question);
- the notebooks executed by ``binder/check.sh`` in a fresh virtual environment
  built only from ``binder/`` (a minute and more: run on request, with
  ``NBCHAT_BINDER=1``, as ``.ci/run`` does in a step of its own).

The transport comparison notebook is tested with the benchmark.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MISSING
from tests.helpers import lab_module, read_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"
CLIENTS = NOTEBOOKS / "clients.ipynb"
TRANSPORTS = ("ws", "sse", "stream", "openai")
#: the footer under every %%chat answer: "ws · first token 0.31 s · 42 chunks · 35.1 tok/s · [DONE]"
FOOTER = re.compile(r"^(ws|sse|stream|openai) · first token \d+\.\d\d s · (\d+) chunks?( · [\d.]+ tok/s)? · "
                    r"(\[DONE\]|\[TOKENS\])$", re.MULTILINE)
#: ``NBCHAT_BINDER=1``: run the Binder environment check (it builds a virtual environment: a minute and more)
BINDER_ENV = "NBCHAT_BINDER"
CELL_TIMEOUT = 300  # seconds: the slowest cell streams a few dozen tokens on a shared 2-core machine

Notebook = Any  # nbformat.NotebookNode: untyped


# ---------------------------------------------------------------- reading outputs


def code_cell(nb: Notebook, start: str) -> Any:
    """The one code cell whose source starts with ``start``."""
    found = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start)]
    assert len(found) == 1, f"expected one cell starting with {start!r}, found {len(found)}"
    return found[0]


def text_of(cell: Any) -> str:
    """Everything a reader sees under the cell: printed text, then the plain text of displays."""
    parts: list[str] = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            raise AssertionError(f"cell failed: {output.ename}: {output.evalue}\n{cell.source}")
    return "".join(parts)


def answer_of(cell: Any) -> tuple[str, re.Match[str]]:
    """A %%chat cell's streamed answer and its footer, from the Markdown it ended with."""
    shown = [o for o in cell.outputs if o.output_type == "display_data" and "text/markdown" in o.data]
    assert shown, f"no streamed answer under {cell.source!r}"
    plain = shown[-1].data["text/plain"]
    footer = FOOTER.search(plain)
    assert footer, f"no footer line under {cell.source!r}: {plain!r}"
    return plain[: footer.start()].strip(), footer


def assert_ran_in_order(nb: Notebook) -> None:
    """Every code cell ran, once, top to bottom on one kernel, without an error."""
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"cells did not run top to bottom on a fresh kernel: {counts}"
    for cell in nb.cells:
        if cell.cell_type == "code":
            text_of(cell)  # raises on an error output


# ---------------------------------------------------------------- what the prose claims


def check_quickstart(nb: Notebook) -> None:
    assert_ran_in_order(nb)
    first, footer = answer_of(code_cell(nb, "%%chat --max-tokens 48 --temperature 0\nName one planet"))
    assert first and footer.group(1) == "ws" and int(footer.group(2)) <= 48
    follow_up, _ = answer_of(code_cell(nb, "%%chat --max-tokens 48 --temperature 0\nHow far"))
    assert follow_up

    shown = text_of(code_cell(nb, "%chat --max-tokens 48"))
    assert re.search(r"max_tokens\s+48", shown) and re.search(r"history\s+2 exchanges", shown)
    assert "kernel server running" in shown
    history = text_of(nb_history(nb, 0))
    assert f"user: Name one planet of the solar system.\nassistant: {first}" in history
    assert f"user: How far is it from the Sun?\nassistant: {follow_up}" in history
    assert "conversation cleared" in text_of(code_cell(nb, "%chat reset"))

    interpolated, _ = answer_of(code_cell(nb, "%%chat\nIn one sentence: what is the difference"))
    assert interpolated
    assert "user: In one sentence: what is the difference between WebSocket and Server-Sent Events?" in text_of(
        nb_history(nb, 1)), "the {protocols[0]} placeholders were not filled in"

    on_sse, sse_footer = answer_of(code_cell(nb, "%%chat --new -t sse"))
    on_openai, openai_footer = answer_of(code_cell(nb, "%%chat --new -t openai"))
    assert (sse_footer.group(1), openai_footer.group(1)) == ("sse", "openai")
    assert on_sse == on_openai, "the prose says the answer is the same on every transport"

    haiku, _ = answer_of(code_cell(nb, "%%chat --new --out haiku"))
    assert text_of(code_cell(nb, "last = %chat last")) == f"str {len(haiku)} characters\nTrue\n"

    check_replay_provenance_code_export(nb)

    panel = code_cell(nb, "from nbchat import ChatWidget")
    views = [o.data["application/vnd.jupyter.widget-view+json"] for o in panel.outputs
             if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(views) == 1, "ChatWidget() shows no widget"
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert views[0]["model_id"] in state, "the saved notebook lacks the widget's state"
    status, answer, stats = text_of(code_cell(nb, "panel.conversation.options")).splitlines()
    assert status in ("[DONE]", "[TOKENS]") and answer
    assert FOOTER.fullmatch(stats) and stats.endswith(status)


def check_replay_provenance_code_export(nb: Notebook) -> None:
    from nbchat.backends.replay import load_recording

    recording = load_recording(NOTEBOOKS / "recordings" / "add-numbers.jsonl")
    replayed_cell = code_cell(nb, "%%chat --new --server {replay.url}")
    replayed, footer = answer_of(replayed_cell)
    assert replayed == recording.text.strip() and int(footer.group(2)) == len(recording.chunks)
    record = next(o.metadata["nbchat"] for o in replayed_cell.outputs if "nbchat" in o.get("metadata", {}))
    assert (record["backend"], record["model"]) == ("replay", "SmolLM2-135M-Instruct")
    assert record["chunks"] == len(recording.chunks) and record["server"].startswith("http://127.0.0.1:")
    assert "'backend': 'replay'" in text_of(code_cell(nb, "_chat_provenance"))
    assert "SmolLM2-135M-Instruct (replay) · ws to http://127.0.0.1:" in text_of(nb_history(nb, 2))
    exported = text_of(code_cell(nb, "%chat export {out}/chat.md"))
    assert "1 exchange written to" in exported and "## Assistant" in exported
    assert exported.endswith("['user', 'assistant']\n")


def nb_history(nb: Notebook, index: int) -> Any:
    """The ``index``-th ``%chat history`` cell."""
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "%chat history"]
    return cells[index]


def check_clients(nb: Notebook) -> None:
    assert_ran_in_order(nb)
    started = text_of(code_cell(nb, "from nbchat.server.config import Settings"))
    assert re.fullmatch(r"model: http://127\.0\.0\.1:\d+\necho:  http://127\.0\.0\.1:\d+\n", started)

    shown = text_of(code_cell(nb, "import time"))
    streamed = shown.splitlines()
    chunks = [line for line in streamed if " seq " in line]
    assert len(chunks) >= 2 and streamed[-1].endswith(("[DONE]", "[TOKENS]")), shown
    assert [int(re.findall(r"seq +(\d+)", line)[0]) for line in chunks] == list(range(1, len(chunks) + 1))

    every = text_of(code_cell(nb, "answers = {}"))
    for transport in TRANSPORTS:
        assert re.search(rf"^{transport} +first chunk [\d.]+ s  \d+ chunks in [\d.]+ s  \[(DONE|TOKENS)\]$",
                         every, re.MULTILINE), f"no summary line for {transport}"
    assert every.endswith("same text on every transport: True\n")

    interrupted = text_of(code_cell(nb, "story = ")).splitlines()
    assert [line.split()[0] for line in interrupted] == list(TRANSPORTS)
    for line in interrupted:
        received = int(re.findall(r"after (\d+) of at most 200", line)[0])
        assert "[INTERRUPTED]" in line and 6 <= received < 200, line

    resumed = text_of(code_cell(nb, "K = 5")).splitlines()
    assert [line.split()[0] for line in resumed] == list(TRANSPORTS)
    for line in resumed:
        assert "resumed at seq 6," in line and "without gaps: True" in line and line.endswith("complete: True"), line

    echoed = text_of(code_cell(nb, "message = ")).splitlines()
    assert [line.split()[0] for line in echoed] == list(TRANSPORTS)
    assert all(line.endswith("resumed text equals the message: True") for line in echoed), echoed

    assert text_of(code_cell(nb, "from nbchat.clients import aconnect")).endswith(
        "same as the sync client's answer: True\n")
    together = text_of(code_cell(nb, "import asyncio")).splitlines()
    assert [line.split()[0] for line in together[:-1]] == list(TRANSPORTS) and together[-1].startswith("all four")

    official = text_of(code_cell(nb, "import openai"))
    assert "model: SmolLM2-135M-Instruct" in official
    assert re.search(r"^finish_reason: (stop|length)$", official, re.MULTILINE)
    assert official.endswith("same as nbchat's openai client: True\n")


CHECKS = {QUICKSTART.name: check_quickstart, CLIENTS.name: check_clients}


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("path", [QUICKSTART, CLIENTS], ids=lambda p: p.name)
def test_committed_notebooks_show_their_results(path: Path) -> None:
    """The repository shows each notebook as a fresh top-to-bottom run left it."""
    CHECKS[path.name](read_notebook(path))


async def execute(path: Path, save_to: Path) -> Notebook:
    """Run the notebook on a fresh kernel; the executed copy is kept in ``save_to`` for a failure's post-mortem."""
    nbformat, nbclient = lab_module("nbformat"), lab_module("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, startup_timeout=120,
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        await client.async_execute()
    finally:
        nbformat.write(nb, save_to / path.name)
    return nb


@pytest.fixture(scope="module")
def fresh_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Notebook | BaseException]:
    """Every notebook run at once, each on a fresh kernel that starts its own server and model (as two users
    would), with no nbchat server from the environment; a notebook's run, or what stopped it."""
    save_to = tmp_path_factory.mktemp("notebooks")

    async def run_all() -> list[Notebook | BaseException]:
        return await asyncio.gather(*(execute(NOTEBOOKS / name, save_to) for name in CHECKS), return_exceptions=True)

    with pytest.MonkeyPatch.context() as env:
        env.delenv("NBCHAT_URL", raising=False)
        env.delenv("NBCHAT_TOKEN", raising=False)
        return dict(zip(CHECKS, asyncio.run(run_all()), strict=True))


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("path", [QUICKSTART, CLIENTS], ids=lambda p: p.name)
def test_notebook_runs_on_a_fresh_kernel(path: Path, fresh_runs: dict[str, Notebook | BaseException]) -> None:
    ran = fresh_runs[path.name]
    if isinstance(ran, BaseException):
        raise ran
    CHECKS[path.name](ran)


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(BINDER_ENV) != "1", reason=f"the Binder environment check is a step of its own: "
                    f"{BINDER_ENV}=1 python -m pytest tests/test_notebooks.py -k binder (.ci/run runs it)")
def test_binder_environment_runs_every_notebook(tmp_path: Path) -> None:
    """binder/ alone makes an environment in which every notebook runs (see docs/binder.md)."""
    if shutil.which("dpkg-query") is None:
        pytest.skip(f"{MISSING}dpkg-query (binder/check.sh checks binder/apt.txt with it: a Debian system)")
    env = {k: v for k, v in os.environ.items() if k not in ("NBCHAT_URL", "NBCHAT_TOKEN")}
    done = subprocess.run(["bash", str(ROOT / "binder" / "check.sh"), str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"binder/check.sh failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    ran = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert ran == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name, check in CHECKS.items():
        check(read_notebook(tmp_path / name))
