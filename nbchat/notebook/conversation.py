"""The conversation the magic and the widget share: its messages, its
defaults (:class:`~nbchat.notebook.options.ChatOptions`), and how a new user
message becomes a :class:`~nbchat.wire.events.TurnRequest`.

A conversation is an object, never module state: each ``%%chat`` magic
instance owns one, and a widget made with ``%chat widget`` shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..wire.events import Message, Status, TurnRequest
from .options import ChatOptions
from .provenance import ServerInfo, describe


@dataclass(frozen=True)
class Exchange:
    """One finished turn: what was asked, what came back, how it ended."""

    user: str
    answer: str
    status: str
    #: where the answer came from (see :mod:`nbchat.notebook.provenance`); never holds a token
    provenance: dict[str, Any] | None = None


class Conversation:
    """The messages so far, oldest first, plus the defaults for the next turn."""

    def __init__(self, options: ChatOptions | None = None) -> None:
        self.options = options or ChatOptions()
        self.exchanges: list[Exchange] = []
        #: the backend and model behind each server URL, for the provenance of answers
        self.server_info = ServerInfo()

    def __len__(self) -> int:
        return len(self.exchanges)

    @property
    def messages(self) -> list[Message]:
        """The history as the model sees it (without the system prompt)."""
        out: list[Message] = []
        for exchange in self.exchanges:
            out += [Message("user", exchange.user), Message("assistant", exchange.answer)]
        return out

    @property
    def last_answer(self) -> str | None:
        return self.exchanges[-1].answer if self.exchanges else None

    def request(self, text: str, options: ChatOptions | None = None) -> TurnRequest:
        """The request for a new user message, carrying the history and the system prompt."""
        opts = options or self.options
        system = (Message("system", opts.system),) if opts.system else ()
        return TurnRequest(user_message=Message("user", text), conversation=(*system, *self.messages),
                           temperature=opts.temperature, max_tokens=opts.max_tokens, model=opts.model)

    def record(self, user: str, answer: str, status: Status | str,
               provenance: dict[str, Any] | None = None) -> bool:
        """Keep a finished turn in the history; returns whether it was kept.

        A turn that produced nothing (an error, a rejected temperature) is not
        kept: the next turn would otherwise send two user messages in a row.
        An interrupted turn keeps its partial answer, as the user saw it.
        """
        if not answer:
            return False
        self.exchanges.append(Exchange(user, answer, str(status), provenance))
        return True

    def reset(self) -> None:
        self.exchanges.clear()

    def transcript(self) -> str:
        """The history as plain text, for ``%chat history``."""
        if not self.exchanges:
            return "(no messages yet)"
        lines: list[str] = []
        if self.options.system:
            lines.append(f"system: {self.options.system}")
        for exchange in self.exchanges:
            lines += [f"user: {exchange.user}", f"assistant: {exchange.answer}"]
            if exchange.provenance is not None:
                lines.append(f"  ({describe(exchange.provenance)})")
            elif exchange.status != Status.DONE.value:
                lines.append(f"  ({exchange.status})")
        return "\n".join(lines)
