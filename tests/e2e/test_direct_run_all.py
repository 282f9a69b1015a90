"""Browser-direct widgets on the path a user takes: Run All, the embedded model, JupyterLab in Chromium.

One notebook per route (``auto``, which goes through jupyter-server-proxy
since it is installed, and ``direct``), each with a widget per transport
shown in one cell and asked in the next, which then sleeps, with no pause
between cells and no server started beforehand: the first widget's kernel
starts its own server with the embedded model. Under Run All every cell's
execute request is queued at once, so the page's own messages reach the
kernel only after the last cell; what the page needs must come from the
kernel without them. Asserted from the browser's side: which endpoint each
page opened (Playwright's request and WebSocket events), and that each
widget's text grows while its cell sleeps. The two notebooks run at once, in
two tabs: two kernels, each starting its own server and model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from nbchat.bench.longpage import KERNEL_IDLE, Lab, write_notebook
from tests.e2e.conftest import START_TIMEOUT
from tests.e2e.test_jupyterlab import ARTIFACTS

pytestmark = [pytest.mark.model, pytest.mark.browser, pytest.mark.slow, pytest.mark.e2e]

TRANSPORTS = ("ws", "sse", "stream")
ROUTES = ("auto", "direct")
QUESTION = "Write four sentences about rivers and the sea."
#: each answer streams for 3-4 s on two cores (two kernels at once): the sleep outlasts it
SLEEP = 6
#: cells: the import, then for each transport a cell that shows a widget and one that asks and sleeps
SHOW = {t: 1 + 2 * i for i, t in enumerate(TRANSPORTS)}
ASK = {t: 2 + 2 * i for i, t in enumerate(TRANSPORTS)}
# What each transport opens, as the browser logs it ("METHOD resource-type path", "websocket path").
OPENS = {"ws": ["POST fetch /turns", "websocket /websocket/"],
         "sse": ["POST fetch /turns", "GET eventsource /createSse"],
         "stream": ["POST fetch /talkByStream"]}
NBCHAT_PATHS = ("/turns", "/websocket/", "/createSse", "/talkByStream", "/v1/")


def cells(route: str) -> list[str]:
    option = "" if route == "auto" else f", route={route!r}"
    out = ["from nbchat import ChatWidget\nimport time"]
    for t in TRANSPORTS:
        out += [f"w_{t} = ChatWidget(direct=True, transport={t!r}{option})\nw_{t}",
                f"w_{t}.ask({QUESTION!r})\ntime.sleep({SLEEP})"]
    return out


@dataclass
class Run:
    """What the browser saw during Run All of one route's notebook."""

    began: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)  # {t, running, lengths: {transport: n}}
    opened: list[tuple[float, str, str]] = field(default_factory=list)  # (time, kind, url)

    def during(self, cell: int) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["running"] == cell]

    def window(self, cell: int) -> tuple[float, float]:
        times = [s["t"] for s in self.during(cell)]
        return min(times), max(times)


SAMPLE = """(cells) => {
  const nb = jupyterapp.shell.currentWidget.content;
  const busy = nb.widgets.findIndex((c) => c.model.type === 'code' && c.promptNode.textContent.includes('*'));
  const lengths = {};
  for (const [t, i] of Object.entries(cells)) {
    const a = [...nb.widgets[i].node.querySelectorAll('.nbchat-assistant')].pop();
    // textContent: innerText leaves out finished blocks content-visibility skips while scrolled away
    lengths[t] = a ? a.textContent.length : 0;
  }
  const stats = Object.fromEntries(Object.entries(cells).map(([t, i]) => {
    const s = nb.widgets[i].node.querySelector('.nbchat-stats'); return [t, s ? s.innerText : null]; }));
  return {running: busy, lengths, stats};
}"""


@pytest.fixture(scope="module")
def runs(lab: Lab, browser: Any) -> Iterator[dict[str, Run]]:
    """Each route's notebook, fresh, in a tab of its own; Run All in both at once, each tab sampled in turn until
    its last cell is done (two kernels, each starting its own server and model, as two users would)."""
    contexts = {route: browser.new_context(viewport={"width": 1280, "height": 1400}) for route in ROUTES}
    try:
        tabs, found = {}, {}
        for route, context in contexts.items():
            tabs[route], found[route] = open_notebook(lab, context, route)
        for tab in tabs.values():
            tab.wait_for_function(KERNEL_IDLE, timeout=START_TIMEOUT * 1000)
        for tab in tabs.values():  # not awaited: the command's promise resolves only once every cell has run
            tab.evaluate("() => { jupyterapp.commands.execute('notebook:run-all-cells'); }")
        time.sleep(1)  # let the first cells be marked as running before sampling looks for the end
        deadline = time.monotonic() + 240
        running = set(ROUTES)
        while running and time.monotonic() < deadline:
            for route in sorted(running):
                sample = tabs[route].evaluate(SAMPLE, SHOW)
                sample["t"] = time.monotonic() - found[route].began
                found[route].samples.append(sample)
                if sample["running"] == -1:
                    running.discard(route)
            time.sleep(0.2)  # sampling the page at a steady pace is the point here
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for route, tab in tabs.items():
            tab.screenshot(path=str(ARTIFACTS / f"direct-run-all-{route}.png"), full_page=True)
        yield found
    finally:
        for context in contexts.values():
            context.close()


def open_notebook(lab: Lab, context: Any, route: str) -> tuple[Any, Run]:
    """A fresh notebook for ``route`` opened in a tab of ``context`` (in a workspace of its own), with the
    requests and WebSockets the tab opens logged from now on."""
    name = f"direct-{route}.ipynb"
    write_notebook(lab.root / name, cells(route))
    tab = context.new_page()
    run = Run()
    tab.on("request", lambda r: run.opened.append((time.monotonic() - run.began, f"{r.method} {r.resource_type}",
                                                   r.url)))
    tab.on("websocket", lambda ws: run.opened.append((time.monotonic() - run.began, "websocket", ws.url)))
    tab.goto(f"{lab.url}/lab/workspaces/{route}/tree/{name}?reset&token={lab.token}")
    return tab, run


@pytest.mark.parametrize("route", ROUTES)
def test_run_all_streams_every_transport_while_the_kernel_sleeps(lab: Lab, runs: dict[str, Run], route: str) -> None:
    run = runs[route]
    assert run.samples[-1]["running"] == -1, "Run All did not finish"
    for t in TRANSPORTS:
        during = run.during(ASK[t])
        lengths = [s["lengths"][t] for s in during]
        distinct = sorted({n for n in lengths if n > 0})
        print(f"\n{route} {t}: {len(during)} samples during its sleep, distinct lengths {distinct}; "
              f"stats after: {run.samples[-1]['stats'][t]!r}")
        assert len(distinct) >= 3, (route, t, lengths)  # it grew while the kernel slept
        assert lengths == sorted(lengths), (route, t, lengths)
        # the requests this widget's page made while its cell ran, from the browser's log
        start, end = run.window(ASK[t])
        mine = [(kind, url) for when, kind, url in run.opened if start - 1 <= when <= end
                and any(p in urlsplit(url).path for p in NBCHAT_PATHS)]
        seen = [f"{kind} {urlsplit(url).path}" for kind, url in mine]
        print(f"{route} {t} opened: {seen}")
        assert [s if "/websocket/" not in s else s.split("/websocket/")[0] + "/websocket/" for s in
                (_strip_proxy(x) for x in seen)] == OPENS[t], seen
        for _kind, url in mine:
            parts = urlsplit(url)
            if route == "auto":  # jupyter-server-proxy is installed: through Jupyter's /proxy/<port>/
                assert f"{parts.hostname}:{parts.port}" == urlsplit(lab.url).netloc and "/proxy/" in parts.path
            else:  # the kernel's own server, on its own port
                assert parts.hostname == "127.0.0.1" and parts.port != urlsplit(lab.url).port, url
                assert "/proxy/" not in parts.path, url
        assert run.samples[-1]["stats"][t].startswith(f"{t} {'proxy' if route == 'auto' else 'direct'} · ")


def _strip_proxy(seen: str) -> str:
    kind, _, path = seen.rpartition(" ")
    return f"{kind} /{path.split('/', 3)[3]}" if path.startswith("/proxy/") else seen
