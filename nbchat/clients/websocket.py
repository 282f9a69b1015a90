"""The WebSocket client: ``/websocket/{uid}``, over websockets' sync and asyncio clients.

One socket per client carries its turns one after another (it is reopened if
it dropped). A turn starts with a turn-request frame; ``[INTERRUPT]`` stops
it; ``{"resume": {"after": N, "turn": ID}}`` reattaches. Frames are decoded
and sorted per turn by the sans-I/O :class:`nbchat.wire.ws_session.WebSocketSession`;
this module only moves frames. The frame readers are plain iterators, not
generators, so a ``KeyboardInterrupt`` during a read leaves them usable: the
notebook magic interrupts the turn and keeps reading to its ``[INTERRUPTED]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as aconnect_ws
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as connect_ws

from ..wire.contract import WEBSOCKET_PATH
from ..wire.errors import AuthError, NBChatConnectionError, NBChatError, PayloadTooLarge
from ..wire.events import Item, TurnRequest
from ..wire.ws_session import TurnFrames, WebSocketSession
from ._common import DEFAULT_TIMEOUT, AsyncChatClient, AsyncTurnStream, ChatClient, TurnStream, auth_headers
from ._errors import broken, cannot_connect, error_from_status, timed_out

MAX_FRAME = 16 * 1024 * 1024
#: seconds the closing handshake may take while a turn's frames are still coming. The reader stops once
#: websockets' queue is full (its flow control), so the server's close frame, behind frames nobody will read,
#: would come only at websockets' own close timeout (10 s); the socket is closed then anyway, and the server
#: keeps the turn for its grace period whichever way the socket went.
DROP_CLOSE_TIMEOUT = 0.5


def ws_url(base: str, uid: str) -> str:
    """``http://host:port/prefix`` -> ``ws://host:port/prefix/websocket/<uid>``."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + WEBSOCKET_PATH.format(uid=quote(uid, safe=""))
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def closed_error(exc: ConnectionClosed, url: str) -> NBChatError:
    """The error for a socket the server closed: by its close code."""
    code = exc.rcvd.code if exc.rcvd is not None else None
    if code == CloseCode.POLICY_VIOLATION:
        return AuthError(f"{url} closed the WebSocket (1008): check the token printed by `nbchat serve`")
    if code == CloseCode.MESSAGE_TOO_BIG:
        # nbchat's reason quotes its configured limit ("message over N bytes")
        reason = (exc.rcvd.reason if exc.rcvd is not None else "") or "the message is over the server's limit"
        return PayloadTooLarge(f"the server closed the WebSocket (1009): {reason}; send less", code="payload_too_large")
    if code == CloseCode.GOING_AWAY:
        return NBChatConnectionError(f"{url} is going away (1001, shutting down); reconnect once it is back")
    return broken(url, exc)


def handshake_error(exc: Exception, url: str) -> NBChatError:
    if isinstance(exc, InvalidStatus):
        return error_from_status(exc.response.status_code, bytes(exc.response.body or b""), url)
    if isinstance(exc, TimeoutError):
        return cannot_connect(url, TimeoutError("the WebSocket handshake timed out"))
    return cannot_connect(url, exc)


@contextlib.contextmanager
def _socket_errors(url: str, timeout: float) -> Iterator[None]:
    """Map a read's or send's failures onto nbchat's errors (for the sync and the asyncio socket alike)."""
    try:
        yield
    except (TimeoutError, asyncio.TimeoutError) as exc:  # distinct types on Python 3.10
        raise timed_out(url, timeout) from exc
    except ConnectionClosed as exc:
        raise closed_error(exc, url) from exc


@contextlib.contextmanager
def _opening(url: str) -> Iterator[None]:
    try:
        yield
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise handshake_error(exc, url) from exc


def _connect_args(client: ChatClient | AsyncChatClient) -> dict[str, Any]:
    """websockets' connect() arguments, the same for its sync and asyncio clients."""
    return {"uri": ws_url(client.url, client.uid), "additional_headers": auth_headers(client.token),
            "open_timeout": min(client.timeout, 10), "max_size": MAX_FRAME}


class _FrameReader:
    def __init__(self, ws: ClientConnection, frames: TurnFrames, url: str, timeout: float) -> None:
        self.ws, self.frames, self.url, self.timeout = ws, frames, url, timeout

    def __iter__(self) -> _FrameReader:
        return self

    def __next__(self) -> Item:
        while not self.frames.done:
            with _socket_errors(self.url, self.timeout):
                frame = self.ws.recv(timeout=self.timeout)
            item = self.frames.receive(frame, time.time())
            if item is not None:
                return item
        raise StopIteration


class WebSocketClient(ChatClient):
    """Sync WebSocket client; interrupt() may be called from any thread."""

    transport = "ws"

    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 uid: str | None = None) -> None:
        super().__init__(url, token=token, timeout=timeout, uid=uid)
        self._session = WebSocketSession()
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()  # one socket, opened once, even if two threads start turns

    def _start_turn(self, request: TurnRequest) -> TurnStream:
        return self._start(self._session.turn_frame(request))

    def resume(self, after: int, *, turn_id: str | None = None) -> TurnStream:
        return self._start(self._session.resume_frame(after, turn_id), after=after, turn_id=turn_id)

    def close(self) -> None:
        with self._lock:
            if self._ws is not None and self._session.mid_turn:
                self._ws.close_timeout = DROP_CLOSE_TIMEOUT
            self._stack.close()
            self._ws = None

    def _socket(self) -> ClientConnection:
        if self._ws is not None and self._ws.state is State.OPEN:
            return self._ws
        self._stack.close()
        self._ws = None
        self._session.reset()
        with _opening(self.url):
            # entered as a context manager (websockets asks for it) and held open across turns
            self._ws = self._stack.enter_context(connect_ws(**_connect_args(self)))
        return self._ws

    def _start(self, frame: str, *, after: int | None = None, turn_id: str | None = None) -> TurnStream:
        with self._lock:
            ws, turn = self._send(frame)

        def interrupt() -> None:
            if self._session.is_live(turn):
                with contextlib.suppress(ConnectionClosed):  # a closed socket ends the stream anyway
                    ws.send(self._session.interrupt_frame)

        def close() -> None:
            # Mid-turn, dropping the socket is the only way to stop reading without leaving
            # frames to the next turn; the server keeps the turn for its grace period.
            if self._session.is_live(turn):
                ws.close_timeout = DROP_CLOSE_TIMEOUT
                ws.close()

        reader = _FrameReader(ws, turn, self.url, self.timeout)
        return TurnStream(reader, interrupt=interrupt, close=close, turn_id=turn_id, after=after)

    def _send(self, frame: str) -> tuple[ClientConnection, TurnFrames]:
        """Send on the open socket; a socket found closed on sending (the server closed it
        while idle) is reopened once."""
        ws = self._socket()
        try:
            turn = self._session.begin()
            ws.send(frame)
        except ConnectionClosed:
            ws = self._socket()
            turn = self._session.begin()
            with _socket_errors(self.url, self.timeout):
                ws.send(frame)
        return ws, turn


class _AsyncFrameReader:
    def __init__(self, ws: AsyncConnection, frames: TurnFrames, url: str, timeout: float) -> None:
        self.ws, self.frames, self.url, self.timeout = ws, frames, url, timeout

    def __aiter__(self) -> _AsyncFrameReader:
        return self

    async def __anext__(self) -> Item:
        while not self.frames.done:
            with _socket_errors(self.url, self.timeout):
                # cancelling recv() loses no data (websockets documents this), so a timeout is safe
                frame = await asyncio.wait_for(self.ws.recv(), self.timeout)
            item = self.frames.receive(frame, time.time())
            if item is not None:
                return item
        raise StopAsyncIteration


class AsyncWebSocketClient(AsyncChatClient):
    """Async WebSocket client: one socket per client, as the sync one."""

    transport = "ws"

    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 uid: str | None = None) -> None:
        super().__init__(url, token=token, timeout=timeout, uid=uid)
        self._session = WebSocketSession()
        self._ws: AsyncConnection | None = None
        self._stack = contextlib.AsyncExitStack()

    async def _start_turn(self, request: TurnRequest) -> AsyncTurnStream:
        return await self._start(self._session.turn_frame(request))

    async def _resume(self, after: int, turn_id: str | None) -> AsyncTurnStream:
        return await self._start(self._session.resume_frame(after, turn_id), after=after, turn_id=turn_id)

    async def aclose(self) -> None:
        if self._ws is not None and self._session.mid_turn:
            self._ws.close_timeout = DROP_CLOSE_TIMEOUT
        await self._stack.aclose()
        self._ws = None

    async def _socket(self) -> AsyncConnection:
        if self._ws is not None and self._ws.state is State.OPEN:
            return self._ws
        await self._stack.aclose()
        self._ws = None
        self._session.reset()
        with _opening(self.url):
            self._ws = await self._stack.enter_async_context(aconnect_ws(**_connect_args(self)))
        return self._ws

    async def _start(self, frame: str, *, after: int | None = None,
                     turn_id: str | None = None) -> AsyncTurnStream:
        ws, turn = await self._send(frame)

        async def interrupt() -> None:
            if self._session.is_live(turn):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(self._session.interrupt_frame)

        async def close() -> None:
            if self._session.is_live(turn):
                ws.close_timeout = DROP_CLOSE_TIMEOUT
                await ws.close()

        reader = _AsyncFrameReader(ws, turn, self.url, self.timeout)
        return AsyncTurnStream(reader, interrupt=interrupt, close=close, turn_id=turn_id, after=after)

    async def _send(self, frame: str) -> tuple[AsyncConnection, TurnFrames]:
        ws = await self._socket()
        try:
            turn = self._session.begin()
            await ws.send(frame)
        except ConnectionClosed:
            ws = await self._socket()
            turn = self._session.begin()
            with _socket_errors(self.url, self.timeout):
                await ws.send(frame)
        return ws, turn
