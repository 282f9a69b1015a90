"""The per-turn settings of the notebook layer: transport, server, sampling,
and how a turn's shortened history is named.

Their own module, below the conversation, the footer and the provenance record
that all read them, so none has to import another for them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..wire.contract import DEFAULT_MAX_TOKENS, Transport


@dataclass(frozen=True)
class ChatOptions:
    """Per-turn settings; ``None`` means "the server's (or the environment's) default"."""

    transport: Transport = "ws"
    server: str | None = None
    token: str | None = None
    model: str | None = None
    temperature: float | None = None  # None: not sent; the server samples as suits its model
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    system: str | None = None

    def merged(self, **overrides: Any) -> ChatOptions:
        """A copy with the given options replaced; ``None`` values are ignored (not given)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown chat options: {', '.join(sorted(unknown))}")
        return replace(self, **given)

    def describe(self) -> str:
        token = "set" if self.token else None
        shown: dict[str, Any] = {**{f.name: getattr(self, f.name) for f in fields(self)}, "token": token}
        lines = [f"{name:12} {value!r}" for name, value in shown.items()]
        if self.temperature is None:  # nothing is sent: the backend samples with its own defaults
            lines[list(shown).index("temperature")] = f"{'temperature':12} default (the backend's)"
        return "\n".join(lines)


def trimmed_note(exchanges: int) -> str:
    """What the footer, the widget's stats line and the provenance say of a shortened history."""
    return f"history trimmed: {exchanges} exchange{'' if exchanges == 1 else 's'}"
