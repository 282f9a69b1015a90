"""The OpenAI-compatible client: ``POST /v1/chat/completions`` with ``stream``
true, decoded into the same events as the native transports.

Each ``chat.completion.chunk`` with content becomes a :class:`Chunk` (its seq
and server time from nbchat's ``x_nbchat`` extension field, or counted here
when an upstream that is not nbchat leaves it out). ``finish_reason`` ``stop``
/ ``length`` and an error object map to the status, delivered at
``data: [DONE]``. Resume goes through nbchat's own NDJSON endpoint with the
turn id from ``X-NBChat-Turn``: OpenAI's protocol has no way to reattach.
"""

from __future__ import annotations

import json
from typing import Any

from ..wire.contract import OPENAI_COMPLETIONS_PATH
from ..wire.errors import ProtocolError
from ..wire.events import Chunk, ErrorInfo, Status, TurnRequest
from ..wire.sse import SSEDecoder
from ._common import Item
from ._http import AsyncHTTPChatClient, HTTPChatClient, HTTPTransport, Target
from .ndjson import resume_target

DEFAULT_MODEL = "default"
FINISH_STATUS = {"stop": Status.DONE, "length": Status.TOKENS}
# Error codes nbchat puts in the error object a stream ends with; any other code is [ERROR].
ERROR_STATUS = {"interrupted": Status.INTERRUPTED, "model_timeout": Status.MODEL_TIMEOUT,
                "temperature_threshold": Status.TEMPERATURE_THRESHOLD}


def completion_body(request: TurnRequest) -> dict[str, Any]:
    """A turn request as an OpenAI chat-completions body."""
    body: dict[str, Any] = {"model": request.model or DEFAULT_MODEL,
                            "messages": [m.to_dict() for m in request.messages],
                            "temperature": request.temperature, "stream": True}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    return body


class OpenAIItemDecoder:
    """Sans-I/O: a chat-completions event stream in any split -> chunks and the status."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._seq = 0
        self._end: list[Item] = []  # the status (and error) held back until [DONE]
        self._done = False

    def feed(self, data: bytes, received: float) -> list[Item]:
        out: list[Item] = []
        for msg in self._sse.feed(data):
            if msg.event in ("", "message"):
                out.extend(self._message(msg.data, received))
        return out

    def flush(self, received: float) -> list[Item]:
        # Tolerate an upstream that ends the body after its finish_reason without [DONE].
        return [] if self._done else self._take_end()

    def _message(self, data: str, received: float) -> list[Item]:
        if data == "[DONE]":
            if not self._end:
                raise ProtocolError("the completion stream sent [DONE] without a finish_reason or an error")
            self._done = True
            return self._take_end()
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise ProtocolError(f"a completion stream event is not JSON: {data[:80]!r}") from exc
        if not isinstance(obj, dict):
            raise ProtocolError(f"a completion stream event must be an object: {data[:80]!r}")
        if "error" in obj:
            self._end = self._error(obj["error"])
            return []
        return self._choices(obj, received)

    def _choices(self, obj: dict[str, Any], received: float) -> list[Item]:
        out: list[Item] = []
        choices = obj.get("choices") or []
        for choice in choices[:1] if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                raise ProtocolError(f"a completion choice must be an object: {choice!r}")
            delta = choice.get("delta") or {}
            chunk = self._chunk(delta.get("content"), obj.get("x_nbchat"), received)
            if chunk is not None:
                out.append(chunk)
            finish = choice.get("finish_reason")
            if finish:
                self._end = [FINISH_STATUS.get(finish, Status.DONE)]
        return out

    def _chunk(self, content: Any, ext: Any, received: float) -> Chunk | None:
        seq = ext.get("seq") if isinstance(ext, dict) else None
        if not isinstance(content, str) or (not content and seq is None):
            return None  # the opening role chunk, or a chunk with no text
        self._seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else self._seq + 1
        ts = ext.get("ts") if isinstance(ext, dict) else None
        server_time = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
        return Chunk(content=content, seq=self._seq, server_time=server_time, received=received)

    @staticmethod
    def _error(err: Any) -> list[Item]:
        err = err if isinstance(err, dict) else {"message": str(err)}
        code = str(err.get("code") or err.get("type") or "error")
        status = ERROR_STATUS.get(code, Status.ERROR)
        # the native transports carry an error record only with [ERROR]; keep the same events
        info = [ErrorInfo(code=code, message=str(err.get("message", "")))] if status is Status.ERROR else []
        return [*info, status]

    def _take_end(self) -> list[Item]:
        end, self._end = self._end, []
        return end


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
