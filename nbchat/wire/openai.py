"""The OpenAI chat-completions wire format, sans-I/O, in both directions.

As a server, nbchat parses requests (:func:`parse_completion_request`) and
writes ``chat.completion.chunk`` / ``chat.completion`` objects
(:class:`CompletionEncoder`). As a client (the ``openai`` transport, the
``openai`` upstream backend, the benchmark's reader of llama.cpp's server) it
writes request bodies (:func:`completion_body`), reads stream events
(:func:`parse_stream_event`, :class:`OpenAIItemDecoder`) and error bodies
(:func:`parse_error_body`).

Only the subset the contract names is read (``messages``, ``temperature``,
``max_tokens``/``max_completion_tokens``, ``stream``,
``stream_options.include_usage``, ``model``); unknown fields are ignored, as
OpenAI-compatible servers commonly do. Chunk objects carry one extension
field, ``x_nbchat: {"seq", "ts"}``, which clients that do not know it ignore;
when the history was trimmed to fit the model's context, the first content
chunk, the closing chunk and a non-streamed completion say how many exchanges
went with ``x_nbchat: {"trimmed": N}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from .errors import ProtocolError, RequestError
from .events import Chunk, End, ErrorInfo, Item, Message, Role, Status, TurnRequest
from .requests import bounded_number, parse_max_tokens, parse_stop
from .sse import SSEDecoder

FINISH_REASONS = {Status.DONE: "stop", Status.TOKENS: "length"}
FINISH_STATUS = {reason: status for status, reason in FINISH_REASONS.items()}
# How a turn that ended without an answer is reported inside a stream.
ERROR_CODES = {Status.INTERRUPTED: "interrupted", Status.MODEL_TIMEOUT: "model_timeout",
               Status.ERROR: "backend_error", Status.TEMPERATURE_THRESHOLD: "temperature_threshold"}
# ... and read back: any other code ends the turn with [ERROR] and its error record.
ERROR_STATUS = {code: status for status, code in ERROR_CODES.items() if status is not Status.ERROR}
#: the model a request names when the caller names none (nbchat serves one model under any name)
DEFAULT_MODEL = "default"


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
        raw_role = m.get("role")
        role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None  # a list is unhashable: not a 500
        if role is None:
            raise OpenAIRequestError(f"messages[{i}].role must be system, user, assistant or developer", "messages")
        out.append(Message(role=role, content=_content(m.get("content"), f"messages[{i}]")))
    return out


def _max_tokens(body: dict[str, Any]) -> int | None:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    try:
        return parse_max_tokens(body.get(key), key)
    except RequestError as exc:
        raise OpenAIRequestError(str(exc), key) from exc


def _in_range(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """A number parameter within [low, high] (None when absent), else a 400 naming it."""
    value = body.get(key)
    if value is None:
        return None
    number = bounded_number(value)
    if number is None:
        raise OpenAIRequestError(f"'{key}' must be a number", key)
    if not low <= number <= high:
        text = json.dumps(value)
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise OpenAIRequestError(f"{shown} is not a valid {key}: it must be between {low:g} and {high:g}", key)
    return number


def _temperature(body: dict[str, Any]) -> float | None:
    return _in_range(body, "temperature", 0, 2)  # None: the backend's own default


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    try:
        return parse_stop([value] if isinstance(value, str) else value)
    except RequestError as exc:
        raise OpenAIRequestError(f"{exc} (or one string)", "stop") from exc


def _flag(body: dict[str, Any], key: str, where: str | None = None) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise OpenAIRequestError(f"'{where or key}' must be true or false, not {json.dumps(value)[:40]}",
                                 where or key)
    return bool(value)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """400 for what changes the answer's shape and this server cannot do: ignoring it would hand
    the caller something other than what it asked for, with no sign of it."""
    n = body.get("n")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
            raise OpenAIRequestError("'n' must be an integer from 1 to 128", "n")
        if n != 1:
            raise OpenAIRequestError("this server makes one choice per request: send n=1 (or leave it out) "
                                     "and send the request again for another answer", "n")
    _in_range(body, "top_p", 0, 1)
    _in_range(body, "presence_penalty", -2, 2)
    _in_range(body, "frequency_penalty", -2, 2)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) >= 2**63):
        raise OpenAIRequestError("'seed' must be a 64-bit integer", "seed")
    for key in ("tools", "functions", "logit_bias"):
        if body.get(key):
            raise OpenAIRequestError(f"'{key}' is not supported by this server (no tool calling, no logit bias)",
                                     key)
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none"):
            raise OpenAIRequestError(f"'{key}' is not supported by this server: it has no tools to call", key)
    if _flag(body, "logprobs") or body.get("top_logprobs") is not None:
        raise OpenAIRequestError("log probabilities are not supported by this server", "logprobs")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise OpenAIRequestError("only response_format {\"type\": \"text\"} is supported", "response_format")


def parse_completion_request(body: Any) -> CompletionRequest:
    if not isinstance(body, dict):
        raise OpenAIRequestError("the body must be a JSON object")
    messages = _messages(body.get("messages"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise OpenAIRequestError("'model' must be a string", "model")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise OpenAIRequestError("'stream_options' must be an object", "stream_options")
    _refuse_unsupported(body)
    turn = TurnRequest(user_message=messages[-1], conversation=tuple(messages[:-1]),
                       temperature=_temperature(body), max_tokens=_max_tokens(body), model=model, stop=_stop(body))
    return CompletionRequest(turn=turn, stream=_flag(body, "stream"),
                             include_usage=_flag(options, "include_usage", "stream_options.include_usage"),
                             model=model)


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
        ext: dict[str, Any] = {"seq": chunk.seq, "ts": chunk.server_time, **_trimmed(chunk.trimmed)}
        return self._chunk({"content": chunk.content}, None, x_nbchat=ext)

    def final_chunk(self, end: End) -> dict[str, Any]:
        """The closing chunk, or the error object a stream ends with when no answer completed."""
        if end.status in FINISH_REASONS:
            extra = {"x_nbchat": _trimmed(end.trimmed)} if end.trimmed else {}
            return self._chunk({}, FINISH_REASONS[end.status], **extra)
        message = end.error.message if end.error else f"the turn ended with {end.status.value}"
        # an [ERROR]'s own code says what failed (queue_full, process_lost...), as on the other transports
        code = end.error.code if end.error and end.status is Status.ERROR else ERROR_CODES[end.status]
        return openai_error(message, type_="server_error", code=code)

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
                "usage": self.usage(), **({"x_nbchat": _trimmed(end.trimmed)} if end.trimmed else {})}


def _trimmed(exchanges: int) -> dict[str, int]:
    """nbchat's extension field for a history trimmed to fit the context: the exchanges dropped."""
    return {"trimmed": exchanges} if exchanges else {}


# ================================================================ the client side


class Sampling(Protocol):
    """What a completion body is made of: a turn request, or a backend's generation request."""

    @property
    def messages(self) -> list[Message]: ...

    @property
    def temperature(self) -> float | None: ...

    @property
    def max_tokens(self) -> int | None: ...

    @property
    def model(self) -> str | None: ...


def completion_body(request: Sampling, *, model: str | None = None, stream: bool = True) -> dict[str, Any]:
    """A request as a chat-completions body (``model`` overrides the request's)."""
    body: dict[str, Any] = {"model": model or request.model or DEFAULT_MODEL,
                            "messages": [m.to_dict() for m in request.messages], "stream": stream}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    return body


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """What an error object or body says: a code (OpenAI's ``code``, else its ``type``) and a message."""

    code: str | None
    message: str


def error_fields(obj: Any) -> ErrorFields:
    """The code and message of a decoded error: OpenAI's and nbchat's ``{"error": {...}}``,
    FastAPI's ``{"detail"}``, a bare ``{"message"}`` or ``{"error": "text"}``."""
    if not isinstance(obj, dict):
        return ErrorFields(None, str(obj)[:500])
    inner = obj.get("error", obj)
    if not isinstance(inner, dict):
        return ErrorFields(None, str(inner)[:500] if inner else json.dumps(obj)[:500])
    code = inner.get("code") or inner.get("type")
    message = inner.get("message") or inner.get("detail") or obj.get("detail")
    return ErrorFields(str(code) if code else None, str(message) if message else json.dumps(obj)[:500])


def parse_error_body(body: bytes) -> ErrorFields:
    """An HTTP error body: JSON as :func:`error_fields` reads it, else its text (cut to 500 characters)."""
    try:
        obj: Any = json.loads(body)
    except ValueError:
        return ErrorFields(None, body.decode("utf-8", "replace").strip()[:500] or "(empty body)")
    return error_fields(obj)


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """One ``chat.completion.chunk``, as far as its first choice goes."""

    content: str | None = None
    finish_reason: str | None = None
    #: nbchat's extension: the chunk's seq and server emit time, when the server is nbchat
    seq: int | None = None
    server_time: float | None = None
    #: nbchat's extension: the oldest exchanges dropped to fit the context (on the first chunk)
    trimmed: int = 0


@dataclass(frozen=True, slots=True)
class StreamError:
    """An error object inside the stream (or an ``event: error`` message)."""

    error: ErrorFields


@dataclass(frozen=True, slots=True)
class StreamDone:
    """``data: [DONE]``: nothing more will come."""


StreamEvent: TypeAlias = StreamDelta | StreamError | StreamDone


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_stream_event(data: str, event: str = "") -> StreamEvent:
    """One SSE message of a completion stream; ProtocolError for one that is not an object."""
    if data == "[DONE]":
        return StreamDone()
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"a completion stream event is not JSON: {data[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"a completion stream event must be an object: {data[:200]!r}")
    if event == "error" or "error" in obj:
        return StreamError(error_fields(obj))
    choices = obj.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        raise ProtocolError(f"a completion choice must be an object: {choice!r}")
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    ext = obj.get("x_nbchat")
    ext = ext if isinstance(ext, dict) else {}
    seq, trimmed = ext.get("seq"), ext.get("trimmed")
    return StreamDelta(content=content if isinstance(content, str) else None,
                       finish_reason=str(choice["finish_reason"]) if choice.get("finish_reason") else None,
                       seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                       server_time=_number(ext.get("ts")),
                       trimmed=trimmed if isinstance(trimmed, int) and not isinstance(trimmed, bool)
                       and trimmed > 0 else 0)


class OpenAIItemDecoder:
    """Sans-I/O: a chat-completions event stream in any split -> chunks and the status.

    Each delta with content becomes a :class:`Chunk` (its seq and server time
    from nbchat's ``x_nbchat`` field, or counted here for an upstream that is
    not nbchat). The finish reason or an error object becomes the status,
    delivered at ``data: [DONE]`` (or at the end of the body, for a server that
    leaves ``[DONE]`` out).
    """

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._seq = 0
        self._end: list[Item] = []  # the status (and error) held back until [DONE]
        self._done = False

    def feed(self, data: bytes, received: float) -> list[Item]:
        out: list[Item] = []
        for msg in self._sse.feed(data):
            if msg.event in ("", "message", "error"):
                out.extend(self._event(parse_stream_event(msg.data, msg.event), received))
        return out

    def flush(self, received: float) -> list[Item]:
        return [] if self._done else self._take_end()

    def _event(self, event: StreamEvent, received: float) -> list[Item]:
        if isinstance(event, StreamDone):
            if not self._end:
                raise ProtocolError("the completion stream sent [DONE] without a finish_reason or an error")
            self._done = True
            return self._take_end()
        if isinstance(event, StreamError):
            self._end = self._error(event.error)
            return []
        out: list[Item] = []
        if event.content is not None and (event.content or event.seq is not None):  # not the opening role chunk
            self._seq = event.seq if event.seq is not None else self._seq + 1
            out.append(Chunk(content=event.content, seq=self._seq, server_time=event.server_time,
                             received=received, trimmed=event.trimmed))
        if event.finish_reason:
            self._end = [FINISH_STATUS.get(event.finish_reason, Status.DONE)]
        return out

    @staticmethod
    def _error(error: ErrorFields) -> list[Item]:
        code = error.code or "error"
        status = ERROR_STATUS.get(code, Status.ERROR)
        # the native transports carry an error record only with [ERROR]; keep the same events
        info = [ErrorInfo(code=code, message=error.message)] if status is Status.ERROR else []
        return [*info, status]

    def _take_end(self) -> list[Item]:
        end, self._end = self._end, []
        return end
