"""The supervisor of a model process: a FIFO of generations, run one at a time on one thread.

- One model process (:mod:`.worker_process`) per model file and settings
  (:class:`~.worker_process.ModelKey`), shared by every backend of the host
  process (:func:`shared_model`), serves one generation at a time: jobs wait
  in a FIFO on one supervisor thread, which starts the process when the first
  job needs it, and again after it died.
- The supervisor thread hands the process's replies to whoever submitted the
  job through the job's ``emit`` (the backend's event loop, thread-safely).
- A stop (:meth:`ModelProcess.interrupt`) is sent to the process at once: it
  halts within one token, or between graph nodes while the prompt is
  evaluated. A process that has not ended the job within
  :data:`STOP_DEADLINE` seconds is killed.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..wire.errors import BackendError
from .base import LENGTH, Finish, GenerationRequest, Trimmed
from .model_messages import Failure, Fatal, Generate, HistoryTrimmed, Length, ModelInfo, Piece, Ready, Stop
from .worker_process import ModelKey, WorkerProcess

#: seconds a stopped job may take to end before its process is killed
STOP_DEADLINE = 2.0

log = logging.getLogger("nbchat.backends.model_process")


@dataclass(eq=False)
class Failed:
    """The job failed: ``error`` is raised to whoever waits for it."""

    error: BaseException


class Done:
    """The generation finished (the answer is complete, or it was stopped)."""


Item = str | Finish | Trimmed | Failed | Done


@dataclass(eq=False)
class Job:
    """One generation: run on the supervisor thread, talks to the loop only through ``emit``."""

    id: int
    request: GenerationRequest
    emit: Callable[[Item], bool]
    #: how the model samples what the request leaves unset
    sampling: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    def command(self) -> Generate:
        temperature = self.request.temperature
        sampling = {**self.sampling, **({"temperature": temperature} if temperature is not None else {})}
        return Generate(self.id, [{"role": m.role, "content": m.content} for m in self.request.messages],
                            self.request.max_tokens, sampling)


class ModelProcess:
    """The supervisor of one model file's process: a FIFO of jobs, run on one thread.

    The thread starts the process when the first job needs it, and again after it died.
    """

    def __init__(self, key: ModelKey) -> None:
        self.key = key
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._process: WorkerProcess | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        #: tokens sampled so far by the current process (read by tests and benchmarks)
        self.tokens_sampled = 0
        #: the last job's prompt length and how many of its tokens the process reused (tests, benchmarks)
        self.last_prompt: dict[str, int] = {}
        #: tokens the last job sampled after its Stop reached the model process (None: it was not stopped)
        self.after_stop: int | None = None
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
    def info(self) -> ModelInfo:
        """What the running process reported when it loaded: llama.cpp's version and CPU features."""
        return ModelInfo(**self._process.info) if self._process else {}

    def ensure_process(self) -> WorkerProcess:
        """The running process, started (and loaded) if needed. Supervisor thread only."""
        if self._process is None or not self._process.alive():
            self._process = WorkerProcess(self.key)
            self.tokens_sampled = 0
            try:
                self._process.wait_ready()
            except BackendError:
                self._process = None
                raise
        return self._process

    def run(self, job: Job) -> None:
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
            job.emit(Failed(BackendError(f"the model process misbehaved ({type(exc).__name__}: {exc}); "
                                          "the next question starts a new one")))
        finally:
            job.ended.set()

    def _run_job(self, job: Job) -> None:
        try:
            process = self.ensure_process()
        except BackendError as exc:
            job.emit(Failed(exc))
            return
        process.send(job.command())
        if job.stop.is_set():  # stopped between the check above and the send
            process.send(Stop(job.id))
        while (message := process.read()) is not None:
            if isinstance(message, (Ready, Fatal)) or message.id != job.id:
                continue
            if isinstance(message, Piece):
                self.tokens_sampled = message.sampled
                self._hand(job, message.text)
            elif isinstance(message, HistoryTrimmed):
                self._hand(job, Trimmed(message.exchanges))
            elif isinstance(message, Length):
                self._hand(job, LENGTH)
            elif isinstance(message, Failure):
                error = BackendError(message.message)
                if message.code:
                    error.code = message.code
                job.emit(Failed(error))
            else:
                self.tokens_sampled = message.sampled
                self.last_prompt = message.prompt_counts()
                self.after_stop = message.after_stop
                job.emit(Done())
                return
        self._process = None
        job.emit(Failed(BackendError(process.death())))

    def _hand(self, job: Job, item: str | Finish | Trimmed) -> None:
        if not job.stop.is_set() and not job.emit(item):
            self.interrupt(job)  # the loop is gone: nobody will read the rest

    def interrupt(self, job: Job) -> None:
        """Stop a job now (any thread): the process is told at once, and killed if it has not
        ended the job within STOP_DEADLINE seconds."""
        job.stop.set()
        process = self._process
        if not job.started.is_set() or job.ended.is_set() or process is None:
            return
        process.send(Stop(job.id))
        timer = threading.Timer(STOP_DEADLINE, self._kill_if_running, args=(job, process))
        timer.daemon = True
        timer.start()

    def _kill_if_running(self, job: Job, process: WorkerProcess) -> None:
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


def shared_model(key: ModelKey) -> ModelProcess:
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = ModelProcess(key)
        return _MODELS[key]
