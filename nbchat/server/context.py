"""What a request handler reads from its app: the app's parts, typed, and the
request body within the configured size limit.

:func:`~nbchat.server.app.create_app` puts one :class:`AppContext` on the app;
handlers (HTTP routes, the WebSocket route, the OpenAI routes, the server's
shutdown) take it through :func:`context_of` instead of reading untyped
attributes of ``app.state`` one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request

from ..backends import Backend
from ..wire.errors import PayloadTooLarge
from ..wire.requests import parse_json_body
from .config import Settings
from .fairshare import FairShare
from .store import TurnStore


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    backend: Backend
    store: TurnStore
    #: the page origins admitted; shared with the security middleware, which reads it per request
    origins: set[str]
    #: under a JupyterHub: the per-user bounds and the fair queue
    fair: FairShare | None = None


def context_of(where: HTTPConnection | Starlette) -> AppContext:
    """The context of the app serving ``where`` (a request or WebSocket), or of the app itself."""
    app = where if isinstance(where, Starlette) else where.app
    context: AppContext = app.state.context
    return context


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length", "")
    # ASCII digits only (isdigit alone admits superscripts, which int() refuses)
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise PayloadTooLarge(f"the request body is over {limit} bytes", code="payload_too_large", status=413)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes", code="payload_too_large", status=413)
    return bytes(body)


async def read_json(request: Request) -> Any:
    """The request's JSON body, within the app's ``max_body_bytes`` (RequestError when it is not JSON)."""
    return parse_json_body(await read_body(request, context_of(request).settings.max_body_bytes))
