"""The names the wire contract fixes, each written once: paths, the turn
header, the interrupt frame, the response headers of the streaming encodings,
the transport names and the defaults a client sends.

Server routes, clients, the benchmark's bare clients and the docs all read
these; WebSocket close codes are websockets' own ``CloseCode`` (imported by
the layers that speak WebSocket, so this module stays free of it).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

HEALTH_PATH = "/health"
TURNS_PATH = "/turns"
INTERRUPT_PATH = "/turns/{turn_id}/interrupt"
SSE_PATH = "/createSse"
NDJSON_PATH = "/talkByStream"
WEBSOCKET_PATH = "/websocket/{uid}"
OPENAI_COMPLETIONS_PATH = "/v1/chat/completions"
OPENAI_MODELS_PATH = "/v1/models"

#: query parameters: the token (a browser's WebSocket and EventSource cannot set headers), the uid a queued
#: turn is started by, and a resume's turn and last seq (``after`` for the fetch stream, ``lastEventId`` for SSE)
TOKEN_PARAM = "token"
UID_PARAM = "uid"
TURN_PARAM = "turn"
AFTER_PARAM = "after"
LAST_EVENT_ID_PARAM = "lastEventId"
#: a WebSocket frame ``{"resume": {"after": seq, "turn": id}}`` reattaches to a turn after its last seq
RESUME_KEY = "resume"

#: names the turn a streaming HTTP answer belongs to (for an interrupt or a resume)
TURN_HEADER = "X-NBChat-Turn"
#: the client-to-server WebSocket frame that stops the running turn
INTERRUPT_FRAME = "[INTERRUPT]"

# Proxies must neither buffer nor cache a stream: each piece goes out as it is made.
SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache",
               "x-accel-buffering": "no", "connection": "keep-alive"}
NDJSON_HEADERS = {"content-type": "application/x-ndjson", "cache-control": "no-cache", "x-accel-buffering": "no"}

Transport: TypeAlias = Literal["ws", "sse", "stream", "ndjson", "fetch", "openai"]
"""A transport's name: ``"ndjson"`` and ``"fetch"`` (what a page reads it with) are other names for the
fetch stream, ``"stream"``."""
TRANSPORTS: tuple[Transport, ...] = ("ws", "sse", "stream", "openai")
"""One name per transport, in the order they are listed and benchmarked."""
TRANSPORT_ALIASES: dict[str, Transport] = {"ndjson": "stream", "fetch": "stream"}
"""Other names of a transport, and the canonical name each stands for."""
DIRECT_TRANSPORTS: tuple[Transport, ...] = ("ws", "sse", "stream")
"""The transports a page streams itself (``ChatWidget(direct=True)``): each carries a seq, so a dropped
connection resumes with no gap and no repeat; the OpenAI route's chunks carry none."""

#: what a client asks for when the caller does not say (client.stream, %%chat, nbchat chat). A temperature
#: the caller does not set is not sent at all: the backend then samples as suits its model.
DEFAULT_MAX_TOKENS = 512


def transport_name(name: str) -> Transport:
    """The canonical name of a transport (``"ndjson"`` -> ``"stream"``); ValueError for an unknown one."""
    canonical = TRANSPORT_ALIASES.get(name, name)
    for known in TRANSPORTS:
        if canonical == known:
            return known
    raise ValueError(f"unknown transport {name!r}: use one of {', '.join(TRANSPORTS)} (or ndjson or fetch for stream)")


def interrupt_path(turn_id: str) -> str:
    return INTERRUPT_PATH.format(turn_id=turn_id)
