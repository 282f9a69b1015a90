"""What the tests share: the token and the message every server test uses,
backends made for the tests, and how to find a free port and stop a child
process. The backends are real backends, only with behaviour chosen to reach
a status (stall, fail) or to observe cancellation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nbchat.backends.base import Backend, Finish, GenerationRequest
from nbchat.bench.procs import cpu_seconds, descendants
from nbchat.server.context import context_of
from nbchat.server.serving import ServerHandle
from nbchat.server.turn_manager import TurnManager
from nbchat.wire.errors import BackendError

TOKEN = "test-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]

# A long message that exercises what breaks naive clients: Chinese and emoji
# (multi-byte UTF-8 split across network chunks), quotes, backslashes, JSON
# escapes, CR/LF and a lone "data: " that a split-on-prefix parser would eat.
LONG_MESSAGE = (
    "你好，世界！这是一个流式输出测试。 Streaming \"quotes\", a \\ backslash, a tab\t,\n"
    "a second line\r\nwith CRLF, emoji 🚀🙂👩‍💻, accents: déjà vu, naïve; data: not a field\n\n"
    "{\"json\": [1, 2]} </script> ` ``` code ``` "
) * 8

ServerFactory = Callable[..., ServerHandle]
"""The ``make_server`` fixture: keyword settings in, a running server out."""


def lab_module(name: str) -> Any:
    """nbformat or nbclient, which come with the lab extra; the test is skipped without it."""
    return pytest.importorskip(name, reason="needs the lab extra: pip install -e '.[lab]'")


class NotebookNode(dict[str, Any]):
    """A notebook's JSON object, its keys read as attributes too (as nbformat's node reads)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def _joined(node: dict[str, Any]) -> NotebookNode:
    # a v4 file may store text as a list of lines; nbformat.read joins them, so does this
    for key in ("source", "text"):
        if isinstance(node.get(key), list):
            node[key] = "".join(node[key])
    data = node.get("data")
    if isinstance(data, dict):
        for mime, value in data.items():
            if isinstance(value, list) and not mime.endswith("json"):
                data[mime] = "".join(value)
    return NotebookNode(node)


def read_notebook(path: Path) -> NotebookNode:
    """A committed v4 notebook as ``nbformat.read(path, as_version=4)`` gives it, without importing nbformat
    (whose schema validator costs seconds at import: the fast layer only reads saved outputs)."""
    node: NotebookNode = json.loads(path.read_text(encoding="utf-8"), object_hook=_joined)
    return node


def turns_of(server: ServerHandle) -> TurnManager:
    """The turns generating in ``server``'s process, as its app's store holds them."""
    return context_of(server.app).store.manager


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes], wait: float = 15) -> None:
    """Terminate a child, kill it if it has not left after ``wait`` seconds, and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class RecordingBackend(Backend):
    """Yields ``count`` numbered pieces every ``interval`` s and records what happened
    (thread-safe: the server runs on another thread's loop)."""

    name = "recording"

    def __init__(self, count: int = 1000, interval: float = 0.02) -> None:
        self.count = count
        self.interval = interval
        self.produced = 0
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    @property
    def model_name(self) -> str:
        return "recording"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        try:
            for i in range(self.count):
                await asyncio.sleep(self.interval)
                self.produced += 1
                yield f"<{i}>"
            self.finished.set()
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise


class StallBackend(Backend):
    """Yields ``before`` pieces, then nothing (until cancelled)."""

    name = "stall"

    def __init__(self, before: int = 1) -> None:
        self.before = before

    @property
    def model_name(self) -> str:
        return "stall"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        for i in range(self.before):
            yield f"piece{i} "
        await asyncio.Event().wait()


class FailBackend(Backend):
    """Yields one piece and then fails."""

    name = "fail"

    @property
    def model_name(self) -> str:
        return "fail"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        yield "partial "
        raise BackendError("the test backend failed on purpose")


class CapturingBackend(Backend):
    """Answers "ok" and keeps every request it was given, to see what a client sent."""

    name = "capturing"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    @property
    def model_name(self) -> str:
        return "capturing"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        self.requests.append(request)
        yield "ok"


def bench_command(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``nbchat bench --quick --no-progress ARGV`` run to its end, its output captured."""
    return subprocess.run([sys.executable, "-m", "nbchat.cli.main", "bench", "--quick", "--no-progress", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (the server and its model process)."""
    return sum(cpu_seconds(p) for p in (pid, *descendants(pid)))


def quiet_after(pid: int, windows: int = 6, seconds: float = 0.5) -> list[float]:
    """CPU seconds the process tree uses in each of ``windows`` windows of ``seconds``, from now.

    Whether computation stopped is read from the smallest and the last of them: one
    busy window on a machine doing other work does not make a stopped model look alive,
    while a model still computing keeps every window busy.
    """
    used = []
    for _ in range(windows):
        before = tree_cpu_seconds(pid)
        time.sleep(seconds)
        used.append(tree_cpu_seconds(pid) - before)
    return used



def processes_running(pid: int, module: bytes) -> list[int]:
    """The processes started by ``pid`` or its descendants whose command line names ``module``."""
    out = []
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if module in command:
            out.append(child)
    return out


def model_processes(pid: int) -> list[int]:
    """The nbchat model processes started by ``pid`` or its descendants."""
    return processes_running(pid, b"nbchat.backends.llama_worker")
