"""The ``openai`` backend: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp's server).

This module owns one streaming ``POST {base_url}/chat/completions`` per turn
over httpx, the decoding of the upstream's Server-Sent Events with
:class:`nbchat.wire.sse.SSEDecoder`, and turning what the upstream says into the
backend contract: content deltas become pieces, ``finish_reason: "length"``
becomes :data:`LENGTH`, an HTTP error, an error event or a broken connection
becomes :class:`~nbchat.wire.errors.BackendError` with code ``upstream_error``.

There is no read timeout: a stalled upstream is the server's model-timeout
watchdog's business. It cancels the iterator, and because the request lives
in an ``async with`` inside the generator, cancelling or closing the iterator
closes the upstream connection at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..wire.errors import BackendError
from ..wire.sse import SSEDecoder, SSEMessage
from .base import LENGTH, Backend, Finish, GenerationRequest

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONNECT_TIMEOUT = 10.0
ERROR_CODE = "upstream_error"


def upstream_error(message: str) -> BackendError:
    error = BackendError(message)
    error.code = ERROR_CODE
    return error


def error_message(body: bytes) -> str:
    """The upstream's own words from an error body: OpenAI's ``{"error": {"message"}}``,
    FastAPI's ``{"detail"}``, a bare ``{"message"}``, or the text itself."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500] or "(empty body)"
    if isinstance(parsed, dict):
        inner = parsed.get("error", parsed)
        if isinstance(inner, dict):
            for key in ("message", "detail"):
                if inner.get(key):
                    return str(inner[key])
        elif inner:
            return str(inner)
        if parsed.get("detail"):
            return str(parsed["detail"])
    return json.dumps(parsed)[:500]


class _Stream:
    """Reads one upstream stream's events; keeps whether it finished properly."""

    def __init__(self) -> None:
        self.finished = False  # a finish_reason or [DONE] arrived
        self.done = False  # [DONE] arrived: nothing more will come

    def pieces(self, msg: SSEMessage) -> list[str | Finish]:
        if msg.data == "[DONE]":
            self.finished = self.done = True
            return []
        try:
            chunk: Any = json.loads(msg.data)
        except ValueError as exc:
            raise upstream_error(f"the upstream sent an event that is not JSON: {msg.data[:200]!r}") from exc
        if msg.event == "error" or (isinstance(chunk, dict) and "error" in chunk):
            raise upstream_error(f"the upstream reported an error: {error_message(msg.data.encode())}")
        out: list[str | Finish] = []
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        for choice in choices or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                out.append(content)
            reason = choice.get("finish_reason")
            if reason:
                self.finished = True
                if reason == "length":
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
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "stream": True,
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        return body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        body = self._body(request)
        url = f"{self.base_url}/chat/completions"
        try:
            async with self.client.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as response:
                if response.status_code >= 400:
                    detail = error_message(await response.aread())
                    raise upstream_error(f"the upstream answered HTTP {response.status_code}: {detail}")
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
