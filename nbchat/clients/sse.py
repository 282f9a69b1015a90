"""The Server-Sent Events client: ``POST /createSse`` starts a turn, ``GET
/createSse`` with ``Last-Event-ID`` resumes one.

Response bytes go through :class:`nbchat.wire.sse.SSEDecoder` (split on line-break
bytes, UTF-8 decoded per line) and :func:`nbchat.wire.protocol.decode_sse_message`;
nothing here looks inside the raw bytes.
"""

from __future__ import annotations

from ..wire.contract import SSE_PATH
from ..wire.events import TurnRequest
from ..wire.protocol import decode_sse_message, encode_turn_request
from ..wire.sse import SSEDecoder
from ._common import Item
from ._http import AsyncHTTPChatClient, HTTPChatClient, HTTPTransport, Target


class SSEItemDecoder:
    """Sans-I/O: event-stream bytes in any split -> chunks, error records and the status."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()

    def feed(self, data: bytes, received: float) -> list[Item]:
        items = (decode_sse_message(msg, received) for msg in self._sse.feed(data))
        return [item for item in items if item is not None]

    def flush(self, received: float) -> list[Item]:
        # A message is only complete at its blank line; a stream cut before it is incomplete,
        # and the caller reports the missing status.
        return []


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
