"""The kernel's half of a browser-direct ``ChatWidget`` (``direct=True``).

In direct mode the page opens the stream to the nbchat server itself (native
WebSocket, EventSource or fetch, see ``widget.js``), so answers keep streaming
while the kernel runs another cell. The kernel keeps three jobs:

- it resolves the endpoint (starting the in-kernel server on first use) and
  admits the page's origin on the server it owns;
- it hands the page each turn's request, built from the conversation shared
  with ``%%chat``, and the endpoint;
- it records the finished answer the page reports, so the conversation stays one.

The token reaches the page only in custom comm messages. Custom messages are
not widget state: a saved notebook stores the synced traitlets (``messages``,
``stats``, ...) and never the token, and a reopened notebook has no endpoint
until a live kernel sends it again.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..wire.protocol import encode_turn_request
from .conversation import Conversation
from .kernel_server import Endpoint, KernelServer, resolve_endpoint
from .options import ChatOptions

#: how a page may reach the server: the server's own URL, Jupyter's /proxy/<port>/, or the proxy when it is there
ROUTES = ("auto", "direct", "proxy")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def page_endpoint(endpoint: Endpoint) -> dict[str, Any]:
    """What the page needs to reach the server: its URL and token, and its port for Jupyter's proxy."""
    parts = urlsplit(endpoint.url)
    return {"url": endpoint.url.rstrip("/"), "token": endpoint.token or "", "port": parts.port,
            "loopback": parts.hostname in LOOPBACK,
            # the Jupyter server usually runs in the kernel's environment: the extension is there too
            "proxy": importlib.util.find_spec("jupyter_server_proxy") is not None}


def request_template(conversation: Conversation, options: ChatOptions) -> dict[str, Any]:
    """A turn request without its user message: the page adds the text it sends."""
    body = encode_turn_request(conversation.request("", options))
    del body["userMessage"]
    return body


class DirectLink:
    """Endpoint, requests and finished answers between the kernel and a direct widget's page."""

    def __init__(self, send: Callable[[dict[str, Any]], None], conversation: Conversation,
                 kernel_server: KernelServer, server: str | None, token: str | None) -> None:
        self._send = send
        self._conversation = conversation
        self._kernel_server = kernel_server
        self._server = server
        self._token = token
        self._origins: set[str] = set()
        self.endpoint: Endpoint | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[dict[str, Any]]] = []

    def hello(self, origin: str, options: ChatOptions) -> None:
        """A view rendered: resolve the endpoint (off the loop) and send it with the conversation."""
        if origin:
            self._origins.add(origin)
        if self.endpoint is not None:
            self._announce(options)
        elif self._resolving is None or self._resolving.done():
            self._resolving = asyncio.get_running_loop().create_task(self._resolve(options))

    async def _resolve(self, options: ChatOptions, then: dict[str, Any] | None = None) -> None:
        try:
            # Starting the in-kernel server can take seconds: never on the kernel's loop.
            self.endpoint = await asyncio.to_thread(resolve_endpoint, self._server or options.server,
                                                    self._token or options.token, self._kernel_server)
        except Exception as exc:  # shown in the page's stats line: the page is the UI's boundary here
            self._send({"type": "failed", "error": f"{type(exc).__name__}: {exc}"})
            return
        self._announce(options)
        if then is not None:
            self._send(then)

    def _announce(self, options: ChatOptions) -> None:
        assert self.endpoint is not None
        for origin in self._origins:
            self._kernel_server.admit_origin(origin)  # only the server this kernel owns; others need --allow-origin
        self._send({"type": "endpoint", "endpoint": page_endpoint(self.endpoint)})
        self.send_context(options)

    def send_context(self, options: ChatOptions) -> None:
        """The request template the page uses for turns it starts itself (Send while the kernel is busy)."""
        self._send({"type": "context", "request": request_template(self._conversation, options)})

    def ask(self, text: str, options: ChatOptions) -> asyncio.Future[dict[str, Any]]:
        """Have the page start a turn; the future resolves with what the page reports at its end."""
        message = {"type": "ask", "text": text, "request": request_template(self._conversation, options)}
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        if self.endpoint is not None:
            self._send(message)  # at once: the cell that called ask may block the loop next (time.sleep)
        else:
            self._resolving = asyncio.get_running_loop().create_task(self._resolve(options, then=message))
        return done

    def finished(self, report: dict[str, Any]) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(report)
