"""The fetch-stream client: ``POST /talkByStream`` starts a turn and answers
NDJSON; ``GET /talkByStream?turn=ID&after=N`` (or ``?uid=UID&after=N``) resumes.

Lines are split on newline bytes by :class:`nbchat.wire.protocol.LineDecoder` and
decoded one whole line at a time by :func:`nbchat.wire.protocol.decode_ndjson_line`.
"""

from __future__ import annotations

from ..wire.contract import NDJSON_PATH
from ..wire.events import TurnRequest
from ..wire.protocol import LineDecoder, decode_ndjson_line, encode_turn_request
from ._common import Item
from ._http import AsyncHTTPChatClient, HTTPChatClient, HTTPTransport, Target


class NDJSONItemDecoder:
    """Sans-I/O: NDJSON bytes in any split -> chunks, error records and the status."""

    def __init__(self) -> None:
        self._lines = LineDecoder()

    def feed(self, data: bytes, received: float) -> list[Item]:
        return self._decode(self._lines.feed(data), received)

    def flush(self, received: float) -> list[Item]:
        # a last line without its newline still counts: the record is whole once the stream ends
        return self._decode(self._lines.flush(), received)

    @staticmethod
    def _decode(lines: list[str], received: float) -> list[Item]:
        items = (decode_ndjson_line(line, received) for line in lines)
        return [item for item in items if item is not None]


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
