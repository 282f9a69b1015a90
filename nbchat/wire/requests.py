"""What a client asks, as pure sans-I/O code: the turn-request JSON and how it is read.

Every request the server takes is decoded by :func:`parse_json_text` (or
:func:`parse_json_body`), which bounds its nesting and refuses text that is
not Unicode, and a turn request is validated by :func:`parse_turn_request`;
clients build theirs with :func:`encode_turn_request`, so the two cannot drift
apart. The records a turn answers with are :mod:`nbchat.wire.protocol`'s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import RequestError
from .events import Message, TurnRequest

#: requests are flat; this leaves room for OpenAI content parts and tool fields
MAX_JSON_DEPTH = 32
#: a seq is a count of pieces: 15 digits is far past any turn, well short of costly ints
MAX_POSITION = 10**15 - 1
#: the largest maxTokens / max_tokens: a C int, which is what a model's sampler takes
MAX_TOKENS = 2**31 - 1
#: a number past this magnitude is out of every range the wire has; ints beyond it are read as it,
#: so no check converts a 400-digit integer to a float (OverflowError) and every one stays JSON
NUMBER_BOUND = 1e300
#: stop sequences a request may name, and their length (OpenAI's count; the length bounds the hold-back)
MAX_STOPS = 4
MAX_STOP_CHARS = 256
_SURROGATE = re.compile("[\ud800-\udfff]")
ROLES = ("system", "user", "assistant")


def _message(obj: object, where: str) -> Message:
    if not isinstance(obj, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'")
    role, content = obj.get("role"), obj.get("content")
    if role not in ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise RequestError(f"{where}.content must be a string")
    return Message(role=role, content=content)


def bounded_number(value: object) -> float | None:
    """A JSON number as a float within ±:data:`NUMBER_BOUND`, or None for anything else.

    JSON numbers have no size limit: ``1`` followed by 400 zeros is an int that ``float()`` and
    ``math.isfinite()`` refuse with OverflowError, and ``1e400`` decodes to infinity. Both are
    far out of every range, so they become the bound, whose sign they keep: a range check then
    refuses them as it refuses 3 or -1, and the value still encodes as JSON."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(max(-NUMBER_BOUND, min(NUMBER_BOUND, value)))  # int comparisons never overflow
    if isinstance(value, float) and not math.isnan(value):
        return max(-NUMBER_BOUND, min(NUMBER_BOUND, value))
    return None


def _number(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    number = bounded_number(value)
    if number is None:
        raise RequestError(f"'{key}' must be a number")
    return number


def parse_max_tokens(value: object, key: str) -> int | None:
    """A token limit: None, or an integer from 1 to :data:`MAX_TOKENS`; RequestError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS:
        raise RequestError(f"'{key}' must be an integer from 1 to {MAX_TOKENS}")
    return value


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"'{key}' must be a string")
    return value


def parse_json_text(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode one JSON document a client sent: the only way requests are parsed.

    Raises RequestError for text that is not JSON (``invalid_json``), nested
    deeper than ``max_depth`` (the C decoder recurses: a deep enough document
    raises RecursionError, not ValueError) or holding a string that is not
    Unicode text (a lone surrogate such as ``"\\ud800"`` is valid JSON but can
    never be encoded back to UTF-8: caught here, once, rather than when an
    answer is half streamed)."""
    try:
        obj = _DECODER.decode(text)
    except RecursionError as exc:
        raise RequestError(f"the JSON is nested deeper than {max_depth} levels", code="invalid_json") from exc
    except ValueError as exc:
        raise RequestError(f"the request is not valid JSON: {exc}", code="invalid_json") from exc
    _check_tree(obj, max_depth)
    return obj


def _not_json(name: str) -> None:
    # Python's decoder reads NaN, Infinity and -Infinity, which JSON (RFC 8259) does not have.
    raise ValueError(f"{name} is not a JSON value")


#: made once: ``json.loads`` with an argument builds a decoder per call
_DECODER = json.JSONDecoder(parse_constant=_not_json)


def _check_tree(obj: Any, max_depth: int) -> None:
    # Iterative, so the check itself cannot overflow the stack.
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise RequestError(f"the JSON is nested deeper than {max_depth} levels", code="invalid_json")
        if isinstance(node, dict):
            for key, value in node.items():
                _check_text(key)
                stack.append((value, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node)


def _check_text(text: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise RequestError("a string holds a lone surrogate (an escape such as \\ud800 that is not a character): "
                           "send text as valid Unicode", code="invalid_request")


def parse_json_body(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a request body (its size is checked while it is read); raise RequestError
    (invalid_utf8, invalid_json, invalid_request)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError("the request body is not valid UTF-8", code="invalid_utf8") from exc
    return parse_json_text(text, max_depth=max_depth)


def parse_position(value: object) -> int:
    """A seq a client says it has seen (``Last-Event-ID``, ``lastEventId``, ``after``,
    a WebSocket resume): a non-negative integer of at most 15 ASCII digits, or
    RequestError. ``str.isdigit`` alone admits superscripts and other digits
    ``int`` refuses, and unbounded digit strings cost quadratic time to convert."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_POSITION:
            return value
    elif isinstance(value, str) and value == "":
        return 0
    elif isinstance(value, str) and 0 < len(value) <= 15 and value.isascii() and value.isdigit():
        return int(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise RequestError(f"a position must be a seq number from 0 to {MAX_POSITION}, not {shown}")


def parse_turn_request(obj: Any) -> TurnRequest:
    """Validate a decoded turn request. Temperature is range-checked by the turn, not here:
    out of 0..2 is a status (TEMPERATURE_THRESHOLD), not a rejected request; absent (or null)
    it is None, and the backend samples as suits its model."""
    if not isinstance(obj, dict):
        raise RequestError("a turn request must be a JSON object")
    if "userMessage" not in obj:
        raise RequestError("'userMessage' is required: {\"userMessage\": {\"role\": \"user\", \"content\": \"...\"}}")
    user = _message(obj["userMessage"], "userMessage")
    conv_raw = obj.get("conversation")
    conv_raw = [] if conv_raw is None else conv_raw
    if not isinstance(conv_raw, list):
        raise RequestError("'conversation' must be a list of messages")
    conversation = tuple(_message(m, f"conversation[{i}]") for i, m in enumerate(conv_raw))
    max_tokens = parse_max_tokens(obj.get("maxTokens"), "maxTokens")
    return TurnRequest(
        user_message=user,
        conversation=conversation,
        temperature=_number(obj, "temperature"),
        max_tokens=max_tokens,
        model=_optional_str(obj, "model"),
        uid=_optional_str(obj, "uid"),
        stop=parse_stop(obj.get("stop")),
    )


def parse_stop(value: object) -> tuple[str, ...]:
    """Stop sequences: absent, or a list of up to :data:`MAX_STOPS` non-empty strings."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_STOPS or \
            not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in value):
        raise RequestError(f"'stop' must be a list of up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters")
    return tuple(value)


def encode_turn_request(req: TurnRequest) -> dict[str, Any]:
    """The JSON object for a request, as clients send it."""
    out: dict[str, Any] = {
        "userMessage": req.user_message.to_dict(),
        "conversation": [m.to_dict() for m in req.conversation],
    }
    if req.temperature is not None:  # unset: the field is left out, so the server can tell
        out["temperature"] = req.temperature
    if req.max_tokens is not None:
        out["maxTokens"] = req.max_tokens
    if req.model is not None:
        out["model"] = req.model
    if req.uid is not None:
        out["uid"] = req.uid
    if req.stop:
        out["stop"] = list(req.stop)
    return out


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error shape of every 4xx answer and every error record."""
    return {"error": {"code": code, "message": message}}
