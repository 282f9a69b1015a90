"""The embedded model as the model process holds it: llama.cpp, the GGUF's chat template, and
what is evaluated.

:class:`Model` keeps the current conversation's evaluated tokens in llama.cpp's
context and other conversations' states in a bounded store (:mod:`.kv_states`),
so that a turn reads only what its conversation has not evaluated yet. It runs
in the model process (:mod:`.llama_worker`), one job at a time; the benchmark
and tests load it in their own process too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .kv_states import DEFAULT_CACHE_MB, StateStore, common_prefix, load_sequence, save_sequence
from .splice import Spelling, continuing, spell

if TYPE_CHECKING:
    from llama_cpp import Llama

    from .model_messages import ModelInfo


def block_cuts(length: int) -> list[int]:
    """Fixed positions where a prompt of ``length`` tokens is cut into batches: every 8
    tokens up to 64 (the system prompt and short turns share most of their start),
    then every 64 (long conversations, in batches big enough to stay fast)."""
    return [c for c in (*range(8, 64, 8), *range(64, length + 1, 64)) if c <= length]


#: a state the new prompt leaves behind is kept when it holds at least this many tokens the new prompt
#: does not share (copying a token's KV entries out costs ~23 KB and microseconds; re-reading it, ~3 ms)
KEEP_MIN_TOKENS = 8
#: the most tokens read ahead for the next turn after an answer (:meth:`Model.prime`)
PRIME_MAX = 16


class Stopped(Exception):
    """The running job was stopped while llama.cpp evaluated its prompt."""


@contextlib.contextmanager
def model_params_without_extra_buffers(llama_cpp: Any) -> Iterator[None]:
    """Load with ``use_extra_bufts = False``: llama.cpp's AMX path lives in those extra buffer
    types and faults on current Intel CPUs. ``Llama()`` has no argument for this field, so the
    default-params function it calls is wrapped for the duration of the load (this process only
    ever loads one model, on one thread)."""
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        module.llama_model_default_params = original


class Model:
    """The loaded model, its chat template, the current conversation's evaluated tokens and the kept ones."""

    def __init__(self, path: str, n_threads: int, n_ctx: int, *, cache_mb: float = DEFAULT_CACHE_MB,
                 exact: bool = False) -> None:
        import llama_cpp
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from .cpu import check_library, prompt_threads

        self.system_info = llama_cpp.llama_print_system_info().decode()
        # A library that carries AMX code (a -march=native build on an AMX CPU) runs safely
        # only with the extra buffer types off; any other library keeps them (weight repacking).
        self.extra_buffers = not check_library(self.system_info, ()).amx
        load = contextlib.nullcontext() if self.extra_buffers else model_params_without_extra_buffers(llama_cpp)
        with load:
            # Decoding uses n_threads; a prompt's big batches use every core.
            self.llama: Llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads,
                                      n_threads_batch=prompt_threads(n_threads), verbose=False)
        self.version = llama_cpp.__version__
        self.n_ctx, self.n_threads, self.path = n_ctx, n_threads, path
        llama = self.llama
        eos = llama.detokenize([llama.token_eos()], special=True).decode()
        bos = llama.detokenize([llama.token_bos()], special=True).decode()
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{path} has no chat template")
        self.formatter: Any = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._pieces: dict[int, bytes] = {}
        self._spelled: dict[tuple[int, ...], Spelling] = {}
        self._cached: list[int] = []  # the tokens whose KV entries sequence 0 holds and a prompt may reuse
        #: other conversations' evaluated states, least recently used first
        self.kept = StateStore(int(cache_mb * 1024 * 1024))
        #: keep only KV entries a fresh evaluation would make (greedy answers independent of the cache)
        self.exact = exact
        self.tokens_sampled = 0
        #: states copied out of the context so far (a job reports how many it waited for)
        self.copies_out = 0
        #: the last prompt's length in tokens and how many of them were reused (reported with its End)
        self.last_prompt: tuple[int | None, int | None] = (None, None)
        #: whether the last prompt continued the current state (neither kept it for another nor restored one)
        self.continued = False
        self._abort: Callable[[], bool] = lambda: False
        # Kept on the instance: llama.cpp holds only the C pointer.
        self._abort_callback = llama_cpp.ggml_abort_callback(lambda _data: self._abort())

    def info(self) -> ModelInfo:
        return {"version": self.version, "system_info": self.system_info, "threads": self.n_threads,
                "batch_threads": self.llama.n_threads_batch, "n_ctx": self.n_ctx, "model": self.path,
                "exact": self.exact, "cache_bytes": self.kept.limit, "extra_buffers": self.extra_buffers,
                "pid": os.getpid()}

    def prompt(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """Token ids of the chat prompt (the GGUF's own template) and its stop strings.

        Unless ``exact``, the text an evaluated sequence spells keeps that sequence's tokens
        (:mod:`.splice`): an earlier answer stays the tokens the model generated.
        """
        formatted = self.formatter(messages=messages)
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        text, add_bos = formatted.prompt.encode(), not formatted.added_special
        tokens = None
        if not self.exact:
            head = self.llama.tokenize(b"", add_bos=add_bos, special=True)
            tokens = continuing(text, head, self._spellings(head),
                                lambda rest: self.llama.tokenize(rest, add_bos=False, special=True))
        if tokens is None:
            tokens = self.llama.tokenize(text, add_bos=add_bos, special=True)
        return tokens, [s for s in stop if s]

    def _spellings(self, head: list[int]) -> list[Spelling]:
        """The evaluated sequences (the current one and the kept ones) that start with ``head``,
        spelled out past it; remembered while they are evaluated (a turn asks two or three times)."""
        sequences = [s for s in (tuple(self._cached), *self.kept.sequences()) if s and list(s[:len(head)]) == head]
        known, self._spelled = self._spelled, {}
        for tokens in sequences:
            self._spelled[tokens] = known.get(tokens) or spell(tokens[len(head):], self._piece)
        return list(self._spelled.values())

    def _piece(self, token: int) -> bytes:
        """The bytes a token spells, special tokens included (kept: a turn asks for thousands)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.llama.detokenize([token], special=True)
        return piece

    @contextlib.contextmanager
    def abortable(self, should_stop: Callable[[], bool]) -> Iterator[None]:
        """llama.cpp asks ``should_stop`` between graph nodes while this block runs.

        Only around prompt evaluation: a batch of hundreds of tokens takes seconds on two
        cores, and a stop must not wait for it. During decoding the stop is checked per
        token instead, where a Python call per graph node would cost more than it saves.
        """
        import llama_cpp

        ctx = self.llama.ctx
        self._abort = should_stop
        llama_cpp.llama_set_abort_callback(ctx, self._abort_callback, ctypes.c_void_p(0))
        try:
            yield
        finally:
            llama_cpp.llama_set_abort_callback(ctx, llama_cpp.ggml_abort_callback(0), ctypes.c_void_p(0))
            self._abort = lambda: False

    def prefill(self, tokens: list[int], should_stop: Callable[[], bool]) -> None:
        """Evaluate the prompt from the longest prefix already evaluated, through its last token.

        That prefix is the current conversation's (its prompt and, unless
        ``exact``, the answer's tokens as they were generated) or a kept one's
        (:mod:`.kv_states`). With ``exact``, greedy answers must not depend on
        what came before: llama.cpp's batches split differently give slightly
        different floats (measured: it changed 1 answer in 25 prompt pairs), so
        the prompt is cut only at fixed positions and only whole blocks are
        kept, whose KV entries are bit for bit those a fresh evaluation makes;
        the answer's tokens are then read again, as the next prompt renders them.

        The last token is read in the same batch as the tokens before it: llama-cpp-python
        then samples the first token from that batch's logits (the whole prompt is evaluated
        and nothing was restored since), instead of a decode of its own for the last token,
        which cost one more pass over the weights (~15 ms of CPU on SmolLM2) every turn.
        """
        keep = self._restore(tokens)
        self._truncate(tokens, keep)
        self.last_prompt = (len(tokens), keep)
        # _usable never reuses the last token, so there is always a batch, and its logits are live
        cuts = [c for c in block_cuts(len(tokens) - 1) if c > keep] if self.exact else []
        with self.abortable(should_stop):
            for end in (*cuts, len(tokens)):
                try:
                    self.llama.eval(tokens[keep:end])
                except RuntimeError:
                    if should_stop():  # llama_decode returned "aborted"
                        self._truncate(tokens, keep)
                        raise Stopped from None
                    raise
                keep = end
                if not self.exact or end in cuts:  # the tail past the last cut is not what a fresh read makes
                    self._cached = tokens[:end]

    def _usable(self, shared: int, length: int) -> int:
        """How much of a shared prefix a prompt of ``length`` tokens reuses: never its last token
        (it yields the first logits); with ``exact``, only up to a block cut."""
        limit = min(shared, length - 1)
        if self.exact:
            return max((c for c in block_cuts(length - 1) if c <= limit), default=0)
        return max(limit, 0)

    def _truncate(self, tokens: list[int], keep: int) -> None:
        """Keep the first ``keep`` tokens' KV entries; llama.cpp's next eval drops the rest."""
        self._cached = tokens[:keep]
        self.llama.n_tokens = keep
        self._drop_entries_from(keep)

    def _restore(self, tokens: list[int]) -> int:
        """Make the context hold the evaluated state sharing most with ``tokens``: the current one
        or a kept one. A current state the prompt leaves is kept first. Returns how many of
        ``tokens`` the context now holds evaluated."""
        import llama_cpp

        current = self._usable(common_prefix(self._cached, tokens), len(tokens))
        saved, shared = self.kept.best(tokens)
        if saved is None or (usable := self._usable(shared, len(tokens))) <= current:
            self.continued = len(self._cached) - current < KEEP_MIN_TOKENS
            if not self.continued:
                self._stash()
            return current
        self.continued = False
        self._stash()
        self.kept.take(saved)
        self._truncate([], 0)
        loaded = load_sequence(llama_cpp, self.llama.ctx, saved)
        self.kept.release(saved)
        if not loaded:
            return 0
        n = len(saved.tokens)
        self.llama.input_ids[:n] = saved.tokens
        self.llama.n_tokens = n
        self._cached = list(saved.tokens)
        return usable

    def _drop_entries_from(self, position: int) -> None:
        """Free the KV cells of every position from ``position`` on."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.llama.ctx), -1, position, -1)

    def _stash(self) -> None:
        """Copy the current state into the kept ones (only its trusted tokens' entries), unless
        they hold it already (it was kept between turns, :meth:`keep_current`)."""
        import llama_cpp

        if len(self._cached) < KEEP_MIN_TOKENS or self.kept.limit <= 0 or self.kept.touch(self._cached):
            return
        self._drop_entries_from(len(self._cached))
        self.llama.n_tokens = len(self._cached)
        self.kept.put(save_sequence(llama_cpp, self.llama.ctx, self._cached, self.kept))
        self.copies_out += 1

    def keep_current(self) -> None:
        """Between turns, while another conversation's state is kept: copy the current state into
        the kept ones now, so that a turn of another conversation only copies its own state in.

        The copy grows with the conversation (5-13 ms at 1,000 tokens, 23 KB a token), and a
        turn that switches conversations waited for it before its prompt was read. A job that
        arrives meanwhile waits for one copy at most. One conversation alone is never copied
        (nothing would ever load it back).
        """
        current = tuple(self._cached)
        if any(current[:len(kept)] != kept for kept in self.kept.sequences()):
            self._stash()

    def answered(self) -> None:
        """After a generation: unless ``exact``, its prompt and answer tokens are evaluated state."""
        if not self.exact:
            self._cached = self.llama.input_ids[:self.llama.n_tokens].tolist()

    def prime(self, messages: list[dict[str, str]], waiting: Callable[[], bool] = lambda: False) -> bool:
        """Read ahead, after an answer and its End: the tokens the chat template puts between the
        answer (the last of ``messages``) and the next user message's text.

        A continued turn then reads only its own message and the template after it: on
        SmolLM2, 5 of its 20-30 new tokens (``<|im_end|>``, ``\\n``, ``<|im_start|>user\\n``)
        are read while the process would be idle. Not with ``exact`` (only whole blocks are
        kept), and never more than :data:`PRIME_MAX` tokens. A job that arrives meanwhile (in a
        benchmark or a notebook's Run All, a few milliseconds after the End) does not wait for it:
        ``waiting`` aborts the evaluation, as a stop aborts a prompt's. Whether it read tokens.
        """
        if self.exact:
            return False
        probes = [self.prompt([*messages, {"role": "user", "content": text}])[0] for text in ("a", "1")]
        opening = common_prefix(*probes)  # the tokens every next user message starts with
        shared = min(common_prefix(self._cached, probes[0]), opening)
        if not 0 < opening - shared <= PRIME_MAX or waiting():
            return False
        self._truncate(probes[0], shared)
        with self.abortable(waiting):
            try:
                self.llama.eval(probes[0][shared:opening])
            except RuntimeError:
                if not waiting():
                    raise
                self._truncate(probes[0], shared)  # what the aborted batch left is not to be trusted
                return False
        self._cached = probes[0][:opening]
        return True

    def forget(self) -> None:
        """Drop the current state (after a failure left it unknown)."""
        self._cached = []
        self.llama.n_tokens = 0
        self.continued = False
