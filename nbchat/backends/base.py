"""The backend interface: what the turn manager needs from a model.

A backend turns a :class:`GenerationRequest` into an async iterator of text
pieces. It ends in one of three ways:

- it simply stops: the answer is complete (``[DONE]``);
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

from ..wire.contract import DEFAULT_TEMPERATURE
from ..wire.events import Message


class Finish(enum.Enum):
    LENGTH = "length"


LENGTH = Finish.LENGTH


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: list[Message]
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int | None = None
    model: str | None = None


class Backend(abc.ABC):
    """A source of answer pieces. One instance serves every turn of a server."""

    #: short name used on the command line (``--backend``)
    name: str = "backend"

    @property
    @abc.abstractmethod
    def model_name(self) -> str:
        """The model id reported by /health and /v1/models."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        """Yield the answer's pieces, then optionally :data:`LENGTH`."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load what is needed before the first turn (called once, at server start)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model or connection pool (called once, at server shutdown)."""
