"""What the eye sees: the direct widget's own figures, measured in headless Chromium.

The widget's page (the shipped bundle, ``static/widget.js``: its view and
``js/direct.js``, the code a ``ChatWidget(direct=True)`` runs) records per
chunk its arrival time (``performance.now()``) against the server's ``ts``;
this module drives it in the system's Chromium against an echo server, with
the messages the kernel sends (endpoint, ask) emitted into the page instead of
a comm, and collects, per transport (``ws``, ``sse``, ``stream``, as the
widget names them) and route, TTFT, inter-chunk cadence p50/p99 and bytes per
chunk:

- ``direct``: the page reads the server's own port;
- ``proxy``: through a real Jupyter server's ``/proxy/<port>/`` (jupyter-server-proxy), behind its token;
- ``rtt20`` / ``rtt100``: the server's port behind a :class:`~.relay.DelayRelay` (20 / 100 ms round trip).

It also measures the Python clients over the same relays, and what the proxy
does to a fetch stream whose ``Accept`` is not ``text/event-stream``.

    python -m nbchat.bench.page [--turns 5] [--rate 50] [--json OUT]

``--long`` measures long answers in the notebook instead (:mod:`.longpage`).
"""

from __future__ import annotations

import argparse
import base64
import http.server
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..wire.contract import DIRECT_TRANSPORTS
from . import chromium
from .procs import free_port
from .relay import DelayRelay
from .stats import percentile

TRANSPORTS = DIRECT_TRANSPORTS
#: echo pieces a second: a chat's pace (``--long`` has its own, :data:`.longpage.RATE`)
RATE = 50.0
TEXT = "The quick brown fox jumps over the lazy dog; 你好, 世界 🚀. " * 5

PAGE = """<!doctype html><html><body>
<script id="jupyter-config-data" type="application/json">{"baseUrl": "/", "token": "%(jtoken)s"}</script>
<div id=root></div><script type=module>
const mod = await import("data:text/javascript;base64,%(module)s");
const handlers = {};
const state = {messages: [], transport: "ws", transports: ["ws", "sse", "stream"], busy: false, stats: "",
               direct: true, route: "direct"};
window.model = {sent: [], get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes() {},
  send(m) { this.sent.push(m); }, on(n, f) { (handlers[n] ||= []).push(f); }, off() {}};
window.emit = (n, m) => (handlers[n] || []).forEach((f) => f(m));
mod.default.render({model: window.model, el: document.getElementById("root")});
let asks = 0;
window.turn = (transport, route, endpoint, text) => new Promise((resolve) => {
  model.set("transport", transport); model.set("route", route); model.sent.length = 0;
  emit("msg:custom", {type: "endpoint", endpoint});
  const before = model.send.bind(model);
  model.send = (m) => { before(m); if (m.type === "done") { model.send = before; resolve(m); } };
  emit("msg:custom", {type: "ask", id: ++asks, text, request: {conversation: [], temperature: 0.5}});
});
// A fetch stream as a page would write it without the Accept trick: arrival of each read.
window.rawFetch = async (base, token, text, accept) => {
  const t0 = performance.now();
  const headers = {"Content-Type": "application/json", token};
  if (accept) headers.Accept = accept;
  const res = await fetch(base + "/talkByStream", {method: "POST", headers,
    body: JSON.stringify({userMessage: {role: "user", content: text}})});
  const reader = res.body.getReader(); const reads = [];
  for (;;) { const {done} = await reader.read(); if (done) break; reads.push(performance.now() - t0); }
  return {status: res.status, reads, contentLength: res.headers.get("Content-Length")};
};
window.ready = true;
</script></body></html>"""


@contextmanager
def page_server(html: bytes) -> Iterator[int]:
    """Serve ``html`` at every path on a free loopback port; yields the port."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def jupyter_server(token: str) -> Iterator[str]:
    """A Jupyter server (with jupyter-server-proxy, as the lab extra installs it) on a free loopback port."""
    port = free_port()
    root = tempfile.mkdtemp(prefix="nbchat-page-bench-")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": os.path.join(root, "runtime")}
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
                             f"--IdentityProvider.token={token}", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                             "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Jupyter server did not start") from None
                time.sleep(0.3)  # polling a subprocess's port: it has no event to await
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over turns of the page's per-turn figures."""
    def med(key: str) -> float | None:
        values = [r[key] for r in reports if r.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    return {"turns": len(reports), "chunks": med("chunks"), "ttft_ms": med("ttft_ms"),
            "cadence_p50_ms": med("cadence_p50_ms"), "cadence_p99_ms": med("cadence_p99_ms"),
            "lag_p50_ms": med("lag_p50_ms"), "bytes_per_chunk": med("bytes_per_chunk")}


def python_client_figures(url: str, token: str, transport: str, turns: int) -> dict[str, Any]:
    """TTFT and cadence of a Python client, a fresh connection per turn (as a page opens one per turn)."""
    from ..clients import connect
    from ..wire.contract import transport_name
    from ..wire.events import Chunk

    ttfts: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    for _ in range(turns):
        began = time.perf_counter()
        arrivals: list[float] = []
        with connect(url, token=token, transport=transport_name(transport)) as client:
            for event in client.stream(TEXT):
                if isinstance(event, Chunk):
                    arrivals.append(time.perf_counter())
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
        ttfts.append((arrivals[0] - began) * 1000)
        p50s.append(percentile(gaps, 50))
        p99s.append(percentile(gaps, 99))
    return {"turns": turns, "ttft_ms": round(statistics.median(ttfts), 1),
            "cadence_p50_ms": round(statistics.median(p50s), 1), "cadence_p99_ms": round(statistics.median(p99s), 1)}


def run(turns: int = 5, rate: float = RATE, rtts: tuple[float, ...] = (0.02, 0.1)) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from ..server.config import Settings
    from ..server.serving import start_server_thread

    jtoken = secrets.token_hex(16)
    module = (Path(__file__).resolve().parents[1] / "notebook" / "static" / "widget.js").read_bytes()
    html = (PAGE % {"jtoken": jtoken, "module": base64.b64encode(module).decode()}).encode()
    results: dict[str, Any] = {"rate": rate, "turns": turns, "text_chars": len(TEXT), "page": {}, "python": {},
                               "proxy_accept": {}}
    with jupyter_server(jtoken) as jurl, page_server(html) as page_port:
        server = start_server_thread(Settings(port=0, backend="echo", rate=rate, allow_origins=(jurl,)))
        relays = {f"rtt{round(rtt * 1000)}": DelayRelay(_port(server.url), rtt).start()
                  for rtt in rtts}
        try:
            port = _port(server.url)
            routes = {"direct": ("direct", server.url), "proxy": ("proxy", server.url),
                      **{name: ("direct", relay.url) for name, relay in relays.items()}}
            with sync_playwright() as pw:
                browser = chromium.launch(pw)
                tab = browser.new_page()
                tab.goto(f"{jurl}/proxy/{page_port}/bench.html?token={jtoken}")  # the page's origin is Jupyter's
                tab.wait_for_function("() => window.ready === true")
                for name, (route, url) in routes.items():
                    endpoint = {"url": url, "token": server.token, "port": _port(url), "loopback": True, "proxy": True}
                    for transport in TRANSPORTS:
                        args = [transport, route, endpoint, TEXT]
                        reports = [tab.evaluate("([t, r, e, x]) => turn(t, r, e, x)", args) for _ in range(turns)]
                        bad = [r for r in reports if r["status"] != "[DONE]"]
                        if bad:
                            raise RuntimeError(f"{name} {transport}: {bad[0]['status']} {bad[0].get('error')}")
                        results["page"].setdefault(name, {})[transport] = summarize([r["metrics"] for r in reports])
                base = f"{jurl}/proxy/{port}"
                for accept in (None, "text/event-stream"):
                    results["proxy_accept"][accept or "(none)"] = tab.evaluate(
                        "([b, t, x, a]) => rawFetch(b, t, x, a)", [base, server.token, TEXT, accept])
                browser.close()
            for name, url in {"direct": server.url, **{n: r.url for n, r in relays.items()}}.items():
                for transport in TRANSPORTS:
                    results["python"].setdefault(name, {})[transport] = python_client_figures(url, server.token,
                                                                                              transport, turns)
        finally:
            for relay in relays.values():
                relay.stop()
            server.stop()
    return results


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def markdown(results: dict[str, Any]) -> str:
    """The figures as Markdown tables, with round trips before the first chunk from the relay runs."""
    lines = ["| where | transport | TTFT ms | cadence p50 ms | cadence p99 ms | bytes/chunk "
             "| round trips to 1st chunk |", "|---|---|---:|---:|---:|---:|---:|"]
    for side in ("page", "python"):
        local = results[side]["direct"]
        for name, per in results[side].items():
            rtt = int(name[3:]) if name.startswith("rtt") else None
            for transport, f in per.items():
                trips = "" if rtt is None else f"{(f['ttft_ms'] - local[transport]['ttft_ms']) / rtt:.1f}"
                lines.append(f"| {side} {name} | {transport} | {f['ttft_ms']} | {f['cadence_p50_ms']} | "
                             f"{f['cadence_p99_ms']} | {f.get('bytes_per_chunk', '')} | {trips} |")
    lines += ["", "| fetch through the proxy, Accept | status | reads | first read ms | last read ms "
              "| Content-Length |", "|---|---:|---:|---:|---:|---|"]
    for accept, probe in results["proxy_accept"].items():
        reads = probe["reads"]
        lines.append(f"| {accept} | {probe['status']} | {len(reads)} | {reads[0]:.0f} | {reads[-1]:.0f} | "
                     f"{probe['contentLength']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.page", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--rate", type=float, help="echo pieces per second (default: 50; with --long, 1000)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--long", action="store_true",
                        help="instead: long answers in JupyterLab and Notebook 7 (time to the whole answer, stalls)")
    parser.add_argument("--sizes", default="4,40,150", help="--long: answer sizes in KB")
    parser.add_argument("--surfaces", help="--long: some of 'chat lab', 'chat nb7', 'widget relayed', "
                        "'widget direct', comma-separated (default: all)")
    args = parser.parse_args(argv)
    if args.long:
        from . import longpage

        surfaces = tuple(args.surfaces.split(",")) if args.surfaces else longpage.SURFACES
        long_results = longpage.run(tuple(int(kb) for kb in args.sizes.split(",")),
                                    longpage.RATE if args.rate is None else args.rate, surfaces)
        if args.json:
            Path(args.json).write_text(json.dumps(long_results, indent=1))
        print(longpage.markdown(long_results))
        return
    results = run(args.turns, RATE if args.rate is None else args.rate)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(markdown(results))


if __name__ == "__main__":
    main()
