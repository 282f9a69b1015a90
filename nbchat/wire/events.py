"""The event model every layer shares.

A turn produces a sequence of :class:`Chunk` events followed by exactly one
:class:`End`. The server turns backend output into these events, each
transport only encodes them, and each client decodes them back into the same
objects, so the same assertions hold over every transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from .contract import DEFAULT_MAX_TOKENS
from .errors import TurnError

Role: TypeAlias = Literal["system", "user", "assistant"]


class Status(str, enum.Enum):
    """The one status that ends every turn; values are the exact wire strings."""

    DONE = "[DONE]"
    TOKENS = "[TOKENS]"
    INTERRUPTED = "[INTERRUPTED]"
    MODEL_TIMEOUT = "[MODEL_TIMEOUT]"
    TEMPERATURE_THRESHOLD = "TEMPERATURE_THRESHOLD"
    ERROR = "[ERROR]"

    def __str__(self) -> str:
        return self.value


STATUS_STRINGS: frozenset[str] = frozenset(s.value for s in Status)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation."""

    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """What a client asks for: the same JSON for every endpoint that starts a turn."""

    user_message: Message
    conversation: tuple[Message, ...] = ()
    #: None: not set by the caller, so not sent; the backend's own default applies
    temperature: float | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    model: str | None = None
    uid: str | None = None
    #: the answer ends before the first of these strings (none of it is sent), with [DONE]
    stop: tuple[str, ...] = ()

    @property
    def messages(self) -> list[Message]:
        """The conversation followed by the new user message, as a backend sees it."""
        return [*self.conversation, self.user_message]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A machine-readable code and a message that says what to do next."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Chunk:
    """The next piece of the answer.

    ``server_time`` is the server's wall-clock emit time (seconds since the
    epoch) when the record carried one; ``received`` is the client's
    wall-clock receive time, so on one host their difference is the one-way
    latency of the transport.
    """

    content: str
    seq: int
    server_time: float | None = None
    received: float = field(default=0.0, compare=False)
    #: on a turn's first chunk: how many of the oldest exchanges the server dropped to fit the context
    trimmed: int = 0


@dataclass(frozen=True, slots=True)
class End:
    """The status that ends a turn, with the error record that precedes ``[ERROR]``."""

    status: Status
    error: ErrorInfo | None = None
    received: float = field(default=0.0, compare=False)
    #: how many of the oldest exchanges the server dropped so the conversation fit its model's context
    trimmed: int = 0

    @property
    def ok(self) -> bool:
        """The answer is complete: ``[DONE]``, or ``[TOKENS]`` (it stopped at its token limit)."""
        return self.status in (Status.DONE, Status.TOKENS)

    def raise_for_status(self) -> End:
        """Return this End when :attr:`ok`; raise :class:`~nbchat.wire.errors.TurnError` otherwise."""
        if self.ok:
            return self
        detail = f": {self.error.message}" if self.error is not None and self.error.message else ""
        raise TurnError(f"the turn ended with {self.status.value}{detail}", status=self.status.value,
                        code=self.error.code if self.error is not None else None)


Event: TypeAlias = Chunk | End

Item: TypeAlias = Chunk | ErrorInfo | Status
"""One decoded wire item, before an error record is paired with the status that follows it."""
