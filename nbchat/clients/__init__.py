"""nbchat's Python clients: one module per transport, sync and async, all
yielding the same :class:`~nbchat.wire.events.Chunk` ... :class:`~nbchat.wire.events.End`
events and raising the same :mod:`nbchat.wire.errors`.

    with connect("http://127.0.0.1:8765", token=TOKEN, transport="sse") as client:
        for event in client.stream("Hello"):
            ...

    async with aconnect(url, token=TOKEN, transport="ws") as client:
        turn = await client.stream("Hello")    # sends the request, returns the stream
        async for event in turn:
            ...

Transports: ``ws`` (WebSocket), ``sse`` (Server-Sent Events), ``stream``
(fetch stream, NDJSON), ``openai`` (the OpenAI-compatible chat-completions stream).
"""

from __future__ import annotations

from ..wire.contract import TRANSPORTS, Transport, transport_name
from ._common import AsyncChatClient, AsyncTurnStream, ChatClient, TurnStream
from .ndjson import AsyncNDJSONClient, NDJSONClient
from .openai_sse import AsyncOpenAIClient, OpenAIClient
from .sse import AsyncSSEClient, SSEClient
from .websocket import AsyncWebSocketClient, WebSocketClient

_SYNC: dict[str, type[ChatClient]] = {"ws": WebSocketClient, "sse": SSEClient, "stream": NDJSONClient,
                                      "openai": OpenAIClient}
_ASYNC: dict[str, type[AsyncChatClient]] = {"ws": AsyncWebSocketClient, "sse": AsyncSSEClient,
                                            "stream": AsyncNDJSONClient, "openai": AsyncOpenAIClient}


def connect(url: str, token: str | None = None, transport: str = "ws", timeout: float = 60.0,
            uid: str | None = None) -> ChatClient:
    """A sync client for the server at ``url`` (its base URL, ``http://host:port``).

    ``timeout`` is the longest wait for the next piece; ``uid`` names this
    client's turns on the server (a random one by default). Nothing is sent
    until the first :meth:`~ChatClient.stream`."""
    return _SYNC[transport_name(transport)](url, token=token, timeout=timeout, uid=uid)


def aconnect(url: str, token: str | None = None, transport: str = "ws", timeout: float = 60.0,
             uid: str | None = None) -> AsyncChatClient:
    """The async twin of :func:`connect`; use it as ``async with aconnect(...) as client``."""
    return _ASYNC[transport_name(transport)](url, token=token, timeout=timeout, uid=uid)


__all__ = [
    "TRANSPORTS",
    "AsyncChatClient",
    "AsyncNDJSONClient",
    "AsyncOpenAIClient",
    "AsyncSSEClient",
    "AsyncTurnStream",
    "AsyncWebSocketClient",
    "ChatClient",
    "NDJSONClient",
    "OpenAIClient",
    "SSEClient",
    "Transport",
    "TurnStream",
    "WebSocketClient",
    "aconnect",
    "connect",
]
