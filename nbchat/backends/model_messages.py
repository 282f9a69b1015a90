"""The messages between the model supervisor and the model process: one JSON object a line.

The supervisor (:mod:`.model_process`) writes commands to the process's standard
input: :class:`Generate` and :class:`Stop`. The process
(:mod:`.llama_worker`) answers on its protocol pipe: :class:`Ready` once the
model is loaded (or :class:`Fatal`), then per job :class:`HistoryTrimmed`,
:class:`Piece`, :class:`Length`, :class:`Failure` and finally exactly one
:class:`End`. Both sides encode and decode here, so a key is written once.
The model process imports this module before it loads llama.cpp: it uses the
standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

# The keys of the JSON objects.
OP = "op"
ID = "id"
MESSAGES = "messages"
MAX_TOKENS = "max_tokens"
READY = "ready"
FATAL = "fatal"
TRIMMED = "trimmed"
PIECE = "piece"
#: tokens sampled since the process started (on pieces and ends)
SAMPLED = "n"
LENGTH = "length"
ERROR = "error"
CODE = "code"
END = "end"
PROMPT = "prompt"
REUSED = "reused"
COPIED_OUT = "copied_out"
#: on an End: tokens sampled after the job's Stop reached the process (absent when none did)
AFTER_STOP = "after_stop"

# The values of OP.
GENERATE = "generate"
STOP = "stop"

#: the sampling settings a job may carry, passed to llama.cpp under these names
SAMPLING_KEYS = ("temperature", "top_p", "repeat_penalty")


@dataclass(frozen=True)
class Generate:
    """Generate an answer to ``messages`` (role and content dicts)."""

    id: int
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    sampling: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    """Stop job ``id`` (at once, or when it starts)."""

    id: int


class ModelInfo(TypedDict, total=False):
    """What a loaded model process reports about itself (``nbchat doctor`` and tests read it)."""

    version: str
    system_info: str
    threads: int
    batch_threads: int
    n_ctx: int
    model: str
    exact: bool
    cache_bytes: int
    #: whether llama.cpp's extra buffer types are on (off when the library carries AMX code)
    extra_buffers: bool
    pid: int


@dataclass(frozen=True)
class Ready:
    """The model is loaded."""

    info: ModelInfo


@dataclass(frozen=True)
class Fatal:
    """The model could not be loaded; the process exits."""

    message: str


@dataclass(frozen=True)
class HistoryTrimmed:
    """The oldest ``exchanges`` of the history were dropped to fit the context."""

    id: int
    exchanges: int


@dataclass(frozen=True)
class Piece:
    """A piece of the answer, as sampled."""

    id: int
    text: str
    sampled: int


@dataclass(frozen=True)
class Length:
    """The answer reached its token limit."""

    id: int


@dataclass(frozen=True)
class Failure:
    """The job failed; ``code`` is a wire error code when there is one."""

    id: int
    message: str
    code: str | None = None


@dataclass(frozen=True)
class End:
    """The job is over; ``prompt`` is its length in tokens, ``reused`` how many were not evaluated again,
    ``copied_out`` how many evaluated states were copied out of the context before its prompt was read,
    ``after_stop`` how many tokens were sampled after a Stop for it reached the process (None: no Stop did)."""

    id: int
    sampled: int
    prompt: int | None = None
    reused: int | None = None
    copied_out: int | None = None
    after_stop: int | None = None

    def prompt_counts(self) -> dict[str, int]:
        """``prompt``, ``reused`` and ``copied_out`` under their keys, those that were reported."""
        counts = ((PROMPT, self.prompt), (REUSED, self.reused), (COPIED_OUT, self.copied_out))
        return {k: v for k, v in counts if v is not None}


Command = Generate | Stop
Reply = Ready | Fatal | HistoryTrimmed | Piece | Length | Failure | End


def _fields(message: Command | Reply) -> dict[str, Any]:
    if isinstance(message, Generate):
        return {OP: GENERATE, ID: message.id, MESSAGES: message.messages, MAX_TOKENS: message.max_tokens,
                **message.sampling}
    if isinstance(message, Stop):
        return {OP: STOP, ID: message.id}
    if isinstance(message, Ready):
        return {READY: message.info}
    if isinstance(message, Fatal):
        return {FATAL: message.message}
    if isinstance(message, HistoryTrimmed):
        return {ID: message.id, TRIMMED: message.exchanges}
    if isinstance(message, Piece):
        return {ID: message.id, PIECE: message.text, SAMPLED: message.sampled}
    if isinstance(message, Length):
        return {ID: message.id, LENGTH: True}
    if isinstance(message, Failure):
        return {ID: message.id, ERROR: message.message, CODE: message.code}
    stopped = {} if message.after_stop is None else {AFTER_STOP: message.after_stop}
    return {ID: message.id, END: True, SAMPLED: message.sampled, **message.prompt_counts(), **stopped}


def encode(message: Command | Reply) -> bytes:
    """One line of the protocol."""
    return json.dumps(_fields(message), ensure_ascii=False).encode() + b"\n"


def _object(line: bytes) -> dict[str, Any]:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"not a message: {line[:80]!r}")
    return data


def decode_command(line: bytes) -> Command:
    """A command line as written by :func:`encode`; ValueError for anything else."""
    try:
        return _command(_object(line))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a command: {line[:80]!r}") from exc


def decode_reply(line: bytes) -> Reply:
    """A reply line as written by :func:`encode`; ValueError for anything else."""
    try:
        return _reply(_object(line))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a reply: {line[:80]!r}") from exc


def _command(data: dict[str, Any]) -> Command:
    if data.get(OP) == GENERATE:
        sampling = {k: float(data[k]) for k in SAMPLING_KEYS if data.get(k) is not None}
        max_tokens = data.get(MAX_TOKENS)
        return Generate(int(data[ID]), list(data[MESSAGES]), None if max_tokens is None else int(max_tokens),
                        sampling)
    if data.get(OP) == STOP:
        return Stop(int(data[ID]))
    raise KeyError(OP)


def _reply(data: dict[str, Any]) -> Reply:
    if READY in data:
        return Ready(cast(ModelInfo, dict(data[READY])))
    if FATAL in data:
        return Fatal(str(data[FATAL]))
    job = int(data[ID])
    if PIECE in data:
        return Piece(job, str(data[PIECE]), int(data[SAMPLED]))
    if TRIMMED in data:
        return HistoryTrimmed(job, int(data[TRIMMED]))
    if data.get(LENGTH):
        return Length(job)
    if ERROR in data:
        return Failure(job, str(data[ERROR]), data.get(CODE) or None)
    if data.get(END):
        return End(job, int(data[SAMPLED]), data.get(PROMPT), data.get(REUSED), data.get(COPIED_OUT),
                   data.get(AFTER_STOP))
    raise KeyError(END)
