"""A backend over a GGUF model file: llama.cpp in a supervised model process.

Turns wait in the model's FIFO (:mod:`.model_process`), at most
``queue_size`` per backend (the next one gets
:class:`~nbchat.wire.errors.QueueFull`); a cancelled or closed
:meth:`GGUFBackend.generate` stops its job at once. The settings of the model
process come from the arguments, else from the environment (``NBCHAT_THREADS``,
``NBCHAT_CACHE_MB``, ``NBCHAT_EXACT_CACHE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ..wire.errors import BackendError, QueueFull
from .base import LENGTH, Backend, Finish, GenerationRequest, Trimmed
from .cpu import available_cores
from .kv_states import DEFAULT_CACHE_MB
from .model_process import Done, Failed, Item, Job, ModelProcess, shared_model
from .worker_process import ModelKey

DEFAULT_N_CTX = 4096
#: the environment variables for the kept conversations' memory (MiB) and for exact reuse only
ENV_CACHE_MB = "NBCHAT_CACHE_MB"
ENV_EXACT = "NBCHAT_EXACT_CACHE"
#: the first bytes of every GGUF file
GGUF_MAGIC = b"GGUF"


def gguf_problem(path: Path) -> str | None:
    """What makes ``path`` unusable as a model file (missing, unreadable, not GGUF); None when it looks right."""
    try:
        with path.open("rb") as file:
            magic = file.read(len(GGUF_MAGIC))
    except FileNotFoundError:
        return f"{path} does not exist"
    except IsADirectoryError:
        return f"{path} is a directory, not a GGUF file"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    if magic != GGUF_MAGIC:
        return f"{path} is not a GGUF file (it does not begin with {GGUF_MAGIC.decode()})"
    return None


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



class GGUFBackend(Backend):
    """A GGUF model file run by llama.cpp in a supervised model process; one generation at a time, FIFO."""

    name = "gguf"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
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
        self.model_path = Path(model_path).expanduser() if model_path else None
        self.n_threads = n_threads or default_threads()
        self.queue_size = queue_size
        self.n_ctx = n_ctx
        self._jobs: set[Job] = set()

    def gguf_path(self) -> Path:
        """The model file (a subclass may find one when none was named)."""
        if self.model_path is None:
            raise BackendError("no model file was named: give the path of a GGUF file")
        return self.model_path

    @property
    def model_name(self) -> str:
        """The model file's name without its suffix."""
        return self.gguf_path().stem

    @property
    def model(self) -> ModelProcess:
        """The shared model process's supervisor (resolving the file, but not starting it)."""
        path = self.gguf_path().resolve()
        return shared_model(ModelKey(path, self.n_threads, self.n_ctx, self.cache_mb, self.exact))

    async def start(self) -> None:
        """Start the model process and load the model, so the first turn does not wait for it."""
        problem = gguf_problem(self.gguf_path())
        if problem:
            raise BackendError(f"cannot load the model: {problem}")
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

    def preload(self) -> None:
        """Start the model process and its load now, in the background, for a server that starts later
        (its :meth:`start` then finds the process loaded or loading). Nothing waits for it; a
        missing file is said by the first turn, as without this."""
        try:
            if gguf_problem(self.gguf_path()):
                return
            model = self.model
        except BackendError:
            return

        def load() -> None:
            with contextlib.suppress(BackendError):
                model.ensure_process()

        model.submit(load)

    async def aclose(self) -> None:
        """Stop this backend's running and queued turns; the model process stays for the host process."""
        for job in list(self._jobs):
            self.model.interrupt(job)

    def _admit(self, job: Job) -> None:
        waiting = sum(1 for j in self._jobs if not j.started.is_set())
        if waiting >= self.queue_size:
            raise QueueFull(f"the model is busy and {waiting} turns are already waiting; try again shortly")
        self._jobs.add(job)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish | Trimmed]:
        model = self.model
        if request.max_tokens is not None and request.max_tokens <= 0:
            yield LENGTH  # llama.cpp would read 0 as "no limit"
            return
        items: asyncio.Queue[Item] = asyncio.Queue()
        job = Job(model.new_id(), request, emit=_emitter(asyncio.get_running_loop(), items), sampling=self.sampling)
        self._admit(job)
        model.submit(lambda: model.run(job))
        finished = False
        try:
            while not isinstance(item := await items.get(), Done):
                if isinstance(item, Failed):
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


def _emitter(loop: asyncio.AbstractEventLoop, items: asyncio.Queue[Item]) -> Callable[[Item], bool]:
    """Hands items from the supervisor thread to the loop; False once the loop is closed."""

    def emit(item: Item) -> bool:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:
            return False
        return True

    return emit
