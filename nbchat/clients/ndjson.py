"""The fetch-stream client: ``POST /talkByStream`` starts a turn and answers
NDJSON; ``GET /talkByStream?turn=ID&after=N`` (or ``?uid=UID&after=N``) resumes.

Lines are split on newline bytes and decoded one whole line at a time by
:class:`nbchat.wire.decoders.NDJSONItemDecoder`.
"""

from __future__ import annotations

from ..wire.contract import NDJSON_PATH
from ..wire.decoders import NDJSONItemDecoder
from ..wire.events import TurnRequest
from ..wire.requests import encode_turn_request
from ._http import AsyncHTTPChatClient, HTTPChatClient, HTTPTransport, Target


def resume_target(after: int, turn_id: str | None, uid: str) -> Target:
    """The GET that streams a turn's chunks after seq ``after`` (the OpenAI client resumes with it too)."""
    params = {"turn": turn_id} if turn_id else {"uid": uid}
    return Target("GET", NDJSON_PATH, NDJSONItemDecoder, params={**params, "after": str(after)})


class NDJSONTransport(HTTPTransport):
    transport = "stream"

    def turn_target(self, request: TurnRequest) -> Target:
        return Target("POST", NDJSON_PATH, NDJSONItemDecoder, body=encode_turn_request(request))

    def resume_target(self, after: int, turn_id: str | None, uid: str) -> Target:
        return resume_target(after, turn_id, uid)


class NDJSONClient(NDJSONTransport, HTTPChatClient):
    """Sync fetch-stream (NDJSON) client."""


class AsyncNDJSONClient(NDJSONTransport, AsyncHTTPChatClient):
    """Async fetch-stream (NDJSON) client."""
