"""The Server-Sent Events client: ``POST /createSse`` starts a turn, ``GET
/createSse`` with ``Last-Event-ID`` resumes one.

Response bytes go through :class:`nbchat.wire.decoders.SSEItemDecoder` (split
on line-break bytes, UTF-8 decoded per line); nothing here looks inside the
raw bytes.
"""

from __future__ import annotations

from ..wire.contract import SSE_PATH
from ..wire.decoders import SSEItemDecoder
from ..wire.events import TurnRequest
from ..wire.requests import encode_turn_request
from ._http import AsyncHTTPChatClient, HTTPChatClient, HTTPTransport, Target


class SSETransport(HTTPTransport):
    transport = "sse"

    def turn_target(self, request: TurnRequest) -> Target:
        return Target("POST", SSE_PATH, SSEItemDecoder, body=encode_turn_request(request),
                      headers={"accept": "text/event-stream"})

    def resume_target(self, after: int, turn_id: str | None, uid: str) -> Target:
        params = {"turn": turn_id} if turn_id else {"uid": uid}
        return Target("GET", SSE_PATH, SSEItemDecoder, params=params,
                      headers={"accept": "text/event-stream", "last-event-id": str(after)})


class SSEClient(SSETransport, HTTPChatClient):
    """Sync SSE client."""


class AsyncSSEClient(SSETransport, AsyncHTTPChatClient):
    """Async SSE client."""
