"""The OpenAI-compatible client: ``POST /v1/chat/completions`` with ``stream``
true, decoded by :class:`nbchat.wire.openai.OpenAIItemDecoder` into the same
events as the native transports.

Resume goes through nbchat's own NDJSON endpoint with the turn id from
``X-NBChat-Turn``: OpenAI's protocol has no way to reattach.
"""

from __future__ import annotations

from ..wire.contract import OPENAI_COMPLETIONS_PATH
from ..wire.events import TurnRequest
from ..wire.openai import OpenAIItemDecoder, completion_body
from ._http import AsyncHTTPChatClient, HTTPChatClient, HTTPTransport, Target
from .ndjson import resume_target


class OpenAITransport(HTTPTransport):
    transport = "openai"

    def turn_target(self, request: TurnRequest) -> Target:
        return Target("POST", OPENAI_COMPLETIONS_PATH, OpenAIItemDecoder, body=completion_body(request),
                      headers={"accept": "text/event-stream"})

    def resume_target(self, after: int, turn_id: str | None, uid: str) -> Target:
        return resume_target(after, turn_id, uid)


class OpenAIClient(OpenAITransport, HTTPChatClient):
    """Sync OpenAI-stream client."""


class AsyncOpenAIClient(OpenAITransport, AsyncHTTPChatClient):
    """Async OpenAI-stream client."""
