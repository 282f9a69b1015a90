"""A browser-direct ``ChatWidget`` in a Hub user's JupyterLab, in headless Chromium.

A real JupyterHub (its proxy, the DummyAuthenticator, the ``SimpleLocalProcessSpawner``, nbchat as
its service on the echo backend; :mod:`nbchat.bench.hubrun`) with the operator's
``c.Spawner.environment`` naming the service. Chromium logs in at the Hub's login page, the Hub
spawns the user's server, and JupyterLab runs a notebook whose cells say nothing of nbchat's
address or token: ``ChatWidget(direct=True)`` on each transport. The page must sign in to the
service with the user's Hub login and stream from ``/services/nbchat/`` through the proxy, and no
request it sends may carry a token (the kernel's ``JUPYTERHUB_API_TOKEN`` stays in the kernel).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from nbchat.bench.hubrun import PASSWORD, LocalHub
from nbchat.bench.longpage import CELL_DONE, KERNEL_IDLE, write_notebook
from tests.hub.conftest import MODEL, SLOW_ECHO, HubPool, new_user

pytestmark = [pytest.mark.hub, pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "e2e"
TIMEOUT_MS = 120_000
TRANSPORTS = ("ws", "sse", "stream")
CELLS = [
    "import os\nfrom nbchat import ChatWidget\nfrom nbchat.notebook.conversation import Conversation\n"
    "from nbchat.notebook.options import ChatOptions\n"
    f"widgets = {{t: ChatWidget(Conversation(ChatOptions(max_tokens=48)), direct=True, transport=t)"
    f" for t in {TRANSPORTS!r}}}\ndisplay(*widgets.values())",
    "for w in widgets.values():\n    w.ask(f'streamed by the page over {w.transport}, through the Hub')",
    "import json\nprint(json.dumps([[w.transport, w.conversation.exchanges[-1].status,"
    " w.conversation.exchanges[-1].answer] for w in widgets.values()]))",
    "print(os.environ['JUPYTERHUB_API_TOKEN'])",
]
SHOW, ASK, CHECK, KERNEL_TOKEN = range(len(CELLS))
# Every direct widget on the page has ended a turn (its page reported the figures of one) and the kernel
# has recorded it (it syncs the history back once it has: the check cell reads what the kernel holds).
ALL_ENDED = ("n => { const views = [...document.querySelectorAll('.nbchat-widget')].map(e => e.nbchatView)"
             ".filter(v => v && v.model.get('direct'));"
             " return views.length === n && views.every(v => v.lastMetrics !== null"
             " && (v.model.get('messages') || []).length >= 2); }")


#: the service's backend: the embedded model (as ``nbchat serve --jupyterhub`` starts), and the echo backend,
#: whose answers are known to the letter
BACKENDS = [pytest.param(MODEL, id="model", marks=pytest.mark.model),
            pytest.param(SLOW_ECHO, id="echo")]


@pytest.fixture(scope="module", params=BACKENDS)
def hub(hub_pool: HubPool, request: pytest.FixtureRequest) -> LocalHub:
    """The session's Hub for the backend (its users' JupyterLab exposes its app to the page: the tests run cells
    through it)."""
    return hub_pool.get(service_args=request.param)


@dataclass
class Lab:
    """A logged-in user's JupyterLab page, and what it sent: its requests, its WebSockets, its errors."""

    page: Any
    requests: list[Any] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sign_in(hub: LocalHub, browser: Any, access: bool) -> tuple[Lab, str]:
    """A fresh user at the Hub's login page, signed in: the Hub starts spawning the user's server."""
    name = new_user(hub, access=access).name
    home = hub.homes / name
    settings = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)  # no news or update check: nothing reaches out, no toast over the cells
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    write_notebook(home / "hub.ipynb", CELLS)
    lab = Lab(browser.new_context(viewport={"width": 1280, "height": 1100}).new_page())
    lab.page.on("request", lambda request: lab.requests.append(request))
    lab.page.on("websocket", lambda ws: lab.sockets.append(ws.url))
    lab.page.on("pageerror", lambda exc: lab.errors.append(str(exc)))
    lab.page.goto(f"{hub.url}/hub/login")
    lab.page.fill("#username_input", name)
    lab.page.fill("#password_input", PASSWORD)
    lab.page.click("#login_submit")
    return lab, name


@pytest.fixture(scope="module")
def labs(hub: LocalHub, browser: Any) -> Iterator[dict[str, Lab]]:
    """Two fresh users' JupyterLab, the notebook open: one the Hub lets use the service ("streamed"), one it does
    not ("refused"). Both sign in before either is awaited: the Hub spawns their servers side by side."""
    signed = {"streamed": sign_in(hub, browser, access=True), "refused": sign_in(hub, browser, access=False)}
    try:
        for lab, name in signed.values():
            lab.page.wait_for_url(f"{hub.url}/user/{name}/lab**", timeout=TIMEOUT_MS)  # the Hub spawned the server
            lab.page.goto(f"{hub.url}/user/{name}/lab/tree/hub.ipynb")
        for lab, _ in signed.values():
            lab.page.wait_for_function(KERNEL_IDLE, timeout=TIMEOUT_MS)
        yield {shot: lab for shot, (lab, _) in signed.items()}
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        backend = hub.service_args[1] if hub.service_args else "model"
        for shot, (lab, name) in signed.items():
            lab.page.screenshot(path=str(ARTIFACTS / f"hub-widget-{shot}-{backend}.png"), full_page=True)
            lab.page.context.close()
            hub.api("DELETE", f"/users/{name}/server")


@pytest.fixture(scope="module")
def lab(labs: dict[str, Lab]) -> Lab:
    return labs["streamed"]


def start_cell(page: Any, index: int) -> None:
    page.evaluate("i => { const nb = jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i;"
                  " jupyterapp.commands.execute('notebook:run-cell'); }", index)


def run_cell(page: Any, index: int) -> None:
    start_cell(page, index)
    page.wait_for_function(CELL_DONE, arg=index, timeout=TIMEOUT_MS)


def cell_text(page: Any, index: int) -> str:
    """A finished cell's printed text (its output area may be drawn a moment after the cell is marked done)."""
    output = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output").last
    output.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("i => !!jupyterapp.shell.currentWidget.content.widgets[i].node"
                           ".querySelector('.jp-OutputArea-output').innerText.trim()", arg=index, timeout=TIMEOUT_MS)
    return str(output.inner_text())


def test_direct_widgets_stream_from_the_service_with_the_hub_login(
        lab: Lab, hub: LocalHub) -> None:
    page, requests, sockets, errors = lab.page, lab.requests, lab.sockets, lab.errors
    began = len(requests)
    start_cell(page, SHOW)  # as Run All runs them: the asks go out before the page has the service's address
    run_cell(page, ASK)
    page.wait_for_function(ALL_ENDED, arg=len(TRANSPORTS), timeout=TIMEOUT_MS)
    run_cell(page, CHECK)
    ended = {transport: (status, answer) for transport, status, answer in json.loads(cell_text(page, CHECK))}
    assert set(ended) == set(TRANSPORTS)
    if "echo" in hub.service_args:
        assert ended == {t: ("[DONE]", f"streamed by the page over {t}, through the Hub") for t in TRANSPORTS}
    assert all(status in ("[DONE]", "[TOKENS]") and answer.strip() for status, answer in ended.values()), ended
    stats = page.locator(".nbchat-stats").all_inner_texts()
    assert all(" hub · first token " in line and line.endswith(("[DONE]", "[TOKENS]")) for line in stats), stats
    assert not errors, errors

    service = f"{hub.service_url}/"
    to_service = [r for r in requests[began:] if r.url.startswith(service)]
    seen = {(r.method, urlsplit(r.url).path.removeprefix(urlsplit(service).path)) for r in to_service}
    # the sign-in (the service's root, the Hub's authorize, the callback), then each transport's requests
    assert {("GET", ""), ("GET", "oauth_callback"), ("POST", "turns"), ("POST", "talkByStream"),
            ("GET", "createSse")} <= seen, seen
    assert any(r.url.startswith(f"{hub.url}/hub/api/oauth2/authorize") for r in requests[began:])
    assert [url for url in sockets if url.startswith(service.replace("http", "ws", 1) + "websocket/")]

    run_cell(page, KERNEL_TOKEN)
    kernel_token = cell_text(page, KERNEL_TOKEN).strip()
    assert len(kernel_token) >= 16
    for request in to_service:
        headers = request.all_headers()
        assert "token" not in parse_qs(urlsplit(request.url).query), request.url
        assert "authorization" not in headers and "token" not in headers, (request.url, headers)
        assert kernel_token not in request.url + json.dumps(headers) + (request.post_data or ""), request.url
    for url in sockets:
        assert kernel_token not in url and "token" not in parse_qs(urlsplit(url).query), url
    root = urlsplit(service).path
    streamed = [r for r in to_service if urlsplit(r.url).path not in (root, root + "oauth_callback")]
    assert streamed and all("service-nbchat=" in r.all_headers().get("cookie", "") for r in streamed), [
        (r.url, r.all_headers().get("cookie", "")[:40]) for r in streamed]


def test_a_question_typed_in_the_page_streams_with_no_new_sign_in(
        lab: Lab, hub: LocalHub) -> None:
    page, requests = lab.page, lab.requests
    began = len(requests)
    widget = page.locator(".nbchat-widget").first
    shown = page.evaluate("() => document.querySelector('.nbchat-widget').nbchatView.log.childElementCount")
    widget.locator(".nbchat-input").fill("typed in the page")
    widget.locator(".nbchat-send").click()
    page.wait_for_function("n => { const v = document.querySelector('.nbchat-widget').nbchatView;"
                           " return !v.turn && v.log.childElementCount === n + 2"
                           " && /\\[(DONE|TOKENS)\\]$/.test(v.stats.textContent); }", arg=shown,
                           timeout=TIMEOUT_MS)
    if "echo" in hub.service_args:
        assert widget.locator(".nbchat-assistant").last.inner_text() == "typed in the page"
    later = [urlsplit(r.url).path for r in requests[began:] if r.url.startswith(hub.url)]
    queued = [json.loads(r.post_data) for r in requests[began:] if r.method == "POST" and r.url.endswith("/turns")]
    assert len(queued) == 1 and queued[0]["userMessage"]["content"] == "typed in the page"
    # the page went on from the conversation the kernel sent it: the question the kernel asked, then its answer
    assert [m["role"] for m in queued[0]["conversation"]] == ["user", "assistant"], queued
    assert not [path for path in later if "oauth" in path or path == urlsplit(f"{hub.service_url}/").path], later


def test_a_user_the_hub_does_not_allow_is_told_why_and_no_token_leaves(hub: LocalHub, labs: dict[str, Lab]) -> None:
    lab = labs["refused"]
    start_cell(lab.page, SHOW)
    run_cell(lab.page, ASK)
    lab.page.wait_for_function(
        "n => [...document.querySelectorAll('.nbchat-stats')].filter(e => /does not let this user use the nbchat"
        " service \\(403\\)/.test(e.textContent)).length === n", arg=len(TRANSPORTS), timeout=TIMEOUT_MS)
    assert not lab.errors, lab.errors
    service = f"{hub.service_url}/"
    paths = [urlsplit(r.url).path for r in lab.requests if r.url.startswith(service)]
    assert paths and set(paths) == {urlsplit(service).path}, paths  # the sign-in only: no turn was sent
    assert not [url for url in lab.sockets if url.startswith(service.replace("http", "ws", 1))]
    for request in lab.requests:
        if request.url.startswith(service):
            assert "authorization" not in request.all_headers(), request.url
