"""The streaming HTTP response of the SSE and NDJSON routes: a reader's events, encoded, as they come.

Starlette's ``StreamingResponse`` takes any async iterator of bytes, so each
chunk passed through an async generator, the response's own loop and an
``anyio`` task group. This response reads the :class:`~nbchat.server.store.Reader`
itself and sends each batch as one body message: one hop less per chunk and
plain asyncio tasks. It keeps what matters of Starlette's: a client that
disconnects cancels the stream at once (so the turn sees its stream detach,
which the grace period counts), and it is an ordinary ASGI response, so the
middleware around it and the connection limits below it
(:mod:`nbchat.server.limits`) apply unchanged.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..wire.events import Event
from .direct import WriteBody, body_writer
from .store import Reader
from .subscription import Live

#: the scope key under which :class:`NBChatApp` keeps the server's own ``send`` of a connection
SERVER_SEND = "nbchat.server_send"


def server_send(scope: Scope, send: Send) -> Send:
    """The server's own ``send`` for a response's body messages and a WebSocket's frames.

    The app's middleware (error pages, exception handlers, CORS) act on a response's start and on
    nothing after it, yet each wraps ``send`` in a coroutine of its own: at thousands of chunks a
    second those wrappers were a tenth of the server's CPU. So the start goes through them and the
    body past them. ``send`` when the app was not entered through :class:`NBChatApp`.
    """
    raw: Send | None = scope.get(SERVER_SEND)
    return send if raw is None else raw


def send_now(send: Send, messages: list[Message]) -> asyncio.Future[None] | None:
    """Send ``messages`` in order from the calling code, without a task: None when all went out, else
    a task finishing them (the server's ``send`` had to wait: its client is behind, or a frame is
    too big for the write buffer). Raises what ``send`` raises when the client is gone.

    The server's ``send`` writes to the socket and returns without suspending unless the client is
    behind, so the common case runs it to completion here, as an eager task would.
    """
    for i, message in enumerate(messages):
        pending = send_one(send, message)
        if pending is not None:
            return asyncio.ensure_future(finish(pending, send, messages[i + 1:]))
    return None


def send_message(send: Send, message: Message) -> asyncio.Future[None] | None:
    """:func:`send_now` of one message (a live chunk's, nearly always), without its list."""
    pending = send_one(send, message)
    return None if pending is None else asyncio.ensure_future(finish(pending, send, []))


def send_one(send: Send, message: Message) -> Awaitable[None] | None:
    """:func:`send_now` of one message (a chunk's, nearly always): None when it went out, else what
    finishes sending it."""
    sending = send(message)
    # (the exact type first: the ABC's own check costs as much as the rest of a chunk's send)
    if type(sending) is not types.CoroutineType and not isinstance(sending, Coroutine):
        return sending  # some other awaitable: a task sends it
    try:
        waiting = sending.send(None)
    except StopIteration:
        return None
    return _resume(sending, waiting)


async def finish(sending: Awaitable[None], send: Send, rest: list[Message]) -> None:
    """Finish a send that had to wait, then send ``rest`` (in a task: the caller goes on)."""
    await sending
    for message in rest:
        await send(message)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """Go on with ``coro``, suspended on ``waiting``: the task waits for that first, then drives the rest."""
    try:
        yield waiting
    except BaseException:
        coro.close()
        raise
    yield from coro.__await__()


class NBChatApp(Starlette):
    """Starlette, keeping the server's own ``send`` in the scope for :func:`server_send`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


class EventStreamResponse(Response):
    """Stream ``reader``'s events encoded by ``encode``. With ``keepalive`` (seconds), a stream that
    had nothing to send for that long sends ``idle`` (an SSE comment) so proxies keep it open."""

    def __init__(self, reader: Reader, encode: Callable[[Event], bytes], headers: Mapping[str, str],
                 keepalive: float | None = None, idle: bytes = b"",
                 encode_record: Callable[[str, int, float | None], bytes] | None = None) -> None:
        self.reader = reader
        self.encode = encode
        #: ``encode`` of a chunk given by its fields (a live chunk, for which the turn makes no Chunk)
        self.encode_record = encode_record
        self.keepalive = keepalive
        self.idle = idle
        self.status_code = 200
        self.background = None
        self.init_headers(headers)  # no body: no content-length, as with StreamingResponse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send, server_send(scope, send), body_writer(scope)))
        listener = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((stream, listener), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, listener):
                task.cancel()
            await asyncio.wait((stream, listener))
        if not stream.cancelled() and stream.exception() is not None:
            raise stream.exception()  # type: ignore[misc]

    async def _stream(self, start: Send, send: Send, write: WriteBody | None) -> None:
        await start({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        reader, encode, keepalive = self.reader, self.encode, self.keepalive

        def part(data: bytes) -> asyncio.Future[None] | None:
            if write is not None and write(data):  # the client keeps up: written, no send to run
                return None
            return send_message(send, {"type": "http.response.body", "body": data, "more_body": True})

        def body(events: list[Event]) -> asyncio.Future[None] | None:
            # many chunks ready at once go out in one write: fewer syscalls at high rates
            if len(events) == 1:  # the common case at any rate: one chunk, no join
                return part(encode(events[0]))
            return part(b"".join(map(encode, events)) if events else self.idle)

        encode_record = self.encode_record

        def record(content: str, seq: int, server_time: float | None) -> asyncio.Future[None] | None:
            assert encode_record is not None  # offered below only when there is one
            return part(encode_record(content, seq, server_time))

        live: Live | None = None if encode_record is None else record

        try:
            async with reader:
                while not reader.done:
                    pending = body(await reader.next_batch(keepalive, body, live))
                    if pending is not None:
                        await pending
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write: nothing more to send
            return


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
