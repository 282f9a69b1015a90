"""The OpenAI chat-completions wire format, sans-I/O: request parsing and the
``chat.completion.chunk`` / ``chat.completion`` objects nbchat sends.

Only the subset the contract names is read (``messages``, ``temperature``,
``max_tokens``/``max_completion_tokens``, ``stream``,
``stream_options.include_usage``, ``model``); unknown fields are ignored, as
OpenAI-compatible servers commonly do. Chunk objects carry one extension
field, ``x_nbchat: {"seq", "ts"}``, which clients that do not know it ignore.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from .contract import DEFAULT_TEMPERATURE
from .errors import RequestError
from .events import Chunk, End, Message, Role, Status, TurnRequest

FINISH_REASONS = {Status.DONE: "stop", Status.TOKENS: "length"}
# How a turn that ended without an answer is reported inside a stream.
ERROR_CODES = {Status.INTERRUPTED: "interrupted", Status.MODEL_TIMEOUT: "model_timeout",
               Status.ERROR: "backend_error", Status.TEMPERATURE_THRESHOLD: "temperature_threshold"}


# OpenAI's newer "developer" role plays the part of "system".
_ROLES: dict[Any, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class OpenAIRequestError(RequestError):
    """A 400 in OpenAI's error shape, naming the offending parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, code="invalid_request_error", status=400)
        self.param = param


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    turn: TurnRequest
    stream: bool
    include_usage: bool
    model: str | None


def openai_error(message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: only text parts carry meaning here
        texts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "".join(t for t in texts if isinstance(t, str))
    raise OpenAIRequestError(f"{where}.content must be a string or a list of text parts", where)


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise OpenAIRequestError("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise OpenAIRequestError(f"messages[{i}] must be an object", "messages")
        role = _ROLES.get(m.get("role"))
        if role is None:
            raise OpenAIRequestError(f"messages[{i}].role must be system, user, assistant or developer", "messages")
        out.append(Message(role=role, content=_content(m.get("content"), f"messages[{i}]")))
    return out


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OpenAIRequestError("'max_tokens' must be a positive integer", "max_tokens")
    return value


def _temperature(body: dict[str, Any]) -> float:
    value = body.get("temperature")
    if value is None:
        return DEFAULT_TEMPERATURE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OpenAIRequestError("'temperature' must be a number", "temperature")
    if not 0 <= value <= 2:
        raise OpenAIRequestError(f"{value} is not a valid temperature: it must be between 0 and 2", "temperature")
    return float(value)


def parse_completion_request(body: Any) -> CompletionRequest:
    if not isinstance(body, dict):
        raise OpenAIRequestError("the body must be a JSON object")
    messages = _messages(body.get("messages"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise OpenAIRequestError("'model' must be a string", "model")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise OpenAIRequestError("'stream_options' must be an object", "stream_options")
    turn = TurnRequest(user_message=messages[-1], conversation=tuple(messages[:-1]),
                       temperature=_temperature(body), max_tokens=_max_tokens(body), model=model)
    return CompletionRequest(turn=turn, stream=bool(body.get("stream", False)),
                             include_usage=bool(options.get("include_usage", False)), model=model)


class CompletionEncoder:
    """Builds the objects of one completion, stream or not, for one turn."""

    def __init__(self, turn_id: str, model: str) -> None:
        self.id = f"chatcmpl-{turn_id}"
        self.model = model
        self.created = int(time.time())
        self.completion_tokens = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

    def role_chunk(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def content_chunk(self, chunk: Chunk) -> dict[str, Any]:
        self.completion_tokens += 1
        return self._chunk({"content": chunk.content}, None, x_nbchat={"seq": chunk.seq, "ts": chunk.server_time})

    def final_chunk(self, end: End) -> dict[str, Any]:
        """The closing chunk, or the error object a stream ends with when no answer completed."""
        if end.status in FINISH_REASONS:
            return self._chunk({}, FINISH_REASONS[end.status])
        message = end.error.message if end.error else f"the turn ended with {end.status.value}"
        return openai_error(message, type_="server_error", code=ERROR_CODES[end.status])

    def usage(self) -> dict[str, int]:
        # The prompt is not tokenised by every backend, so only completion tokens are counted.
        return {"prompt_tokens": 0, "completion_tokens": self.completion_tokens,
                "total_tokens": self.completion_tokens}

    def usage_chunk(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage()}

    def completion(self, text: str, end: End) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": FINISH_REASONS.get(end.status, "stop")}],
                "usage": self.usage()}
