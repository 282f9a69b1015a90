"""The kernel's half of a browser-direct ``ChatWidget`` (``direct=True``).

In direct mode the page opens the stream to the nbchat server itself (native
WebSocket, EventSource or fetch, see ``js/direct.js``), so answers keep
streaming while the kernel runs another cell. The kernel keeps three jobs:

- it resolves the endpoint (starting the in-kernel server on first use) and
  admits the page's origin on the server it owns;
- it hands the page each turn's request, built from the conversation shared
  with ``%%chat``, and the endpoint;
- it records the finished answer the page reports, so the conversation stays one.

None of this waits for the kernel's event loop. Under **Run All** the cell
after the one showing the widget usually blocks the loop (``w.ask(...)`` then
``time.sleep``), so a task scheduled on it would run only when that cell ends.
The endpoint is therefore resolved in a thread started with the widget, and
comm messages are sent from that thread (ipykernel queues them for its IOPub
thread). A message sent before the page has loaded the widget's module is
lost (the front end keeps no listener for it yet), and the page's ``hello``
is read only when the loop is free; so until a page has been heard from, the
thread sends what the page needs again at growing intervals, and the page
ignores what it already has (an ask carries an id).

The token reaches the page only in custom comm messages, and never the Hub's
API token a kernel on JupyterHub streams with: that page uses its own Hub
login (:func:`page_endpoint`). Custom messages are
not widget state: a saved notebook stores the synced traitlets (``messages``,
``stats``, ...) and never the token, and a reopened notebook has no endpoint
until a live kernel sends it again.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..wire.contract import DIRECT_TRANSPORTS, Transport, transport_name
from ..wire.requests import encode_turn_request
from .conversation import Conversation
from .kernel_server import Endpoint, KernelServer, resolve_endpoint, starts_kernel_server
from .options import ChatOptions

#: how a page may reach the server: the server's own URL, Jupyter's /proxy/<port>/, or the proxy when it is there
ROUTES = ("auto", "direct", "proxy")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: until a page is heard from, what it needs is sent again after these pauses (then every last one), for so long
RESEND_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.0)
RESEND_FOR = 120.0

Send = Callable[[dict[str, Any]], None]


def direct_transport(name: str) -> Transport:
    """The canonical name of a transport a page can stream itself; ValueError for another."""
    canonical = transport_name(name)
    if canonical not in DIRECT_TRANSPORTS:
        raise ValueError(f"transport {canonical!r} cannot stream browser-direct: use one of "
                         f"{', '.join(DIRECT_TRANSPORTS)}. The OpenAI route's chunks carry no seq, so the page could "
                         "not resume its stream after a dropped connection without a gap or a repeat; "
                         f"ChatWidget(transport={canonical!r}) without direct=True streams it through the kernel")
    return canonical


def page_endpoint(endpoint: Endpoint) -> dict[str, Any]:
    """What the page needs to reach the server: its URL and token, and its port for Jupyter's proxy.

    A Hub's service gets no token: the kernel's is the Hub's API token, which acts as its user on the
    whole Hub, so the page signs in to the service with its own Hub login and reaches it by the
    service's path on the page's own origin (``hub``; see ``js/route.js``).
    """
    parts = urlsplit(endpoint.url)
    return {"url": endpoint.url.rstrip("/"), "token": "" if endpoint.hub else endpoint.token or "",
            "hub": endpoint.hub, "path": parts.path.rstrip("/"), "port": parts.port,
            "loopback": parts.hostname in LOOPBACK,
            # the Jupyter server usually runs in the kernel's environment: the extension is there too
            "proxy": importlib.util.find_spec("jupyter_server_proxy") is not None}


def request_template(conversation: Conversation, options: ChatOptions) -> dict[str, Any]:
    """A turn request without its user message: the page adds the text it sends."""
    body = encode_turn_request(conversation.request("", options))
    del body["userMessage"]
    return body


def local_jupyter_origins() -> set[str]:
    """The origins of the Jupyter servers on this machine's loopback, from Jupyter's runtime directory.

    A page served by one of them may stream from the kernel's own server before the kernel has read
    the page's ``hello`` (which names its origin): the kernel may be busy with the next cell.
    """
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return set()
    origins: set[str] = set()
    for info in Path(jupyter_runtime_dir()).glob("jpserver-*.json"):
        try:
            parts = urlsplit(json.loads(info.read_text())["url"])
            port = parts.port
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a file being written or removed by its server
        if parts.hostname in LOOPBACK and port and parts.scheme in ("http", "https"):
            origins.update(f"{parts.scheme}://{host}:{port}" for host in ("127.0.0.1", "localhost", "[::1]"))
    return origins


class DirectLink:
    """Endpoint, requests and finished answers between the kernel and a direct widget's page.

    Everything it sends goes out under one lock, in the order the page needs it: the endpoint,
    then the request template, then the asks still waiting for their page.
    """

    def __init__(self, send: Send, conversation: Conversation, kernel_server: KernelServer,
                 server: str | None, token: str | None) -> None:
        self._send = send
        self._conversation = conversation
        self._kernel_server = kernel_server
        self._server = server
        self._token = token
        self._lock = threading.RLock()
        self._origins: set[str] = set()
        self.endpoint: Endpoint | None = None
        self.failure: str | None = None
        self._context: dict[str, Any] | None = None
        self._asks: list[dict[str, Any]] = []  # asked, not yet reported done by the page
        self._ids = itertools.count(1)
        self._heard = threading.Event()  # a page answered: it receives what is sent from now on
        self._started = False
        self._finished_callbacks: list[Callable[[dict[str, Any]], None]] = []

    def start(self, options: ChatOptions) -> None:
        """Resolve the endpoint in a thread now (the widget was just made) and keep the page told."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._context = self._context_message(options)
            self._server, self._token = self._server or options.server, self._token or options.token
        threading.Thread(target=self._resolve, args=(self._server, self._token), name="nbchat-direct-endpoint",
                         daemon=True).start()
        threading.Thread(target=self._resend, name="nbchat-direct-resend", daemon=True).start()

    def _resolve(self, server: str | None, token: str | None) -> None:
        try:  # starting the in-kernel server (the embedded model) takes seconds: never on the kernel's loop
            endpoint = resolve_endpoint(server, token, self._kernel_server)
        except Exception as exc:  # shown in the page's stats line: the page is the UI's boundary here
            with self._lock:
                self.failure = f"{type(exc).__name__}: {exc}"
                self._deliver()
            return
        origins = local_jupyter_origins()
        with self._lock:
            self.endpoint = endpoint
            self._admit(origins | self._origins)
            self._deliver()

    def _resend(self) -> None:
        pauses = itertools.chain(RESEND_PAUSES, itertools.repeat(RESEND_PAUSES[-1]))
        deadline = time.monotonic() + RESEND_FOR
        while not self._heard.wait(next(pauses)) and time.monotonic() < deadline:
            with self._lock:
                self._deliver()

    def _admit(self, origins: set[str]) -> None:
        for origin in origins:
            self._kernel_server.admit_origin(origin)  # only the server this kernel owns; others need --allow-origin

    def _deliver(self) -> None:
        """Everything the page needs now (called with the lock held)."""
        if self.failure is not None:
            self._send({"type": "failed", "error": self.failure})
        elif self.endpoint is None:
            starting = starts_kernel_server(self._server, self._kernel_server)
            what = "starting the nbchat server in the kernel" if starting else "resolving"
            self._send({"type": "pending", "what": what})
        else:
            self._send({"type": "endpoint", "endpoint": page_endpoint(self.endpoint)})
            if self._context is not None:
                self._send(self._context)
            for ask in self._asks:
                self._send(ask)

    def hello(self, origin: str, options: ChatOptions) -> None:
        """A view rendered (read when the kernel's loop is free): admit its origin, tell it all again."""
        self._heard.set()
        with self._lock:
            if origin:
                self._origins.add(origin)
                if self.endpoint is not None:
                    self._admit({origin})
            self._context = self._context_message(options)
            self._deliver()
        self.start(options)

    def _context_message(self, options: ChatOptions) -> dict[str, Any]:
        return {"type": "context", "request": request_template(self._conversation, options)}

    def send_context(self, options: ChatOptions) -> None:
        """The request template the page uses for turns it starts itself (Send while the kernel is busy)."""
        with self._lock:
            self._context = self._context_message(options)
            if self.endpoint is not None:
                self._send(self._context)

    def ask(self, text: str, options: ChatOptions, on_done: Callable[[dict[str, Any]], None]) -> None:
        """Have the page start a turn, now if the endpoint is known, else as soon as it is (from the thread).

        ``on_done`` is called with what the page reports at the turn's end.
        """
        message = {"type": "ask", "id": next(self._ids), "text": text,
                   "request": request_template(self._conversation, options)}
        with self._lock:
            self._finished_callbacks.append(on_done)
            self._asks.append(message)
            if self.endpoint is not None:
                self._send(message)  # at once: the cell that called ask may block the loop next (time.sleep)
        self.start(options)

    def finished(self, report: dict[str, Any]) -> None:
        self._heard.set()
        with self._lock:
            self._asks.clear()
            callbacks, self._finished_callbacks = self._finished_callbacks, []
        for callback in callbacks:
            callback(report)
