"""Trimming a conversation too long for the model's context: its oldest exchanges go.

A notebook's conversation grows with every cell and is sent whole each turn;
refusing it once it passes the context would end the conversation. Instead the
oldest exchanges are dropped (the system prompt and the new message stay) and
the turn says how many, so the user sees it.
"""

from __future__ import annotations

from collections.abc import Callable

#: exchanges are dropped this many at a time, so that the next turns drop the same ones and find
#: their prompt's start still evaluated (one more dropped per turn would change it every turn)
TRIM_STEP = 4

Prompt = Callable[[list[dict[str, str]]], tuple[list[int], list[str]]]


def fit(prompt: Prompt, messages: list[dict[str, str]], n_ctx: int,
        reserve: int) -> tuple[list[int], list[str], int]:
    """The prompt's tokens and stop strings (from ``prompt``), with the oldest exchanges dropped
    until ``reserve`` tokens are left for the answer in ``n_ctx``; and how many were dropped.

    The system prompt and the last user message always stay: a prompt still too long after
    every other exchange went is returned as it is, for the caller to refuse.
    """
    tokens, stop = prompt(messages)
    if len(tokens) + reserve <= n_ctx:
        return tokens, stop, 0
    head = 1 if messages and messages[0].get("role") == "system" else 0
    starts = [i for i in range(head, len(messages) - 1) if messages[i].get("role") == "user"]
    for dropped in (*range(TRIM_STEP, len(starts), TRIM_STEP), len(starts)):
        kept = messages[:head] + messages[starts[dropped] if dropped < len(starts) else -1:]
        tokens, stop = prompt(kept)
        if len(tokens) + reserve <= n_ctx:
            return tokens, stop, dropped
    return tokens, stop, len(starts)
