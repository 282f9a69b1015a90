"""The direct widget's page in headless Chromium against a real echo server, without JupyterLab.

The widget's ES module runs in a page with a stand-in model (as the kernel
would, it sends the endpoint, the conversation and the ask as custom
messages); the page opens the stream itself with the browser's WebSocket,
EventSource or fetch reader. Each transport must deliver the answer exactly,
stop on Stop, resume after a dropped connection without losing or repeating a
character, and leave hostile HTML inert.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from nbchat.bench.page import page_server
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TRANSPORTS = ["ws", "sse", "stream"]
TEXT = "你好，世界! Streaming \"quotes\", emoji 🚀 and a\nsecond line. " * 12
XSS = 'Hi <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> **bold** done'

PAGE = """<!doctype html><html><body><div id=root></div><script type=module>
const mod = await import("data:text/javascript;base64,%s");
const handlers = {};
const state = {messages: [], transport: "ws", transports: ["ws", "sse", "stream"], busy: false, stats: "",
               direct: true, route: "direct"};
window.model = {sent: [], get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes() {},
  send(m) { this.sent.push(m); }, on(n, f) { (handlers[n] ||= []).push(f); }, off() {}};
window.emit = (n, m) => (handlers[n] || []).forEach((f) => f(m));
window.view = () => document.querySelector(".nbchat-widget").nbchatView;
mod.default.render({model: window.model, el: document.getElementById("root")});
window.ready = true;
</script></body></html>"""


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    """The page's own loopback origin (Chromium lets only a loopback page reach a loopback server)."""
    source = (Path(__file__).resolve().parents[2] / "nbchat" / "notebook" / "static" / "widget.js").read_bytes()
    html = (PAGE % base64.b64encode(source).decode()).encode()

    with page_server(html) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(origin: str) -> Iterator[ServerHandle]:
    handle = start_server_thread(Settings(port=0, backend="echo", rate=200.0, allow_origins=(origin,)))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def page(browser: Any, server: ServerHandle, origin: str) -> Iterator[Any]:
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    opened: list[str] = []  # what the page opened, from the browser's own log: "METHOD path" or "websocket path"
    tab.on("request", lambda r: opened.append(f"{r.method} {r.resource_type} {urlsplit(r.url).path}"))
    tab.on("websocket", lambda ws: opened.append(f"websocket {urlsplit(ws.url).path}"))
    tab.nbchat_opened = opened
    tab.goto(f"{origin}/harness.html")
    tab.wait_for_function("() => window.ready === true")
    assert tab.evaluate("() => model.sent[0]") == {"type": "hello", "origin": origin}
    endpoint = {"url": server.url, "token": server.token, "port": 0, "loopback": True, "proxy": False}
    tab.evaluate("e => emit('msg:custom', {type: 'endpoint', endpoint: e})", endpoint)
    yield tab
    tab.close()
    assert not errors, errors


def ask(page: Any, transport: str, text: str) -> None:
    page.nbchat_opened.clear()
    page.evaluate("([t, text]) => { model.set('transport', t); model.sent.length = 0;"
                  " emit('msg:custom', {type: 'ask', text, request: {conversation: [], temperature: 0.5}}); }",
                  [transport, text])


def done(page: Any, timeout: float = 60.0) -> dict[str, Any]:
    page.wait_for_function("() => model.sent.some((m) => m.type === 'done')", timeout=timeout * 1000)
    report: dict[str, Any] = page.evaluate("() => model.sent.find((m) => m.type === 'done')")
    return report


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_page_streams_the_answer_itself(page: Any, transport: str) -> None:
    ask(page, transport, TEXT)
    report = done(page)
    assert report["status"] == "[DONE]", report
    assert report["answer"] == TEXT and report["user"] == TEXT
    metrics = report["metrics"]
    assert metrics["transport"] == transport and metrics["route"] == "direct" and metrics["resumes"] == 0
    assert metrics["chunks"] > 50 and metrics["ttft_ms"] is not None and metrics["bytes_per_chunk"] > 5
    assert f"{transport} direct · first token" in page.inner_text(".nbchat-stats")
    uid = "/websocket/page-"
    opened = [o if uid not in o else o.split(uid)[0] + uid for o in page.nbchat_opened]
    assert opened == OPENS[transport], opened


# What each transport opens, as the browser logs it: "METHOD resource-type path" or "websocket path".
OPENS = {"ws": ["POST fetch /turns", "websocket /websocket/page-"],
         "sse": ["POST fetch /turns", "GET eventsource /createSse"],
         "stream": ["POST fetch /talkByStream"]}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stop_interrupts_and_keeps_the_partial_answer(page: Any, transport: str) -> None:
    ask(page, transport, TEXT * 8)
    page.wait_for_function("() => view().live && view().live.chars > 100")
    page.click(".nbchat-stop")
    report = done(page)
    assert report["status"] == "[INTERRUPTED]", report
    assert 100 <= len(report["answer"]) < len(TEXT * 8) and (TEXT * 8).startswith(report["answer"])
    assert page.locator(".nbchat-status").last.inner_text() == "[INTERRUPTED]"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_dropped_connection_resumes_with_nothing_lost_or_repeated(page: Any, transport: str) -> None:
    ask(page, transport, TEXT * 4)
    page.wait_for_function("() => view().live && view().live.chars > 200")
    assert page.evaluate("() => view().turn.drop()") is True
    report = done(page)
    assert report["status"] == "[DONE]", report
    assert report["answer"] == TEXT * 4
    assert report["metrics"]["resumes"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hostile_html_through_the_direct_path_stays_inert(page: Any, transport: str) -> None:
    ask(page, transport, XSS)
    assert done(page)["answer"] == XSS
    answer = page.locator(".nbchat-assistant").last
    assert "<script>window.__xss=2</script>" in answer.inner_text()
    assert answer.locator("strong").inner_text() == "bold"
    assert page.locator("#root img, #root script").count() == 0
    assert page.evaluate("() => window.__xss") is None


def test_a_foreign_origin_is_refused_with_a_clear_message(page: Any, server: ServerHandle, origin: str) -> None:
    other = start_server_thread(Settings(port=0, backend="echo", rate=0.0))  # does not admit the page's origin
    try:
        endpoint = {"url": other.url, "token": other.token, "port": 0, "loopback": True, "proxy": False}
        page.evaluate("e => emit('msg:custom', {type: 'endpoint', endpoint: e})", endpoint)
        ask(page, "fetch", "hello")  # the fetch stream's other name
        report = done(page)
        assert report["status"] == "[ERROR]" and f"--allow-origin {origin}" in report["error"], report
    finally:
        other.stop()
        endpoint = {"url": server.url, "token": server.token, "port": 0, "loopback": True, "proxy": False}
        page.evaluate("e => emit('msg:custom', {type: 'endpoint', endpoint: e})", endpoint)


def test_an_ask_sent_again_starts_one_turn(page: Any) -> None:
    """The kernel sends an ask again until it hears from the page: the page starts it once, by its id."""
    message = {"type": "ask", "id": 9001, "text": "only once", "request": {"conversation": []}}
    page.evaluate("() => { model.set('transport', 'sse'); model.sent.length = 0; }")
    bubbles = page.locator(".nbchat-assistant").count()
    page.evaluate("m => emit('msg:custom', m)", message)
    assert done(page)["answer"] == "only once"
    page.evaluate("m => { model.sent.length = 0; emit('msg:custom', m); emit('msg:custom', m); }", message)
    page.wait_for_timeout(1000)  # time enough for a second turn on a local echo server to start and end
    assert page.evaluate("() => model.sent.length") == 0 and page.locator(".nbchat-assistant").count() == bubbles + 1


def test_a_page_without_word_from_the_kernel_says_why(browser: Any, origin: str) -> None:
    tab = browser.new_page()
    try:
        tab.goto(f"{origin}/silent.html")
        tab.wait_for_function("() => window.ready === true")
        tab.evaluate("() => emit('msg:custom', {type: 'pending', what: 'starting the nbchat server in the kernel'})")
        assert tab.inner_text(".nbchat-stats") == "starting the nbchat server in the kernel…"
        fresh = browser.new_page()  # a second page that hears nothing at all
        try:
            fresh.goto(f"{origin}/silent.html")
            fresh.wait_for_function("() => window.ready === true")
            fresh.wait_for_function("() => document.querySelector('.nbchat-stats').innerText.includes('no word')",
                                    timeout=8000)
            assert "no word from the kernel in 4 s" in fresh.inner_text(".nbchat-stats")
        finally:
            fresh.close()
        # the page that heard "pending" keeps it: the kernel is there, starting its server
        assert tab.inner_text(".nbchat-stats") == "starting the nbchat server in the kernel…"
    finally:
        tab.close()
