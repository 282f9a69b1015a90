"""The seed's own page (``../shared/checks/seed_page.html``), unchanged, against
nbchat served through the Jupyter server's proxy (jupyter-server-proxy).

A Jupyter server runs on loopback with a token; an nbchat echo server and a
plain HTTP server for the page run on two more loopback ports. Chromium logs
in to Jupyter once (``?token=``, which sets Jupyter's login cookie) and opens
the page *through the proxy* (``/proxy/<page port>/seed_page.html``), so the
page shares Jupyter's origin and cookie, and points it at
``/proxy/<nbchat port>``: every request of the page passes Jupyter's
authentication, then nbchat's own token. The page's ``<script
src="/eventsource.js">`` is root-relative, so through a path prefix it would
ask Jupyter for ``/eventsource.js``; Jupyter serves it from a named proxy
entry (``ServerProxy.servers``) that reaches the same page server.

For each of the page's clients the test records whether the answer arrives
complete and how: a script added before the page's own (the page is not
changed) notes the time of every ``JSON.parse`` that yields a record with
``content``, which is the moment the page's code takes a piece of the answer.
Pieces taken within one animation frame (16 ms) are one step of what the eye
sees; a stream shows many steps spread over the generation, a buffered
response one step at the end.
"""

from __future__ import annotations

import http.client
import http.server
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbchat.backends.echo import split_pieces
from nbchat.bench.procs import free_port
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from tests.helpers import stop_process

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT.parent / "shared" / "checks"
POLYFILL = Path.home() / ".cache" / "nbchat-checks" / "node_modules" / "event-source-polyfill" / "src"
POLYFILL = POLYFILL / "eventsource.js"
START_TIMEOUT = 60.0
FRAME_MS = 16.0
MSG = "你好，世界！流式输出。 \"quotes\", a \\ backslash,\nemoji 🚀🙂, déjà vu. " * 4
PIECES = len(split_pieces(MSG))  # 56 pieces of the echo backend
RATE = 50.0  # pieces per second: the answer takes PIECES / RATE = 1.1 s to generate
GENERATION_MS = 1000 * PIECES / RATE
CLIENT_TIMEOUT_MS = 20_000  # a client that never ends still returns what it got
CLIENTS = {"websocket": "viaWebSocket", "polyfill": "viaPolyfill", "eventsource": "viaNativeEventSource",
           "fetch": "viaFetchStream"}

# Added before the page's own script: note when the page takes each piece of the answer.
RECORDER = """
(() => {
  const parse = JSON.parse;
  window.__pieces = [];
  JSON.parse = function (text, reviver) {
    const value = parse.call(this, text, reviver);
    if (value && typeof value.content === "string") window.__pieces.push([performance.now(), value.content.length]);
    return value;
  };
})();
"""
# Run one of the page's clients by name, with the recorder emptied first.
RUN = """async ([name, uid, limit]) => {
  window.__pieces = [];
  const started = performance.now();
  const late = new Promise((done) => setTimeout(() => done({content: "", status: null, error: "timeout"}), limit));
  const out = await Promise.race([window[name](uid), late]);
  return Object.assign(out, {started, pieces: window.__pieces});
}"""


@dataclass
class Jupyter:
    url: str
    token: str


def _serve_page(port: int) -> http.server.ThreadingHTTPServer:
    """The seed page and the polyfill, as the check's own page server serves them."""
    page, script = (CHECKS / "seed_page.html").read_bytes(), POLYFILL.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            is_script = "eventsource.js" in self.path
            body = script if is_script else page
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript" if is_script else "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _port(handle: ServerHandle) -> int:
    port = urllib.parse.urlsplit(handle.url).port
    assert port is not None
    return port


def _wait_for(url: str, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Jupyter server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as answer:
            answer.close()
            pytest.fail(f"the Jupyter server answered {answer.code} to {url}")
        except OSError:
            time.sleep(0.2)  # the server prints no line to wait on when its output is discarded
    pytest.fail(f"the Jupyter server did not answer {url} in {seconds} s")


@pytest.fixture(scope="module")
def page_port() -> Iterator[int]:
    if not (CHECKS / "seed_page.html").exists():
        pytest.skip(f"the shared checks are not beside this checkout ({CHECKS})")
    if not POLYFILL.exists():
        pytest.skip("event-source-polyfill is not in ~/.cache/nbchat-checks: run ../shared/checks/seed_clients.py once")
    port = free_port()
    httpd = _serve_page(port)
    yield port
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory, page_port: int) -> Iterator[Jupyter]:
    if shutil.which("jupyter") is None:
        pytest.skip("needs jupyter_server with jupyter-server-proxy")
    root = tmp_path_factory.mktemp("jupyter")
    port, token = free_port(), secrets.token_hex(16)
    # The page asks for /eventsource.js at the root of its origin: a named proxy entry answers there.
    (root / "jupyter_server_config.py").write_text(
        f"c.ServerProxy.servers = {{'eventsource.js': {{'port': {page_port}, 'absolute_url': True,"
        " 'launcher_entry': {'enabled': False}}}\n")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTER_CONFIG_DIR": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
         f"--IdentityProvider.token={token}", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/api/status?token={token}", proc, START_TIMEOUT)
        yield Jupyter(url, token)
    finally:
        stop_process(proc, 20)


@pytest.fixture(scope="module")
def nbchat_server(jupyter: Jupyter) -> Iterator[ServerHandle]:
    # The page's origin is Jupyter's: nbchat must admit it.
    handle = start_server_thread(Settings(port=0, token="seed-" + secrets.token_hex(8), backend="echo", rate=RATE,
                                          allow_origins=(jupyter.url,)))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def results(jupyter: Jupyter, nbchat_server: ServerHandle, page_port: int,
            browser: Any) -> dict[str, dict[str, Any]]:
    """Each client's answer and the times the page took its pieces, through the proxy."""
    server = f"{jupyter.url}/proxy/{_port(nbchat_server)}"
    query = urllib.parse.urlencode({"server": server, "token": nbchat_server.token, "msg": MSG})
    out: dict[str, dict[str, Any]] = {}
    tab = browser.new_page()
    try:
        tab.set_default_timeout(30_000)
        tab.add_init_script(RECORDER)
        tab.goto(f"{jupyter.url}/api/status?token={jupyter.token}")  # Jupyter's login cookie
        tab.goto(f"{jupyter.url}/proxy/{page_port}/seed_page.html?{query}")
        tab.wait_for_function("() => typeof EventSourcePolyfill === 'function'")
        for name, function in CLIENTS.items():
            out[name] = tab.evaluate(RUN, [function, f"{name}-{secrets.token_hex(4)}", CLIENT_TIMEOUT_MS])
    finally:
        tab.close()
    return out


def steps(pieces: list[list[float]]) -> list[tuple[float, int]]:
    """(time, length so far) at the end of each animation frame in which the page took pieces."""
    seen: dict[int, tuple[float, int]] = {}
    total = 0
    for at, length in pieces:
        total += int(length)
        seen[int(at // FRAME_MS)] = (at, total)
    return list(seen.values())


def describe(result: dict[str, Any]) -> str:
    shown = steps(result["pieces"])
    if not shown:
        return f"nothing arrived: error={result['error']!r} status={result['status']!r}"
    first, last = shown[0][0] - result["started"], shown[-1][0] - result["started"]
    return (f"{len(result['pieces'])} pieces in {len(shown)} frames, first at {first:.0f} ms, "
            f"last at {last:.0f} ms, status {result['status']}, error {result['error']!r}")


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and Location of one request, redirects not followed."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
        answer = conn.getresponse()
        answer.read()
        return answer.status, answer.getheader("Location") or ""
    finally:
        conn.close()


def test_jupyter_stands_in_front_of_the_proxy(jupyter: Jupyter, nbchat_server: ServerHandle) -> None:
    health = f"{jupyter.url}/proxy/{_port(nbchat_server)}/health"
    status, location = _get(health)
    assert status == 302 and "/login" in location  # Jupyter's login page, not nbchat
    status, _ = _get(health, {"Authorization": "token wrong"})
    assert status == 302
    assert _get(f"{health}?token={jupyter.token}")[0] == 200
    # Jupyter's token gets past Jupyter only: nbchat still wants its own
    models = f"{jupyter.url}/proxy/{_port(nbchat_server)}/v1/models"
    assert _get(f"{models}?token={jupyter.token}")[0] == 401
    assert _get(f"{models}?token={jupyter.token}", {"token": nbchat_server.token or ""})[0] == 200


@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_client_gets_the_whole_answer_through_the_proxy(results: dict[str, dict[str, Any]],
                                                              client: str) -> None:
    result = results[client]
    print(client, describe(result))
    assert result["error"] is None and result["status"] == "[DONE]", describe(result)
    assert result["content"] == MSG
    assert len(result["pieces"]) == PIECES  # the page took every piece as a record of its own


@pytest.mark.parametrize("client", ["websocket", "polyfill", "eventsource"])
def test_websocket_and_sse_stream_live_through_the_proxy(results: dict[str, dict[str, Any]], client: str) -> None:
    shown = steps(results[client]["pieces"])
    # a live stream shows most pieces in frames of their own, spread over the generation
    assert len(shown) >= PIECES // 2, describe(results[client])
    assert shown[-1][0] - shown[0][0] >= 0.6 * GENERATION_MS, describe(results[client])


def test_the_seed_fetch_client_is_buffered_into_one_burst(results: dict[str, dict[str, Any]]) -> None:
    """The seed's fetch sends no ``Accept: text/event-stream``: the proxy buffers the response whole."""
    result = results["fetch"]
    shown = steps(result["pieces"])
    assert len(shown) <= 2, describe(result)
    assert shown[0][0] - result["started"] >= 0.8 * GENERATION_MS, describe(result)  # after the whole generation
