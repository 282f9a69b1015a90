"""The backend interface: what the turn manager needs from a model.

A backend turns a :class:`GenerationRequest` into an async iterator of text
pieces. It ends in one of three ways:

- it simply stops: the answer is complete (``[DONE]``);
- before its first piece it may yield a :class:`Trimmed` notice (the history was shortened);
- it yields :data:`LENGTH` last: it stopped at ``max_tokens`` or at the
  model's context limit (``[TOKENS]``);
- it raises :class:`~nbchat.wire.errors.BackendError` (``[ERROR]`` with its message).

Cancellation is the stop signal: the turn manager cancels the task iterating
the backend (an interrupt, a vanished client, a model timeout) and calls
``aclose()`` on the iterator, so a backend must release its model or upstream
request in a ``finally`` and must not swallow ``CancelledError``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..wire.events import Message


class Finish(enum.Enum):
    LENGTH = "length"


LENGTH = Finish.LENGTH


@dataclass(frozen=True, slots=True)
class Trimmed:
    """Yielded before the first piece: the oldest ``exchanges`` of the conversation were
    dropped so that it fits the model's context."""

    exchanges: int


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: list[Message]
    #: None: the caller set none; the backend uses its :attr:`Backend.sampling` default
    temperature: float | None = None
    max_tokens: int | None = None
    model: str | None = None


class Backend(abc.ABC):
    """A source of answer pieces. One instance serves every turn of a server."""

    #: short name used on the command line (``--backend``)
    name: str = "backend"
    #: how the backend samples what a request leaves unset (``temperature``, ``top_p``,
    #: ``repeat_penalty``); empty: the model's or the upstream's own defaults. /health reports it.
    sampling: dict[str, float] = {}  # noqa: RUF012 - read only, replaced (never mutated) by subclasses

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """The model id reported by /health and /v1/models."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish | Trimmed]:
        """Yield the answer's pieces, then optionally :data:`LENGTH`."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load what is needed before the first turn (called once, at server start)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model or connection pool (called once, at server shutdown)."""
