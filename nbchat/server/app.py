"""The ASGI app: routes of the seed's three transports, turns, health.

:func:`create_app` builds everything per app (the backend, the turn manager,
the security middleware); nothing lives at module level. Each route only
*encodes* the events of a :class:`~nbchat.server.subscription.Subscription` with
:mod:`nbchat.wire.protocol`; the WebSocket route lives in :mod:`nbchat.server.ws` and the
OpenAI-compatible routes in :mod:`nbchat.server.openai_routes`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from .._version import __version__
from ..backends import Backend, create_backend
from ..wire.contract import (
    AFTER_PARAM,
    HEALTH_PATH,
    INTERRUPT_PATH,
    LAST_EVENT_ID_PARAM,
    NDJSON_HEADERS,
    NDJSON_PATH,
    OPENAI_COMPLETIONS_PATH,
    OPENAI_MODELS_PATH,
    SSE_HEADERS,
    SSE_PATH,
    TURN_HEADER,
    TURN_PARAM,
    TURNS_PATH,
    UID_PARAM,
    WEBSOCKET_PATH,
)
from ..wire.errors import RequestError, ResumeError
from ..wire.events import STATUS_STRINGS, Event
from ..wire.protocol import encode_ndjson, encode_ndjson_record, encode_sse_event, encode_sse_record
from ..wire.requests import error_body, parse_position, parse_turn_request
from ..wire.sse import encode_sse_comment
from .auth import SecurityMiddleware, public_bind_refusal
from .config import Settings
from .context import AppContext, context_of, read_json
from .fairshare import fair_share
from .openai_routes import chat_completions, list_models
from .owned import owner_of, store_for
from .recording import Recorder
from .store import MemoryStore, Reader, TurnStore
from .streaming import EventStreamResponse, NBChatApp
from .turn_manager import TurnManager
from .ws import websocket_endpoint

log = logging.getLogger("nbchat.server.app")


def error_response(code: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def store_of(request: Request) -> TurnStore:
    return store_for(request)


def stream_response(sub: Reader, encode: Callable[[Event], bytes], headers: dict[str, str],
                    keepalive: float | None = None,
                    encode_record: Callable[[str, int, float | None], bytes] | None = None) -> EventStreamResponse:
    """Encode a subscription's events as they come (a live chunk by its fields with ``encode_record``);
    a client that leaves detaches it."""
    return EventStreamResponse(sub, encode, {**headers, TURN_HEADER: sub.turn_id}, keepalive=keepalive,
                               idle=encode_sse_comment("keep-alive"), encode_record=encode_record)


async def find_turn(store: TurnStore, turn_id: str | None, uid: str | None) -> str | None:
    if turn_id:
        if await store.get(turn_id) is None:
            raise ResumeError(f"unknown turn {turn_id[:40]!r}: it may have expired ({store.manager.retention_note()})")
        return turn_id
    found = await store.latest(uid) if uid else None
    return None if found is None else found.id


def parse_after(value: str | None) -> int | None:
    """A last-seen seq from Last-Event-ID / lastEventId / after; None when it is a status (nothing left)."""
    if value is None:
        return 0
    if value in STATUS_STRINGS:
        return None
    return parse_position(value)


async def subscribe_for_resume(store: TurnStore, turn_id: str | None, after: int | None) -> Reader | None:
    if turn_id is None or after is None:
        return None
    return await store.open(turn_id, after)  # a queued turn starts when its first stream attaches


async def start_turn(request: Request) -> Reader:
    """A new turn from the request's body, and a reader of it from the start."""
    store = store_of(request)
    turn = await store.create(parse_turn_request(await read_json(request)))
    return await store.open(turn.id, 0)


# ---------------------------------------------------------------- routes


async def health(request: Request) -> Response:
    context = context_of(request)
    backend = context.backend
    return JSONResponse({"status": "ok", "version": __version__, "backend": backend.name,
                         "model": backend.model_name, "sampling": backend.sampling,
                         "turns": len(store_of(request)), "retention": store_of(request).manager.retention(),
                         **(context.fair.health() if context.fair is not None else {})})


async def post_turns(request: Request) -> Response:
    req = parse_turn_request(await read_json(request))
    if not req.uid:
        raise RequestError("POST /turns needs a 'uid' in the body: the WebSocket or SSE GET that starts it names it")
    turn = await store_of(request).create(req, start=False)
    return JSONResponse({"id": turn.id, "uid": turn.uid})


async def interrupt_turn(request: Request) -> Response:
    turn = await store_of(request).interrupt(request.path_params["turn_id"])
    if turn is None:
        note = store_of(request).manager.retention_note()
        return error_response("unknown_turn", f"unknown turn id: it may have ended and expired ({note})", 404)
    return JSONResponse({"id": turn.id, "interrupted": True, "state": turn.state.value})


async def create_sse(request: Request) -> Response:
    settings = context_of(request).settings
    if request.method == "POST":
        sub = await start_turn(request)
    else:
        store = store_of(request)
        uid = request.headers.get(UID_PARAM) or request.query_params.get(UID_PARAM)
        turn = await find_turn(store, request.query_params.get(TURN_PARAM), uid)
        last = request.headers.get("last-event-id", request.query_params.get(LAST_EVENT_ID_PARAM))
        found = await subscribe_for_resume(store, turn, parse_after(last))
        if found is None:
            return Response(status_code=204)  # nothing to stream: stops a browser's reconnect loop
        sub = found
    return stream_response(sub, encode_sse_event, SSE_HEADERS, keepalive=settings.keepalive_seconds,
                           encode_record=encode_sse_record)


async def talk_by_stream(request: Request) -> Response:
    if request.method == "POST":
        sub = await start_turn(request)
    else:
        store = store_of(request)
        turn = await find_turn(store, request.query_params.get(TURN_PARAM), request.query_params.get(UID_PARAM))
        found = await subscribe_for_resume(store, turn, parse_after(request.query_params.get(AFTER_PARAM)))
        if found is None:
            return Response(status_code=204)
        sub = found
    return stream_response(sub, encode_ndjson, NDJSON_HEADERS, encode_record=encode_ndjson_record)


# ---------------------------------------------------------------- errors


async def on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return error_response(exc.code, str(exc), exc.status or 400)


async def on_resume_error(request: Request, exc: Exception) -> Response:
    return error_response("resume_unavailable", str(exc), 410)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code)
    return error_response("http_" + str(exc.status_code), str(exc.detail), exc.status_code)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response("internal_error", "the server hit an unexpected error; see its log", 500)


# ---------------------------------------------------------------- app


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Starlette:
    """The nbchat ASGI app. ``settings.token`` must be concrete (see Settings.with_token)."""
    settings = (settings or Settings()).with_token()
    refusal = public_bind_refusal(settings.host, settings.token, settings.public_without_token)
    if refusal is not None and not settings.jupyterhub:  # under a Hub, the Hub authenticates
        raise ValueError(refusal)
    if backend is None:
        backend = create_backend(settings.backend, rate=settings.rate, model=settings.model,
                                 replay=settings.replay, replay_rate=settings.replay_rate,
                                 **settings.backend_options)
    recorder = Recorder(settings.record, backend.name, backend.model_name,
                        max_bytes=int(settings.record_max_mb * 1024 * 1024)) if settings.record else None
    store = make_store(backend, settings, recorder)
    origins = set(settings.allow_origins)  # shared with the middleware: see admit_origin

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backend.start()
        try:
            await store.start()
        except BaseException:
            await backend.aclose()
            raise
        try:
            yield
        finally:
            await store.shutdown()
            await store.aclose()
            await backend.aclose()

    routes: list[BaseRoute] = [
        Route(HEALTH_PATH, health),
        Route(TURNS_PATH, post_turns, methods=["POST"]),
        Route(INTERRUPT_PATH, interrupt_turn, methods=["POST"]),
        Route(SSE_PATH, create_sse, methods=["GET", "POST"]),
        Route(NDJSON_PATH, talk_by_stream, methods=["GET", "POST"]),
        Route(OPENAI_COMPLETIONS_PATH, chat_completions, methods=["POST"]),
        Route(OPENAI_MODELS_PATH, list_models),
        WebSocketRoute(WEBSOCKET_PATH, websocket_endpoint),
    ]
    middleware = [Middleware(SecurityMiddleware, token=settings.token or "", allow_origins=origins,
                             bind_host=settings.host, behind_proxy=settings.jupyterhub)]
    if settings.jupyterhub:
        middleware.append(hub_middleware(routes, origins, settings.hub_auth_cache))
    app = NBChatApp(
        routes=routes,
        middleware=middleware,
        exception_handlers={RequestError: on_request_error, ResumeError: on_resume_error,
                            HTTPException: on_http_error, Exception: on_unexpected},
        lifespan=lifespan,
    )
    fair = fair_share(settings, store.manager, owner_of) if settings.jupyterhub else None
    app.state.context = AppContext(settings, backend, store, origins, fair)
    return app


def hub_middleware(routes: list[BaseRoute], origins: set[str], cache_seconds: int) -> Middleware:
    """Serve as a JupyterHub service: Hub users only, under the service's prefix (the Hub's environment)."""
    from .hub import HubAuthMiddleware, HubService, whoami  # jupyterhub loads only in this mode

    service = HubService.from_environ()
    public = service.public_origin()
    if public:
        origins.add(public)
    routes.append(Route("/", whoami))
    return Middleware(HubAuthMiddleware, service=service, cache_seconds=cache_seconds)


def make_store(backend: Backend, settings: Settings, recorder: Recorder | None = None) -> TurnStore:
    """The memory store, or a shared one when ``settings.store`` names it."""
    if not settings.store:
        return MemoryStore(TurnManager(backend, settings, recorder))
    from .redis import RedisStore  # the redis client loads only for a shared store

    return RedisStore(backend, settings, recorder)


def admit_origin(app: Starlette, origin: str) -> None:
    """Allow one more page origin on a running app (as ``--allow-origin`` does at start)."""
    context_of(app).origins.add(origin)
