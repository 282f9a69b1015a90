"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``.

A completion is an ordinary turn; these routes only translate the request and
encode the turn's events with :mod:`nbchat.wire.openai`, so the official
``openai`` client works unchanged against ``URL + "/v1"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..wire.contract import SSE_HEADERS, TURN_HEADER
from ..wire.errors import QueueFull, RequestError
from ..wire.events import Chunk, End, ErrorInfo, Event, Status
from ..wire.openai import CompletionEncoder, OpenAIRequestError, openai_error, parse_completion_request
from ..wire.protocol import dumps
from ..wire.sse import SSEMessage, encode_sse
from .context import context_of, read_json
from .owned import store_for
from .store import Reader

ERROR_HTTP = {Status.MODEL_TIMEOUT: 504, Status.ERROR: 502, Status.INTERRUPTED: 503}
# OpenAI's error "type" for the statuses a turn can be refused with before it starts
ERROR_TYPES = {429: "requests", 503: "server_error"}  # OpenAI types its request-rate 429s "requests"
#: a backend that is busy (the embedded model's queue is full) is "try again later", not a bad gateway
BUSY_CODES = frozenset({QueueFull.code})
#: seconds a busy answer asks the client to wait: about one short answer of the embedded model
RETRY_AFTER_SECONDS = 2
#: how long a stream waits for the turn's first events before it sends its 200: a backend that
#: refuses at once (busy) does so in the turn's first step, and is then answered 429 like the
#: non-streamed form; one whose first piece takes longer starts streaming without it
FIRST_EVENTS_WAIT = 0.5


def _data(obj: object) -> bytes:
    return encode_sse(SSEMessage(data=obj if isinstance(obj, str) else dumps(obj)))


async def list_models(request: Request) -> Response:
    backend = context_of(request).backend
    return JSONResponse({"object": "list", "data": [
        {"id": backend.model_name, "object": "model", "created": 0, "owned_by": "nbchat"}]})


async def chat_completions(request: Request) -> Response:
    try:
        req = parse_completion_request(await read_json(request))
    except OpenAIRequestError as exc:
        return JSONResponse(openai_error(str(exc), param=exc.param), status_code=400)
    except RequestError as exc:
        return JSONResponse(openai_error(str(exc), code=exc.code), status_code=exc.status or 400)
    store, backend = store_for(request), context_of(request).backend
    try:
        turn = await store.create(req.turn)
        sub = await store.open(turn.id, 0)
    except RequestError as exc:  # too many turns (429) or shutting down (503): still in OpenAI's shape
        status = exc.status or 400
        return JSONResponse(openai_error(str(exc), type_=ERROR_TYPES.get(status, "invalid_request_error"),
                                         code=exc.code), status_code=status)
    encoder = CompletionEncoder(turn.id, req.model or backend.model_name)
    if not req.stream:
        return await _complete(sub, encoder)
    async with sub:
        first = await sub.next_batch(FIRST_EVENTS_WAIT)
    busy = _busy_error(first[-1]) if first and isinstance(first[-1], End) else None
    if busy is not None:
        return _busy(busy)
    return StreamingResponse(_stream(sub, encoder, req.include_usage, first),
                             headers={**SSE_HEADERS, TURN_HEADER: turn.id})


def _busy_error(end: End) -> ErrorInfo | None:
    """The error of a turn refused because the model was busy, else None."""
    if end.status is Status.ERROR and end.error is not None and end.error.code in BUSY_CODES:
        return end.error
    return None


def _busy(error: ErrorInfo) -> JSONResponse:
    """429 with Retry-After, in OpenAI's shape (the ``openai`` package retries it after that wait)."""
    return JSONResponse(openai_error(error.message, type_=ERROR_TYPES[429], code=error.code), status_code=429,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _stream(sub: Reader, encoder: CompletionEncoder, include_usage: bool,
                  first: list[Event]) -> AsyncIterator[bytes]:
    async with sub:
        yield _data(encoder.role_chunk())
        batch = first
        while True:
            out = []
            for ev in batch:
                if isinstance(ev, Chunk):
                    out.append(_data(encoder.content_chunk(ev)))
                else:
                    out.append(_data(encoder.final_chunk(ev)))
                    if include_usage and ev.status in (Status.DONE, Status.TOKENS):
                        out.append(_data(encoder.usage_chunk()))
                    out.append(_data("[DONE]"))
            if out:
                yield b"".join(out)
            if sub.done:
                return
            batch = await sub.next_batch()


async def _complete(sub: Reader, encoder: CompletionEncoder) -> Response:
    parts: list[str] = []
    end: End | None = None
    async with sub:
        async for ev in sub:
            if isinstance(ev, Chunk):
                parts.append(ev.content)
                encoder.completion_tokens += 1
            else:
                end = ev
    assert end is not None
    busy = _busy_error(end)
    if busy is not None:
        return _busy(busy)
    if end.status in ERROR_HTTP:
        err = encoder.final_chunk(end)
        return JSONResponse(err, status_code=ERROR_HTTP[end.status], headers={TURN_HEADER: sub.turn_id})
    return JSONResponse(encoder.completion("".join(parts), end), headers={TURN_HEADER: sub.turn_id})
