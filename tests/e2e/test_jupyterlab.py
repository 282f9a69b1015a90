"""The notebook layer in a real JupyterLab, driven in headless Chromium.

A JupyterLab server runs on loopback in a temporary directory with a notebook
written here; Playwright opens it in the system's Chromium (never a
downloaded browser) and runs cells through JupyterLab's own commands. The
answers come from the embedded model through the server the kernel starts for
itself, and from an echo server for the hostile-HTML checks. Screenshots go
to ``artifacts/e2e/``. The widget's rendering alone, in a plain page, is tested in
``test_render_page.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbchat.bench.longpage import CELL_DONE, KERNEL_IDLE, Lab, write_notebook
from nbchat.notebook.export import TRANSCRIPT_MIME
from tests.e2e.conftest import START_TIMEOUT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "e2e"
XSS = 'Hi <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> **bold** done'

CELLS = [
    "%load_ext nbchat",
    "%%chat --max-tokens 160\nIn three sentences, why is the sky blue?",
    "%%chat --new --max-tokens 400\nWrite a long story about a lighthouse keeper and a storm.",
    # room for a long answer: Stop must land while the model still generates, however slow the page is
    "from nbchat import ChatWidget\nfrom nbchat.notebook.conversation import Conversation\n"
    "from nbchat.notebook.options import ChatOptions\n"
    "w = ChatWidget(Conversation(ChatOptions(max_tokens=3000)))\nw",
    "from nbchat.server.config import Settings\nfrom nbchat.server.serving import start_server_thread\n"
    "echo = start_server_thread(Settings(port=0, backend='echo', rate=50))",
    "%%chat --server {echo.url} --token {echo.token}\n" + XSS,
    "from nbchat import ChatWidget\nxss_widget = ChatWidget(server=echo.url, token=echo.token)\nxss_widget",
    # browser-direct widgets, and the relayed one for contrast, on one slow echo server the kernel owns
    "import time\nfrom nbchat import ChatWidget\nfrom nbchat.notebook.kernel_server import KernelServer\n"
    "ks = KernelServer(backend='echo', rate=20)\n"
    "LONG = 'Streaming while the kernel sleeps, piece by piece. ' * 30\n"
    "direct = {t: ChatWidget(direct=True, route='direct', transport=t, kernel_server=ks) for t in TRANSPORTS}\n"
    "proxied = {t: ChatWidget(direct=True, route='proxy', transport=t, kernel_server=ks) for t in TRANSPORTS}\n"
    "relayed = ChatWidget(kernel_server=ks, transport='ws')",
    "display(*direct.values())",
    "for w in direct.values():\n    w.ask(LONG)\ntime.sleep(15)",
    "display(*proxied.values())",
    "for w in proxied.values():\n    w.ask(LONG)\ntime.sleep(15)",
    "relayed",
    "relayed.ask(LONG)\ntime.sleep(15)",
    "print(*[(w.transport, w.route, w.conversation.exchanges[-1].status, len(w.conversation.exchanges[-1].answer))"
    " for w in [*direct.values(), *proxied.values()]], sep='\\n')",
    # a widget whose echo server streams back Markdown with code and math, then is saved and reopened
    "from nbchat.server.config import Settings\nfrom nbchat.server.serving import start_server_thread\n"
    "from nbchat import ChatWidget\nrender_echo = start_server_thread(Settings(port=0, backend='echo', rate=60))\n"
    "render_widget = ChatWidget(server=render_echo.url, token=render_echo.token)\nrender_widget",
]
# True once a cell's output shows answer text rather than the magic's placeholder.
ANSWER_STARTED = ("i => { const t = jupyterapp.shell.currentWidget.content.widgets[i]"
                  ".node.querySelector('.jp-OutputArea-output');"
                  " return !!t && !!t.innerText.trim()"
                  " && !/waiting for the first token|starting the nbchat server/.test(t.innerText); }")
(LOAD, SKY, STORY, WIDGET, ECHO, XSS_CELL, XSS_WIDGET, DIRECT_SETUP, DIRECT_SHOW, DIRECT_ASK, PROXY_SHOW, PROXY_ASK,
 RELAYED_SHOW, RELAYED_ASK, DIRECT_CHECK, RENDER_WIDGET) = range(len(CELLS))
TRANSPORTS = ("ws", "sse", "fetch")
CELLS[DIRECT_SETUP] = f"TRANSPORTS = {TRANSPORTS!r}\n" + CELLS[DIRECT_SETUP]


@pytest.fixture(scope="module")
def page(lab: Lab, browser: Any) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    write_notebook(lab.root / "chat.ipynb", CELLS)
    tab = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"{lab.url}/lab/workspaces/chat/tree/chat.ipynb?reset&token={lab.token}")
    tab.wait_for_function(KERNEL_IDLE, timeout=START_TIMEOUT * 1000)
    tab.nbchat_errors = errors
    run_cell(tab, LOAD)  # every test below may use %%chat
    wait_cell(tab, LOAD)
    yield tab
    tab.screenshot(path=str(ARTIFACTS / "final.png"), full_page=True)
    tab.close()


def run_cell(page: Any, index: int) -> float:
    """Start running a cell (without waiting for it); returns the start time."""
    page.evaluate("i => { const nb = jupyterapp.shell.currentWidget; nb.content.activeCellIndex = i;"
                  " jupyterapp.commands.execute('notebook:run-cell'); }", index)
    return time.monotonic()


def cell_done(page: Any, index: int) -> bool:
    return bool(page.evaluate(CELL_DONE, index))


def wait_cell(page: Any, index: int, timeout: float = 120.0) -> None:
    page.wait_for_function(CELL_DONE, arg=index, timeout=timeout * 1000)


def wake(page: Any, index: int) -> None:
    """End the sleeping cell ``index`` once what it was for is seen: interrupt the kernel, wait for the cell."""
    page.evaluate("() => jupyterapp.commands.execute('notebook:interrupt-kernel')")
    wait_cell(page, index, 30)


def output(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output").last


def sample_growth(read: Any, until: Any, timeout: float = 120.0) -> list[int]:
    """Lengths of the answer seen while it streams, one sample every ~100 ms."""
    lengths: list[int] = []
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        lengths.append(len(read()))
        time.sleep(0.1)  # sampling the page at a steady pace is the point here
    return lengths


def test_chat_cell_streams_live_and_ends_as_markdown(page: Any) -> None:
    began = run_cell(page, SKY)
    out = output(page, SKY)
    page.wait_for_function(ANSWER_STARTED, arg=SKY, timeout=120_000)
    first_token = time.monotonic() - began
    lengths = sample_growth(lambda: out.inner_text(), lambda: cell_done(page, SKY))
    # the cell is done once the kernel has sent the final Markdown; the page renders it a moment later
    page.wait_for_function("i => { const o = [...jupyterapp.shell.currentWidget.content.widgets[i].node"
                           ".querySelectorAll('.jp-OutputArea-output')].pop();"
                           " return !!o && /\\[(DONE|TOKENS)\\]/.test(o.innerText); }", arg=SKY, timeout=30_000)
    text = out.inner_text()
    print(f"\nfirst %%chat in a fresh kernel: first token after {first_token:.2f} s; samples {lengths}")
    assert len({n for n in lengths if 0 < n < len(text)}) >= 3, lengths  # it grew in steps, not all at once
    assert re.search(r"ws · first token [\d.]+ s · \d+ chunks .*\[(DONE|TOKENS)\]", text), text
    assert page.locator(".jp-Notebook .jp-Cell").nth(SKY).locator(".jp-RenderedMarkdown").count() == 1
    page.locator(".jp-Notebook .jp-Cell").nth(SKY).screenshot(path=str(ARTIFACTS / "chat-cell.png"))


def test_kernel_interrupt_stops_a_chat_cell_and_keeps_the_partial_answer(page: Any) -> None:
    run_cell(page, STORY)
    out = page.locator(".jp-Notebook .jp-Cell").nth(STORY).locator(".jp-OutputArea")  # a long answer: a few outputs
    page.wait_for_function("i => { const t = jupyterapp.shell.currentWidget.content.widgets[i]"
                           ".node.querySelector('.jp-OutputArea-output');"
                           " return !!t && t.innerText.length > 80 && !t.innerText.includes('waiting'); }",
                           arg=STORY, timeout=120_000)
    page.evaluate("() => jupyterapp.commands.execute('kernelmenu:interrupt')")
    wait_cell(page, STORY, 60)
    text = out.inner_text()
    assert "[INTERRUPTED]" in text and "Traceback" not in text and "KeyboardInterrupt" not in text
    assert len(text.split("[INTERRUPTED]")[0]) > 80  # the partial answer stays


def assert_same_place(before: dict[str, float] | None, after: dict[str, float] | None) -> None:
    """Two bounding boxes of one element are the same place on the page (to a pixel)."""
    assert before is not None and after is not None, (before, after)
    moved = {k: after[k] - before[k] for k in ("x", "y", "width", "height") if abs(after[k] - before[k]) > 1}
    assert not moved, f"Stop moved while the answer streamed: {moved} (from {before})"


def test_widget_streams_and_stop_interrupts(page: Any) -> None:
    run_cell(page, WIDGET)
    wait_cell(page, WIDGET)
    widget = page.locator(".jp-Notebook .jp-Cell").nth(WIDGET).locator(".nbchat-widget")
    widget.locator(".nbchat-input").fill("Tell me a long story about a cat who learns to sail.")
    widget.locator(".nbchat-send").click()
    answer = widget.locator(".nbchat-assistant").last
    page.wait_for_function("() => { const a = [...document.querySelectorAll('.nbchat-assistant')].pop();"
                           " return !!a && a.innerText.length > 10; }", timeout=120_000)
    send, stop = widget.locator(".nbchat-send"), widget.locator(".nbchat-stop")
    aimed = stop.bounding_box()
    lengths = sample_growth(lambda: answer.inner_text(),
                            lambda: len(answer.inner_text()) > 150 or not send.is_disabled(), timeout=90)
    assert send.is_disabled(), "the answer ended before Stop could be clicked"
    assert len(set(lengths)) >= 3, lengths
    # A person aims at Stop while the answer grows: the button must be where it was when the answer began.
    assert_same_place(aimed, stop.bounding_box())
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # the e2e extra, imported where used

    shown = len(answer.inner_text())
    clicked = time.monotonic()
    stop.click()  # the kernel is idle: the Stop reaches it while the task streams
    status = widget.locator(".nbchat-status").last
    try:
        status.wait_for(timeout=30_000)
    except PlaywrightTimeout as exc:  # say which side lost it: a still growing answer never got the Stop
        raise AssertionError(
            f"no status 30 s after Stop; since the click the answer grew {len(answer.inner_text()) - shown} "
            f"characters; stats line {widget.locator('.nbchat-stats').inner_text()!r}; Stop still enabled: "
            f"{widget.locator('.nbchat-stop').is_enabled()}") from exc
    print(f"\nStop to status: {time.monotonic() - clicked:.2f} s")
    assert status.inner_text() == "[INTERRUPTED]"
    page.wait_for_function("() => [...document.querySelectorAll('.nbchat-stats')].pop().innerText"
                           ".includes('[INTERRUPTED]')", timeout=30_000)
    assert not send.is_disabled()
    widget.screenshot(path=str(ARTIFACTS / "widget.png"))


def test_hostile_html_in_answers_renders_as_inert_text(page: Any) -> None:
    for index in (ECHO, XSS_CELL, XSS_WIDGET):
        run_cell(page, index)
        wait_cell(page, index)
    cell = page.locator(".jp-Notebook .jp-Cell").nth(XSS_CELL)
    assert "<img src=x onerror=" in cell.locator(".jp-OutputArea-output").inner_text()
    assert cell.locator(".jp-RenderedMarkdown strong").inner_text() == "bold"
    widget = page.locator(".jp-Notebook .jp-Cell").nth(XSS_WIDGET).locator(".nbchat-widget")
    widget.locator(".nbchat-input").fill(XSS)
    widget.locator(".nbchat-send").click()
    page.wait_for_function("() => [...document.querySelectorAll('.nbchat-stats')].pop().innerText"
                           ".includes('[DONE]')", timeout=30_000)
    assert "<script>window.__xss=2</script>" in widget.locator(".nbchat-assistant").last.inner_text()
    assert widget.locator(".nbchat-assistant strong").last.inner_text() == "bold"  # Markdown still works
    for scope in (cell.locator(".jp-OutputArea"), widget):
        assert scope.locator("img").count() == 0 and scope.locator("script").count() == 0
    assert page.evaluate("() => window.__xss") is None
    assert not page.nbchat_errors, page.nbchat_errors
    widget.screenshot(path=str(ARTIFACTS / "widget-xss.png"))


# ---------------------------------------------------------------- browser-direct widgets


def widget_texts(page: Any, index: int) -> list[int]:
    """The length of each widget's last answer in a cell's output."""
    lengths: list[int] = page.evaluate(
        "i => [...jupyterapp.shell.currentWidget.content.widgets[i].node.querySelectorAll('.nbchat-widget')]"
        ".map((w) => { const a = [...w.querySelectorAll('.nbchat-assistant')].pop();"
        " return a ? a.textContent.length : 0; })",  # whether or not content-visibility skips it out of view
        index)
    return lengths


def show_widgets(page: Any, index: int, count: int) -> list[str]:
    """Run a cell that displays widgets; wait until each has its endpoint; return where each page streams from."""
    run_cell(page, index)
    wait_cell(page, index)
    page.wait_for_function(
        "([i, n]) => { const ws = [...jupyterapp.shell.currentWidget.content.widgets[i].node"
        ".querySelectorAll('.nbchat-widget')]; return ws.length === n && ws.every((w) => !!w.dataset.server); }",
        arg=[index, count], timeout=60_000)
    servers: list[str] = page.evaluate(
        "i => [...jupyterapp.shell.currentWidget.content.widgets[i].node.querySelectorAll('.nbchat-widget')]"
        ".map((w) => w.dataset.server)", index)
    return servers


def stream_during_sleep(page: Any, show: int, ask: int) -> list[list[int]]:
    """Start the asking cell (it sleeps 15 s after ask); sample each widget's answer for 6 s of that sleep,
    click Stop on each while the kernel still sleeps; return each widget's sampled lengths."""
    run_cell(page, ask)
    samples: list[list[int]] = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        samples.append(widget_texts(page, show))
        time.sleep(0.2)  # sampling the page at a steady pace is the point here
    assert not cell_done(page, ask), "the kernel was meant to be asleep while the answers streamed"
    widgets = page.locator(".jp-Notebook .jp-Cell").nth(show).locator(".nbchat-widget")
    for n in range(widgets.count()):
        widgets.nth(n).locator(".nbchat-stop").click()
    page.wait_for_function(
        "i => [...jupyterapp.shell.currentWidget.content.widgets[i].node.querySelectorAll('.nbchat-widget')]"
        ".every((w) => [...w.querySelectorAll('.nbchat-status')].some((s) => s.innerText === '[INTERRUPTED]'))",
        arg=show, timeout=5_000)
    assert not cell_done(page, ask), "Stop must work while the kernel is busy"
    return [list(column) for column in zip(*samples, strict=True)]


def test_direct_widgets_stream_and_stop_while_the_kernel_sleeps(page: Any) -> None:
    run_cell(page, DIRECT_SETUP)
    wait_cell(page, DIRECT_SETUP, 60)
    assert page.locator(".jp-Notebook .jp-Cell").nth(DIRECT_SETUP).locator(".jp-OutputArea-output").count() == 0
    servers = show_widgets(page, DIRECT_SHOW, 3)
    assert all(s.startswith("http://127.0.0.1:") and "/proxy/" not in s for s in servers), servers
    for transport, lengths in zip(TRANSPORTS, stream_during_sleep(page, DIRECT_SHOW, DIRECT_ASK), strict=True):
        print(f"\ndirect {transport} during time.sleep(15): {lengths}")
        assert len(set(lengths)) >= 10 and lengths == sorted(lengths), (transport, lengths)
    wake(page, DIRECT_ASK)
    page.locator(".jp-Notebook .jp-Cell").nth(DIRECT_SHOW).screenshot(path=str(ARTIFACTS / "direct-widgets.png"))


def test_direct_widgets_stream_through_the_jupyter_proxy_behind_its_token(page: Any, lab: Lab) -> None:
    import urllib.error
    import urllib.request

    servers = show_widgets(page, PROXY_SHOW, 3)
    assert all(s.startswith(f"{lab.url}/proxy/") for s in servers), servers
    port = servers[0].rsplit("/", 1)[1]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    def status(url: str) -> int:
        try:
            with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as response:
                code: int = response.status
                return code
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(f"{lab.url}/proxy/{port}/health") in (302, 403)  # no Jupyter credentials: refused by Jupyter
    assert status(f"{lab.url}/proxy/{port}/health?token={lab.token}") == 200
    assert status(f"{lab.url}/proxy/{port}/v1/models?token={lab.token}") == 401  # Jupyter's, but not nbchat's
    for transport, lengths in zip(TRANSPORTS, stream_during_sleep(page, PROXY_SHOW, PROXY_ASK), strict=True):
        print(f"\nproxied {transport} during time.sleep(15): {lengths}")
        assert len(set(lengths)) >= 10 and lengths == sorted(lengths), (transport, lengths)
    wake(page, PROXY_ASK)


def test_the_relayed_widget_shows_nothing_while_the_kernel_sleeps(page: Any) -> None:
    run_cell(page, RELAYED_SHOW)
    wait_cell(page, RELAYED_SHOW)
    run_cell(page, RELAYED_ASK)
    lengths = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        lengths.append(widget_texts(page, RELAYED_SHOW)[0])
        time.sleep(0.2)
    print(f"\nrelayed ws during time.sleep(15): {lengths}")
    assert not cell_done(page, RELAYED_ASK)
    assert len(set(lengths)) <= 1, lengths  # the contrast: every token waits for the kernel
    wake(page, RELAYED_ASK)
    page.wait_for_function(  # once the kernel is free the same answer streams
        "i => { const w = jupyterapp.shell.currentWidget.content.widgets[i].node.querySelector('.nbchat-assistant');"
        " return !!w && w.innerText.length > 50; }", arg=RELAYED_SHOW, timeout=30_000)
    page.locator(".jp-Notebook .jp-Cell").nth(RELAYED_SHOW).locator(".nbchat-stop").click()


def test_direct_answers_join_the_kernels_conversation(page: Any, lab: Lab) -> None:
    import nbformat

    from nbchat.notebook.export import MIRROR_MARKER

    run_cell(page, DIRECT_CHECK)
    wait_cell(page, DIRECT_CHECK, 30)
    lines = output(page, DIRECT_CHECK).inner_text().strip().splitlines()
    assert len(lines) == 6, lines
    for line in lines:  # e.g. ('ws', 'direct', '[INTERRUPTED]', 312)
        assert "'[INTERRUPTED]'" in line and int(line.rstrip(")").rsplit(",", 1)[1]) > 20, lines
    assert not page.nbchat_errors, page.nbchat_errors
    # and the notebook keeps them: each direct widget's saved Markdown copy holds its turn
    page.evaluate("() => jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
    outputs = nbformat.read(lab.root / "chat.ipynb", as_version=4).cells[DIRECT_SHOW].outputs
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    copies = markdown.replace(MIRROR_MARKER, "").split("# ChatWidget conversation")[1:]
    assert len(copies) == len(TRANSPORTS), markdown[:2000]
    assert all(c.startswith(" (1 exchange)") and "INTERRUPTED" in c for c in copies), copies


# ---------------------------------------------------------------- code and math, saved and reopened

CODE_AND_MATH = r"""Euler's identity $e^{i\pi} + 1 = 0$, and a sum:

$$\sum_{k=1}^{n} k = \frac{n(n+1)}{2}$$

```python
def total(n: int) -> int:
    return n * (n + 1) // 2  # the same sum
```

With \(n = 4\): **10**."""

# The outputs holding the widget's saved Markdown copy: whether any is shown, and their text.
MIRROR_SHOWN = ("i => { const os = [...jupyterapp.shell.currentWidget.content.widgets[i].node"
                ".querySelectorAll('.nbchat-mirror')].map((m) => m.closest('.jp-OutputArea-child'));"
                " if (!os.length) return null;"
                " return {shown: os.some((o) => getComputedStyle(o).display !== 'none'), outputs: os.length,"
                " text: os.map((o) => o.textContent).join('')}; }")


def test_widget_streams_code_and_math_and_renders_them_at_the_end(page: Any, docs_img: Path) -> None:
    run_cell(page, RENDER_WIDGET)
    wait_cell(page, RENDER_WIDGET)
    widget = page.locator(".jp-Notebook .jp-Cell").nth(RENDER_WIDGET).locator(".nbchat-widget")
    widget.locator(".nbchat-input").fill(CODE_AND_MATH)
    widget.locator(".nbchat-send").click()
    answer = widget.locator(".nbchat-assistant").last
    page.wait_for_function("i => jupyterapp.shell.currentWidget.content.widgets[i].node"
                           ".querySelector('.nbchat-stats').innerText.includes('[DONE]')",
                           arg=RENDER_WIDGET, timeout=30_000)
    done = answer.evaluate("""a => ({
        katex: a.querySelectorAll('.katex').length, display: a.querySelectorAll('.katex-display').length,
        errors: a.querySelectorAll('.katex-error').length, mathml: a.querySelectorAll('math').length,
        keywords: [...a.querySelectorAll('.tok-keyword')].map((e) => e.textContent),
        color: getComputedStyle(a.querySelector('.tok-keyword')).color,
        copy: a.querySelectorAll('.nbchat-copy').length, code: a.querySelector('pre code').textContent,
        font: getComputedStyle(a.querySelector('.katex')).fontFamily })""")
    assert done["katex"] == 3 and done["display"] == 1 and done["errors"] == 0 and done["mathml"] == 3, done
    assert {"def", "return"} <= set(done["keywords"]) and done["color"] != "rgb(0, 0, 0)", done
    assert done["copy"] == 1 and done["code"].startswith("def total(n: int) -> int:\n"), done
    assert "KaTeX_Main" in done["font"], done  # KaTeX's CSS (and its inlined fonts) came with the widget
    # a KaTeX_Main face is loaded (nbchat's JupyterLab extension declares the same faces from files of its own,
    # so document.fonts.check, which wants every face of the family loaded, is false while one set is unused)
    assert page.evaluate("() => [...document.fonts].some((f) => f.family.replace(/\"/g, '') === 'KaTeX_Main'"
                         " && f.status === 'loaded')")
    # the turn's copy, which nbchat's extension takes from the transcript: hidden, and nothing of it drawn
    page.wait_for_function("i => jupyterapp.shell.currentWidget.content.widgets[i].node"
                           ".querySelector('.nbchat-transcript-title')?.textContent.includes('(1 exchange)')",
                           arg=RENDER_WIDGET, timeout=30_000)
    mirror = page.evaluate(MIRROR_SHOWN, RENDER_WIDGET)
    assert mirror is not None and mirror["shown"] is False, mirror  # the live widget shows it: the copy is hidden
    drawn = page.evaluate("i => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() =>"
                          " done(jupyterapp.shell.currentWidget.content.widgets[i].node"
                          ".querySelectorAll('.nbchat-transcript .nbchat-msg').length))))", RENDER_WIDGET)
    assert drawn == 0, drawn
    assert not page.nbchat_errors, page.nbchat_errors
    widget.screenshot(path=str(docs_img / "widget-code-math.png"))


def test_saved_notebook_reopened_without_a_kernel_shows_the_conversation(page: Any, lab: Lab, browser: Any,
                                                                         docs_img: Path) -> None:
    import nbformat

    page.evaluate("() => jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
    saved = nbformat.read(lab.root / "chat.ipynb", as_version=4)
    outputs = saved.cells[RENDER_WIDGET].outputs
    assert any("Euler's identity" in o.get("data", {}).get("text/markdown", "") for o in outputs), outputs
    [copy] = [o for o in outputs if TRANSCRIPT_MIME in o.get("data", {})]  # the same copy, as data, first
    assert list(copy["data"]) == [TRANSCRIPT_MIME, "text/markdown", "text/plain"], list(copy["data"])
    assert copy["data"][TRANSCRIPT_MIME]["messages"][1]["content"] == CODE_AND_MATH, copy["data"]
    nbformat.write(saved, lab.root / "reopened.ipynb")
    # A fresh page in its own workspace (nothing restored, no widget CSS loaded), the notebook opened with no kernel.
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    try:
        tab.goto(f"{lab.url}/lab/workspaces/reopened?reset&token={lab.token}")
        tab.wait_for_function("() => !!window.jupyterapp", timeout=START_TIMEOUT * 1000)
        tab.evaluate("async () => { await jupyterapp.restored;"
                     " await jupyterapp.commands.execute('docmanager:open', {path: 'reopened.ipynb',"
                     " factory: 'Notebook', kernelPreference: {shouldStart: false, canStart: false}}); }")
        tab.wait_for_function("i => { const nb = jupyterapp.shell.currentWidget; return !!nb && !!nb.content"
                              " && nb.context.path === 'reopened.ipynb' && nb.content.widgets.length > i"
                              " && !!nb.content.widgets[i].node.querySelector('.nbchat-mirror'); }",
                              arg=RENDER_WIDGET, timeout=60_000)
        tab.evaluate("i => jupyterapp.shell.currentWidget.content.widgets[i].node.scrollIntoView()", RENDER_WIDGET)
        assert tab.evaluate("() => jupyterapp.shell.currentWidget.sessionContext.session?.kernel ?? null") is None
        # nbchat's JupyterLab extension draws the copy from its transcript (the conversation as data), a slice
        # per frame once it shows, with the widget's renderer; JupyterLab's Markdown renderer is not used
        tab.wait_for_function("i => jupyterapp.shell.currentWidget.content.widgets[i].node"
                              ".querySelector('.nbchat-transcript')?.dataset.drawn === 'true'",
                              arg=RENDER_WIDGET, timeout=30_000)
        cell = tab.locator(".jp-Notebook .jp-Cell").nth(RENDER_WIDGET)
        assert cell.locator(".jp-RenderedMarkdown").count() == 0
        assert cell.locator(".nbchat-transcript .katex").count() == 3
        assert cell.locator(".nbchat-transcript .tok-keyword").count() >= 2
        mirror = tab.evaluate(MIRROR_SHOWN, RENDER_WIDGET)
        assert mirror is not None and mirror["shown"] is True, mirror
        assert "ChatWidget conversation (1 exchange)" in mirror["text"], mirror
        assert "def total(n: int) -> int:" in mirror["text"] and "Euler's identity" in mirror["text"], mirror
        cell.screenshot(path=str(docs_img / "widget-saved-no-kernel.png"))
    finally:
        context.close()
