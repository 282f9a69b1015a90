"""nbchat's Python clients: one module per transport, sync and async, all
yielding the same :class:`~nbchat.wire.events.Chunk` ... :class:`~nbchat.wire.events.End`
events and raising the same :mod:`nbchat.wire.errors`.

    with connect("http://127.0.0.1:8765", token=TOKEN, transport="sse") as client:
        with client.stream("Hello", system="Be brief.", temperature=0.2) as turn:
            end = collect(turn, lambda chunk: print(chunk.content, end=""))
        end.raise_for_status()

    async with aconnect(url, token=TOKEN, transport="ws") as client:
        async with client.stream("Hello") as turn:
            async for event in turn:
                ...

Leaving a ``with`` block early interrupts the turn (the server stops
generating); ``turn.close()`` only stops reading, so the turn can be resumed.

Transports: ``ws`` (WebSocket), ``sse`` (Server-Sent Events), ``stream`` or
``ndjson`` (fetch stream, NDJSON), ``openai`` (the OpenAI-compatible
chat-completions stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.contract import TRANSPORTS, Transport, transport_name
from ._common import DEFAULT_TIMEOUT, AsyncChatClient, AsyncTurnOpener, AsyncTurnStream, ChatClient, TurnStream
from ._consume import acollect, collect
from ._http import AsyncHTTPChatClient, HTTPChatClient
from .ndjson import AsyncNDJSONClient, NDJSONClient
from .openai_sse import AsyncOpenAIClient, OpenAIClient
from .sse import AsyncSSEClient, SSEClient
from .websocket import AsyncWebSocketClient, WebSocketClient

if TYPE_CHECKING:
    import httpx

_SYNC_HTTP: dict[str, type[HTTPChatClient]] = {"sse": SSEClient, "stream": NDJSONClient, "openai": OpenAIClient}
_ASYNC_HTTP: dict[str, type[AsyncHTTPChatClient]] = {"sse": AsyncSSEClient, "stream": AsyncNDJSONClient,
                                                     "openai": AsyncOpenAIClient}


def connect(url: str, token: str | None = None, transport: Transport = "ws", timeout: float = DEFAULT_TIMEOUT,
            uid: str | None = None, http_client: httpx.Client | None = None) -> ChatClient:
    """A sync client for the server at ``url`` (its base URL, ``http://host:port``).

    ``timeout`` is the longest wait for the next piece; ``uid`` names this
    client's turns on the server (a random one by default); ``http_client`` is
    your own ``httpx.Client`` for the HTTP transports (TLS, proxies,
    ``httpx.MockTransport``), left open when the client closes. Nothing is
    sent until the first :meth:`~ChatClient.stream`."""
    name = transport_name(transport)
    if name == "ws":
        _no_http_client(http_client)
        return WebSocketClient(url, token=token, timeout=timeout, uid=uid)
    return _SYNC_HTTP[name](url, token=token, timeout=timeout, uid=uid, http_client=http_client)


def aconnect(url: str, token: str | None = None, transport: Transport = "ws", timeout: float = DEFAULT_TIMEOUT,
             uid: str | None = None, http_client: httpx.AsyncClient | None = None) -> AsyncChatClient:
    """The async twin of :func:`connect`; use it as ``async with aconnect(...) as client``
    (or close it with ``await client.aclose()``)."""
    name = transport_name(transport)
    if name == "ws":
        _no_http_client(http_client)
        return AsyncWebSocketClient(url, token=token, timeout=timeout, uid=uid)
    return _ASYNC_HTTP[name](url, token=token, timeout=timeout, uid=uid, http_client=http_client)


def _no_http_client(http_client: object) -> None:
    if http_client is not None:
        raise TypeError("http_client= is for the HTTP transports (sse, stream, openai); ws speaks WebSocket")


__all__ = [
    "DEFAULT_TIMEOUT",
    "TRANSPORTS",
    "AsyncChatClient",
    "AsyncNDJSONClient",
    "AsyncOpenAIClient",
    "AsyncSSEClient",
    "AsyncTurnOpener",
    "AsyncTurnStream",
    "AsyncWebSocketClient",
    "ChatClient",
    "NDJSONClient",
    "OpenAIClient",
    "SSEClient",
    "Transport",
    "TurnStream",
    "WebSocketClient",
    "acollect",
    "aconnect",
    "collect",
    "connect",
]
