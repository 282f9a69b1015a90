"""The ``openai`` backend: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp's server).

This module owns one streaming ``POST {base_url}/chat/completions`` per turn
over httpx (the body, the stream events and the error bodies are read and
written by :mod:`nbchat.wire.openai`), and turning what the upstream says into
the backend contract: content deltas become pieces, ``finish_reason: "length"``
becomes :data:`LENGTH`, an HTTP error, an error event or a broken connection
becomes :class:`~nbchat.wire.errors.BackendError` with code ``upstream_error``.

There is no read timeout: a stalled upstream is the server's model-timeout
watchdog's business. It cancels the iterator, and because the request lives
in an ``async with`` inside the generator, cancelling or closing the iterator
closes the upstream connection at once.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..wire.errors import BackendError, ProtocolError
from ..wire.openai import StreamDone, StreamError, completion_body, parse_error_body, parse_stream_event
from ..wire.sse import SSEDecoder, SSEMessage
from .base import LENGTH, Backend, Finish, GenerationRequest

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONNECT_TIMEOUT = 10.0
ERROR_CODE = "upstream_error"


def upstream_error(message: str) -> BackendError:
    code = ERROR_CODE
    if _context_exceeded(message):
        code = "context_length_exceeded"
        message = (f"{message.rstrip('.')}. The conversation is longer than the upstream model's context: "
                   "start a new conversation (%%chat --new, %chat reset), send fewer earlier messages, "
                   "or lower max_tokens")
    error = BackendError(message)
    error.code = code
    return error


def _context_exceeded(message: str) -> bool:
    """Whether an upstream's error says the prompt did not fit: OpenAI's code, vLLM's, llama.cpp's and
    Ollama's wordings differ, all name the context."""
    text = message.lower()
    return "context_length_exceeded" in text or ("context" in text and any(
        word in text for word in ("length", "window", "exceed", "too long", "maximum")))


class _Stream:
    """Reads one upstream stream's events; keeps whether it finished properly."""

    def __init__(self) -> None:
        self.finished = False  # a finish_reason or [DONE] arrived
        self.done = False  # [DONE] arrived: nothing more will come

    def pieces(self, msg: SSEMessage) -> list[str | Finish]:
        try:
            event = parse_stream_event(msg.data, msg.event)
        except ProtocolError as exc:
            raise upstream_error(f"the upstream sent an event nbchat cannot read: {exc}") from exc
        if isinstance(event, StreamDone):
            self.finished = self.done = True
            return []
        if isinstance(event, StreamError):
            raise upstream_error(f"the upstream reported an error: {event.error.message}")
        out: list[str | Finish] = [event.content] if event.content else []
        if event.finish_reason:
            self.finished = True
            if event.finish_reason == "length":
                out.append(LENGTH)
        return out


class OpenAIUpstreamBackend(Backend):
    """Streams answers from an OpenAI-compatible ``/chat/completions`` endpoint."""

    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None) -> None:
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.model = model or os.environ.get("OPENAI_MODEL")
        self._client: httpx.AsyncClient | None = None

    @property
    def model_name(self) -> str:
        return self.model or "openai"

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            # No read timeout: the server's model-timeout watchdog decides how long is too long.
            self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        model = self.model or request.model
        if not model:
            raise upstream_error("no upstream model given: pass --model or set OPENAI_MODEL")
        return completion_body(request, model=model)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        body = self._body(request)
        url = f"{self.base_url}/chat/completions"
        try:
            async with self.client.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    error = parse_error_body(await response.aread())
                    raise upstream_error(f"the upstream answered HTTP {response.status_code}: {error.message}"
                                         + (f" ({error.code})" if error.code and error.code not in error.message
                                            else ""))
                stream, decoder = _Stream(), SSEDecoder()
                async for data in response.aiter_bytes():
                    for msg in decoder.feed(data):
                        for piece in stream.pieces(msg):
                            yield piece
                            if piece is LENGTH:
                                return
                        if stream.done:  # read up to [DONE] so the connection can be reused
                            return
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise upstream_error(
                f"cannot connect to the upstream at {self.base_url} ({exc or type(exc).__name__}): "
                "check OPENAI_BASE_URL and that the server is running"
            ) from exc
        except httpx.HTTPError as exc:
            raise upstream_error(f"the upstream connection broke: {exc or type(exc).__name__}") from exc
        if not stream.finished:
            raise upstream_error("the upstream closed the stream before the answer was finished")
