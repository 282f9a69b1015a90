"""The nbchat server a kernel starts for itself when none is configured.

Where a chat goes, in order: an explicit ``--server``, the ``NBCHAT_URL``
environment variable (with ``NBCHAT_TOKEN``), or a server started inside the
kernel process on a free loopback port with a random token and the embedded
model. That in-kernel server starts on first use, is reused after that, and
stops when the kernel exits. It is one per kernel process (:func:`kernel_server`):
the ``%%chat`` magic and every ``ChatWidget`` of the kernel stream from the same
server, whether or not the extension is loaded.

On JupyterHub the operator names the Hub's nbchat service in every user's
environment (``c.Spawner.environment = {"NBCHAT_URL": ...}``) and sets no
``NBCHAT_TOKEN``: the kernel then authenticates with the token the Hub gave
its single-user server (``JUPYTERHUB_API_TOKEN``), so nothing is configured in
the notebook. That token goes only to the server ``NBCHAT_URL`` names, never
to one given explicitly, and never to a browser page (:attr:`Endpoint.hub`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..backends.echo import DEFAULT_RATE
from ..wire.errors import AuthError

if TYPE_CHECKING:
    from ..server.config import Settings
    from ..server.serving import ServerHandle

ENV_URL = "NBCHAT_URL"
ENV_TOKEN = "NBCHAT_TOKEN"
#: the token JupyterHub gives a single-user server (and so its kernels) to act as its user
ENV_HUB_TOKEN = "JUPYTERHUB_API_TOKEN"


@dataclass(frozen=True)
class Endpoint:
    """Where to send a turn."""

    url: str
    token: str | None
    #: the token is the kernel's JupyterHub API token: a page authenticates with its own Hub login instead
    hub: bool = False


class KernelServer:
    """Starts one in-process nbchat server on first use and stops it at exit.

    ``start`` is the server starter (``start_server_thread``), a seam for
    tests; ``backend`` and ``rate`` choose the backend (the embedded
    ``smollm2`` model by default).
    """

    def __init__(self, backend: str = "smollm2", rate: float = DEFAULT_RATE,
                 start: Callable[[Settings], ServerHandle] | None = None) -> None:
        self.backend = backend
        self.rate = rate
        self._start = start
        self._handle: ServerHandle | None = None
        self._lock = threading.Lock()
        #: seconds the last start took (reported by ``%chat``)
        self.start_seconds: float | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def endpoint(self) -> Endpoint:
        """The running server's endpoint, starting the server on first call."""
        with self._lock:  # a widget task and a cell may ask at once: start one server only
            if self._handle is None:
                self._handle = self._launch()
            return Endpoint(self._handle.url, self._handle.token)

    def _launch(self) -> ServerHandle:
        from ..server.config import Settings

        start = self._start
        if start is None:
            from ..server.serving import start_server_thread

            start = start_server_thread
        began = time.perf_counter()
        handle = start(Settings(host="127.0.0.1", port=0, token=None, backend=self.backend, rate=self.rate))
        self.start_seconds = time.perf_counter() - began
        # A daemon thread would die mid-turn at exit; stopping first ends turns cleanly.
        atexit.register(self.stop)
        return handle

    def preload(self) -> None:
        """Start loading the embedded model now (``%load_ext nbchat``), while the kernel goes on.

        A first turn otherwise waits for the model process to start and load (~0.4 s of CPU, over
        a second on a busy machine) after the server's own start; begun here, it overlaps with
        what the kernel does until the first chat. The server started later shares the process
        (one per model file and settings). Only for the default start of the embedded model.
        """
        if self.backend != "smollm2" or self._start is not None or os.environ.get(ENV_URL) or self.running:
            return
        from ..backends import create_backend
        from ..backends.gguf import GGUFBackend

        backend = create_backend(self.backend)
        if isinstance(backend, GGUFBackend):
            backend.preload()

    def admit_origin(self, origin: str) -> bool:
        """Let pages from ``origin`` (``http(s)://host[:port]``) stream from the running server directly.

        A browser-direct widget's page is served by Jupyter, not by this server: without this its
        requests would be refused as cross-origin. Returns whether the origin was admitted.
        """
        from urllib.parse import urlsplit

        from ..server.app import admit_origin

        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            return False
        with self._lock:
            if self._handle is None:
                return False
            admit_origin(self._handle.app, origin)
        return True

    def stop(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            atexit.unregister(self.stop)
            handle.stop()


_default: KernelServer | None = None
_default_lock = threading.Lock()


def kernel_server() -> KernelServer:
    """This process's in-kernel server (made on first call, started on first use).

    The kernel process is the scope of the server it owns: one port, one token, one model for the
    magic and all the widgets. A server handed in explicitly (``kernel_server=``) still wins.
    """
    global _default
    with _default_lock:  # a widget made from a thread and a cell may ask at once
        if _default is None:
            _default = KernelServer()
        return _default


def set_kernel_server(server: KernelServer | None) -> KernelServer | None:
    """Replace this process's in-kernel server (``None``: a fresh one on next use); returns the old one.

    For tests and embedders that want another backend; the old server is not stopped.
    """
    global _default
    with _default_lock:
        old, _default = _default, server
    return old


def starts_kernel_server(server: str | None, kernel: KernelServer) -> bool:
    """A turn for ``server`` will start the kernel's own server first (no server named, no ``NBCHAT_URL``,
    the kernel's not running yet): what the magic and the direct widget's page say meanwhile."""
    return not (server or os.environ.get(ENV_URL) or kernel.running)


def resolve_endpoint(server: str | None, token: str | None, kernel: KernelServer) -> Endpoint:
    """The endpoint for a turn: the given server, else ``NBCHAT_URL``, else the kernel's own."""
    if server:
        return Endpoint(server, token if token is not None else os.environ.get(ENV_TOKEN))
    env_url = os.environ.get(ENV_URL)
    if env_url:
        return environment_endpoint(env_url, token)
    endpoint = kernel.endpoint()
    return endpoint if token is None else Endpoint(endpoint.url, token)


def environment_endpoint(url: str, token: str | None) -> Endpoint:
    """The server ``NBCHAT_URL`` names, with the given token, else ``NBCHAT_TOKEN``, else the Hub's.

    ``NBCHAT_TOKEN`` set (even empty) wins over the Hub's token: an operator who sets it means it.
    """
    if token is not None:
        return Endpoint(url, token)
    if ENV_TOKEN in os.environ:
        return Endpoint(url, os.environ[ENV_TOKEN])
    hub_token = os.environ.get(ENV_HUB_TOKEN)
    if hub_token:
        return Endpoint(url, hub_token, hub=True)
    return Endpoint(url, None)


def describe_destination(server: str | None, token: str | None) -> str:
    """Where a turn would go and with which token, in words, without starting anything (``%chat``)."""
    if server:
        return f"{server} (named in the cell or with %chat)"
    url = os.environ.get(ENV_URL)
    if not url:
        return "the kernel's own server (started on first use)"
    endpoint = environment_endpoint(url, token)
    whose = ("the kernel's JupyterHub token" if endpoint.hub else "the token given" if token is not None
             else f"${ENV_TOKEN}" if ENV_TOKEN in os.environ else "no token")
    return f"{url} (${ENV_URL}, with {whose})"


@contextlib.contextmanager
def hub_refusal_explained(endpoint: Endpoint) -> Iterator[None]:
    """A refusal of the Hub's token says what the Hub's operator must grant; other errors pass as they are."""
    try:
        yield
    except AuthError as exc:
        if not endpoint.hub:
            raise
        raise AuthError(f"{exc}. The kernel authenticated with its {ENV_HUB_TOKEN} ({ENV_URL} names the Hub's "
                        "nbchat service): the Hub must grant this user, and the scopes of the single-user "
                        "server's token, access:services!service=nbchat (see the JupyterHub section of "
                        "docs/deployment.md), or set NBCHAT_TOKEN") from exc
