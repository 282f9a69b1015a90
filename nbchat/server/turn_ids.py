"""Turn ids: made at random, and checked before a store builds a key from one."""

from __future__ import annotations

import secrets

#: the length of a turn id (12 random bytes in URL-safe base64)
TURN_ID_CHARS = 16


def new_turn_id() -> str:
    return secrets.token_urlsafe(12)


def is_turn_id(text: str) -> bool:
    """Whether ``text`` could be a turn id :func:`new_turn_id` made (URL-safe base64, 16 characters).
    A store that builds keys from ids refuses any other text before it names a key: a client's
    ``<id>:log`` would otherwise name the turn's stream instead of its record."""
    return len(text) == TURN_ID_CHARS and text.isascii() and all(c.isalnum() or c in "-_" for c in text)
