"""What the page does with long answers: time to the whole answer and stalled frames, per surface.

A JupyterLab server runs a notebook whose kernel starts an echo server
(``rate`` pieces of 4 characters a second) and streams the same long Markdown
answer (paragraphs with inline math, bold and code spans, fenced code, display
math and tables) into each surface:

- ``chat lab``: a ``%%chat`` cell in JupyterLab;
- ``chat nb7``: a ``%%chat`` cell in Notebook 7 (when the ``notebook`` package is installed);
- ``widget relayed``: a ``ChatWidget`` whose kernel relays the stream;
- ``widget direct``: a ``ChatWidget(direct=True)`` whose page reads the server itself.

A ``requestAnimationFrame`` probe in the page records every gap between
painted frames. Per run: the seconds from running the cell until the whole
answer is on screen, that time over the stream's own duration (pieces / rate),
and the seconds spent in frame gaps over 100 ms (the page could not scroll or
take a key press meanwhile).

    python -m nbchat.bench.page --long [--sizes 4,40,150] [--rate 1000] [--json OUT]
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.echo import PIECE_CHARS
from . import chromium
from .procs import free_port

START_TIMEOUT = 120.0
#: the JupyterLab extension that renders a widget's saved conversation, as built in this nbchat
LABEXTENSION = Path(__file__).resolve().parents[1] / "notebook" / "labextension"
#: echo pieces a second: a long answer arriving fast (4,000 characters a second)
RATE = 1000.0
#: a frame gap over this many milliseconds counts as a stall
STALL_MS = 100.0
#: after the answer shows, stalls still count until frames have come regularly for this long...
SETTLE_MS = 1000.0
#: ...or this long has passed since it showed
SETTLE_MAX_MS = 30000.0
#: a max_tokens no answer here reaches (the default would cut a long answer short)
UNLIMITED = 1_000_000
SURFACES = ("chat lab", "chat nb7", "widget relayed", "widget direct")

_CODE = '''```python
def step_{i}(values: list[float], scale: float = {i}.5) -> float:
    """Sum of squares for step {i}, scaled."""
    total = 0.0
    for k, v in enumerate(values):
        total += (v * scale) ** 2 + k  # {i} terms so far
    return total if total > {i} else -1.0
```

'''
_TABLE = "| n | n² | name |\n|---:|---:|---|\n| {i} | {sq} | `step_{i}` |\n| {j} | {sq2} | **next** |\n\n"


def long_answer(chars: int) -> str:
    """A deterministic Markdown answer of at least ``chars`` characters, ending at a block boundary."""
    parts: list[str] = []
    size = 0
    i = 0
    while size < chars:
        i += 1
        block = (f"**Step {i}.** The term $x_{{{i}}}^2 + y_{{{i}}}$ grows like \\(O(n^{{{i % 5 + 1}}})\\), "
                 f"so we call `step_{i}()` with *care* and compare it with the previous value, "
                 f"which was {i * 7 % 13} units lower.\n\n")
        if i % 5 == 0:
            block += _CODE.format(i=i)
        if i % 7 == 0:
            block += f"$$\\sum_{{k=1}}^{{{i}}} k^2 = \\frac{{{i}({i}+1)(2 \\cdot {i}+1)}}{{6}}$$\n\n"
        if i % 11 == 0:
            block += f"\\[\\int_0^{{{i}}} t\\,dt = \\frac{{{i}^2}}{{2}}\\]\n\n"
        if i % 13 == 0:
            block += _TABLE.format(i=i, sq=i * i, j=i + 1, sq2=(i + 1) ** 2)
        parts.append(block)
        size += len(block)
    return "".join(parts).rstrip("\n")


def stream_seconds(answer: str, rate: float) -> float:
    """How long the echo server takes to send ``answer``: one piece every 1/rate seconds."""
    return math.ceil(len(answer) / PIECE_CHARS) / rate


# ------------------------------------------------------------------ the page side

#: installed in the page once: the frame probe and a watcher that resolves when a run has shown its whole answer
PROBE = """() => {
  if (window.nbchatProbe) return;
  const probe = window.nbchatProbe = {gaps: [], last: performance.now()};
  const tick = () => { const now = performance.now();
    if (now - probe.last > STALL_MS) probe.gaps.push([probe.last, now]);
    probe.last = now; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  const nb = () => jupyterapp.shell.currentWidget.content;
  probe.done = (i, kind) => {
    const node = nb().widgets[i].node;
    if (kind === 'chat') {  // the footer ends the answer (in its last Markdown output): read only that until it shows
      const outputs = node.querySelectorAll('.jp-RenderedMarkdown');
      const last = outputs.length ? outputs[outputs.length - 1].lastElementChild : null;
      const area = node.querySelector('.jp-OutputArea');
      return !!last && /\\[(DONE|TOKENS)\\]/.test(last.textContent) ? area.textContent.length : 0;
    }
    const bubble = node.querySelector('.nbchat-assistant');
    return bubble && !bubble.classList.contains('nbchat-streaming') ? bubble.textContent.length : 0;
  };
  // Once the answer shows, the page may still be busy with it (typesetting its math, laying it out): the
  // stalls are counted until frames have come regularly for SETTLE_MS (or SETTLE_MAX_MS have passed).
  probe.run = (i, show, kind, timeout) => new Promise((resolve) => {
    const t0 = performance.now();
    let shown = 0, chars = 0;
    const content = nb();
    content.activeCellIndex = i;
    jupyterapp.commands.execute('notebook:run-cell');
    const check = () => {
      const now = performance.now();
      if (!shown) {
        chars = probe.done(show, kind);
        if (chars) shown = now;
      }
      const quiet = Math.max(shown, ...probe.gaps.map(([, b]) => b));
      const settled = shown && now - probe.last < STALL_MS && (now - quiet >= SETTLE_MS || now - shown > SETTLE_MAX_MS);
      if (settled || (!shown && now - t0 > timeout)) {
        const stalls = probe.gaps.filter(([a, b]) => b > t0 && a < now)
          .map(([a, b]) => Math.min(b, now) - Math.max(a, t0)).filter((g) => g > STALL_MS);
        const live = probe.gaps.filter(([a, b]) => b > t0 && b <= (shown || now))
          .map(([a, b]) => b - Math.max(a, t0)).filter((g) => g > STALL_MS);
        resolve({seconds: ((shown || now) - t0) / 1000, shown_chars: chars, timed_out: !chars,
                 settled_s: (now - t0) / 1000, stalled_s: stalls.reduce((s, g) => s + g, 0) / 1000,
                 stalled_live_s: live.reduce((s, g) => s + g, 0) / 1000,
                 stalls: stalls.length, longest_ms: Math.max(0, ...stalls)});
      } else setTimeout(check, 50);
    };
    check();
  });
}"""
for _name, _value in (("SETTLE_MAX_MS", SETTLE_MAX_MS), ("SETTLE_MS", SETTLE_MS), ("STALL_MS", STALL_MS)):
    PROBE = PROBE.replace(_name, str(_value))

KERNEL_IDLE = ("() => { const nb = window.jupyterapp && jupyterapp.shell.currentWidget;"
               " const k = nb && nb.sessionContext && nb.sessionContext.session && nb.sessionContext.session.kernel;"
               " return !!k && k.status === 'idle'; }")
CELL_DONE = ("i => { const c = jupyterapp.shell.currentWidget.content.widgets[i];"
             " return c.model.executionCount !== null && !c.promptNode.textContent.includes('*'); }")


@dataclass
class Lab:
    """A running JupyterLab server: its URL, its token and its root directory."""

    url: str
    token: str
    root: Path


def checkout_labextension(root: Path) -> str:
    """A Jupyter data directory under ``root`` whose ``labextensions/nbchat`` is the JupyterLab extension built in
    the nbchat being run, ahead of the rest of ``JUPYTER_PATH``.

    The lab's kernels run this nbchat (a checkout on ``PYTHONPATH`` runs its own code), so its page loads this
    nbchat's extension too, not one an earlier ``pip install`` copied into the environment's share/jupyter
    (tests/test_labextension.py checks that the installed one is the same build).
    """
    data = root / "jupyter"
    link = data / "labextensions" / "nbchat"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(LABEXTENSION, target_is_directory=True)
    return os.pathsep.join([str(data), *filter(None, [os.environ.get("JUPYTER_PATH")])])


@contextmanager
def lab_server(root: Path | None = None, start_timeout: float = START_TIMEOUT) -> Iterator[Lab]:
    """JupyterLab (and Notebook 7, when installed) on a free loopback port, quiet, serving ``root``, with the
    running nbchat's JupyterLab extension."""
    root = root or Path(tempfile.mkdtemp(prefix="nbchat-lab-"))
    settings = root / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)  # no news or update check: nothing reaches out
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("NBCHAT_URL", "NBCHAT_TOKEN")}
    env.update(JUPYTERLAB_SETTINGS_DIR=str(root / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(root / "ws"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"), IPYTHONDIR=str(root / "ipython"),
               JUPYTER_PATH=checkout_labextension(root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--IdentityProvider.token={token}",
         f"--port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--JupyterNotebookApp.expose_app_in_browser=True",
         "--LabApp.extension_manager=readonly"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()
    log: list[str] = []

    def watch() -> None:  # JupyterLab logs its URL once it serves
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if f"127.0.0.1:{port}/lab" in line:
                ready.set()
        ready.set()  # the process ended: stop waiting, the check below reports it

    threading.Thread(target=watch, daemon=True).start()
    try:
        if not ready.wait(start_timeout) or proc.poll() is not None:
            raise RuntimeError("JupyterLab did not start:\n" + "".join(log[-30:]))
        yield Lab(f"http://127.0.0.1:{port}", token, root)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def write_notebook(path: Path, cells: list[str]) -> None:
    nbformat: Any = importlib.import_module("nbformat")  # untyped

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def open_notebook(tab: Any, lab: Lab, path: str, ui: str = "lab") -> None:
    """Open ``path`` in JupyterLab (``ui="lab"``, in a fresh workspace named after it: nothing another page
    left open is restored) or Notebook 7 (``"nb7"``) and wait for its kernel."""
    where = f"lab/workspaces/{Path(path).stem}/tree/{path}?reset&" if ui == "lab" else f"notebooks/{path}?"
    tab.goto(f"{lab.url}/{where}token={lab.token}")
    tab.wait_for_function(KERNEL_IDLE, timeout=START_TIMEOUT * 1000)
    tab.evaluate(PROBE)


def run_cell(tab: Any, index: int, timeout: float = 120.0) -> None:
    """Run a cell and wait until it has finished."""
    tab.evaluate("i => { const nb = jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i;"
                 " jupyterapp.commands.execute('notebook:run-cell'); }", index)
    tab.wait_for_function(CELL_DONE, arg=index, timeout=timeout * 1000)


def measure(tab: Any, index: int, show: int, kind: str, timeout: float) -> dict[str, Any]:
    """Run cell ``index`` and time until cell ``show`` holds the whole answer (``kind``: chat or widget)."""
    result: dict[str, Any] = tab.evaluate("([i, s, k, t]) => nbchatProbe.run(i, s, k, t)",
                                          [index, show, kind, timeout * 1000])
    result["longest_ms"] = round(result["longest_ms"])
    return result


# ------------------------------------------------------------------ the run


def cells(sizes: tuple[int, ...], rate: float, origin: str) -> tuple[list[str], dict[tuple[str, int], tuple[int, int]]]:
    """The notebook's cells, and per (surface, size) the cell that starts the run and the cell that shows it."""
    source = [
        "%load_ext nbchat",
        "from nbchat import ChatWidget\nfrom nbchat.bench.longpage import long_answer\n"
        "from nbchat.notebook.conversation import Conversation\nfrom nbchat.notebook.options import ChatOptions\n"
        "from nbchat.server.config import Settings\nfrom nbchat.server.serving import start_server_thread\n"
        f"UNLIMITED = {UNLIMITED}\n"
        f"echo = start_server_thread(Settings(port=0, backend='echo', rate={rate}, allow_origins=({origin!r},)))\n"
        f"ANSWERS = {{kb: long_answer(kb * 1000) for kb in {sizes!r}}}\n"
        "def widget(**kw):\n    return ChatWidget(Conversation(ChatOptions(max_tokens=UNLIMITED)), server=echo.url, "
        "token=echo.token, **kw)\n"
        f"relayed = {{kb: widget() for kb in {sizes!r}}}\n"
        f"direct = {{kb: widget(direct=True, route='direct') for kb in {sizes!r}}}",
    ]
    runs: dict[tuple[str, int], tuple[int, int]] = {}
    for kb in sizes:
        for name, var in (("widget direct", "direct"), ("widget relayed", "relayed")):
            source.append(f"{var}[{kb}]")
            source.append(f"{var}[{kb}].ask(ANSWERS[{kb}])")
            runs[(name, kb)] = (len(source) - 1, len(source) - 2)
        source.append(f"%%chat --new --max-tokens {{UNLIMITED}} --server {{echo.url}} --token {{echo.token}}\n"
                      f"{{ANSWERS[{kb}]}}")
        runs[("chat", kb)] = (len(source) - 1, len(source) - 1)
    return source, runs


def run(sizes: tuple[int, ...] = (4, 40, 150), rate: float = RATE,
        surfaces: tuple[str, ...] = SURFACES) -> dict[str, Any]:
    """Each surface in ``surfaces`` with each answer size; Notebook 7 only where the ``notebook`` package is."""
    from playwright.sync_api import sync_playwright

    nb7 = "chat nb7" in surfaces and importlib.util.find_spec("notebook") is not None
    results: dict[str, Any] = {"rate": rate, "piece_chars": PIECE_CHARS, "sizes": {}, "runs": {}}
    for kb in sizes:
        answer = long_answer(kb * 1000)
        results["sizes"][kb] = {"chars": len(answer), "stream_s": round(stream_seconds(answer, rate), 2)}
    with lab_server() as lab, sync_playwright() as pw:
        browser = chromium.launch(pw)
        try:
            source, runs = cells(sizes, rate, lab.url)
            write_notebook(lab.root / "long.ipynb", source)
            write_notebook(lab.root / "long-nb7.ipynb", source[:2] + [c for c in source if c.startswith("%%chat")])
            lab_surfaces = [s for s in ("widget direct", "widget relayed", "chat lab") if s in surfaces]
            uis = [("lab", "long.ipynb")] * bool(lab_surfaces) + [("nb7", "long-nb7.ipynb")] * nb7
            for ui, path in uis:
                tab = browser.new_page(viewport={"width": 1280, "height": 1000})
                open_notebook(tab, lab, path, ui)
                run_cell(tab, 0)
                run_cell(tab, 1, 60)
                for n, kb in enumerate(sizes):
                    limit = 4 * results["sizes"][kb]["stream_s"] + 20
                    for name in lab_surfaces if ui == "lab" else ["chat nb7"]:
                        index, show = runs[(name[:-4] if name.startswith("chat") else name, kb)]
                        if ui == "nb7":
                            index = show = 2 + n
                        elif show != index:
                            run_cell(tab, show)
                        figures = measure(tab, index, show, name.split()[0], limit)
                        figures["ratio"] = round(figures["seconds"] / results["sizes"][kb]["stream_s"], 2)
                        results["runs"].setdefault(name, {})[kb] = figures
                        print(f"{name} {kb} KB: {figures}", file=sys.stderr, flush=True)
                        if figures["timed_out"]:  # the page still chews on the backlog: start it afresh
                            tab.reload()
                            tab.wait_for_function(KERNEL_IDLE, timeout=START_TIMEOUT * 1000)
                            tab.evaluate(PROBE)
                        else:
                            tab.wait_for_function(CELL_DONE, arg=index, timeout=120_000)
                tab.close()
        finally:
            browser.close()
    return results


def markdown(results: dict[str, Any]) -> str:
    """The figures as one Markdown table: per surface and size."""
    lines = ["| surface | answer | stream s | whole answer shown s | x stream | stalled s (frames > 100 ms apart) "
             "| stalls | longest ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for surface in SURFACES:
        for kb, f in results["runs"].get(surface, {}).items():
            size = results["sizes"][kb]
            more = "> " if f["timed_out"] else ""  # stopped with the answer not yet shown: a lower bound
            shown = f"{more}{f['seconds']:.1f}" + (" (not shown)" if more else "")
            lines.append(f"| {surface} | {kb} KB | {size['stream_s']} | {shown} | {more}{f['ratio']} | "
                         f"{more}{f['stalled_s']:.1f} | {f['stalls']} | {f['longest_ms']} |")
    return "\n".join(lines)
