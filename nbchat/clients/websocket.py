"""The WebSocket client: ``/websocket/{uid}``, over websockets' sync and asyncio clients.

One socket per client carries its turns one after another (it is reopened if
it dropped). A turn starts with a turn-request frame; ``[INTERRUPT]`` stops
it; ``{"resume": {"after": N, "turn": ID}}`` reattaches. Frames are decoded
by :func:`nbchat.wire.protocol.decode_ws`. The frame readers are plain iterators,
not generators, so a ``KeyboardInterrupt`` during a read leaves them usable:
the notebook magic interrupts the turn and keeps reading to its
``[INTERRUPTED]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as aconnect_ws
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.protocol import State
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as connect_ws

from ..wire.contract import INTERRUPT_FRAME, WEBSOCKET_PATH
from ..wire.errors import AuthError, NBChatConnectionError, NBChatError, PayloadTooLarge, ProtocolError
from ..wire.events import Item, Status, TurnRequest
from ..wire.protocol import decode_ws, dumps, encode_turn_request
from ._common import (
    DEFAULT_TIMEOUT,
    AsyncChatClient,
    AsyncTurnStream,
    ChatClient,
    TurnStream,
    auth_headers,
)
from ._errors import broken, cannot_connect, error_from_status, timed_out

MAX_FRAME = 16 * 1024 * 1024


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
        return PayloadTooLarge("the server closed the WebSocket (1009): the message is over 1 MiB; send less",
                               code="payload_too_large")
    if code == CloseCode.GOING_AWAY:
        return NBChatConnectionError(f"{url} is going away (1001, shutting down); reconnect once it is back")
    return broken(url, exc)


def handshake_error(exc: Exception, url: str) -> NBChatError:
    if isinstance(exc, InvalidStatus):
        return error_from_status(exc.response.status_code, bytes(exc.response.body or b""), url)
    if isinstance(exc, TimeoutError):
        return cannot_connect(url, TimeoutError("the WebSocket handshake timed out"))
    return cannot_connect(url, exc)


class _FrameFilter:
    """Turns frames into items for one turn: skips what is left of an abandoned
    earlier turn on the same socket (up to its status) and notes the turn's own status."""

    def __init__(self, skip_statuses: int) -> None:
        self.skip = skip_statuses
        self.done = False

    def accept(self, frame: str | bytes) -> Item | None:
        if isinstance(frame, bytes):
            raise ProtocolError("the server sent a binary WebSocket frame; nbchat sends text frames only")
        item = decode_ws(frame, time.time())
        if self.skip:
            self.skip -= isinstance(item, Status)
            return None
        self.done = isinstance(item, Status)
        return item


class _FrameReader(_FrameFilter):
    def __init__(self, ws: ClientConnection, url: str, timeout: float, skip_statuses: int) -> None:
        super().__init__(skip_statuses)
        self.ws, self.url, self.timeout = ws, url, timeout

    def __iter__(self) -> _FrameReader:
        return self

    def __next__(self) -> Item:
        while not self.done:
            try:
                frame = self.ws.recv(timeout=self.timeout)
            except TimeoutError as exc:
                raise timed_out(self.url, self.timeout) from exc
            except ConnectionClosed as exc:
                raise closed_error(exc, self.url) from exc
            item = self.accept(frame)
            if item is not None:
                return item
        raise StopIteration


class WebSocketClient(ChatClient):
    """Sync WebSocket client; interrupt() may be called from any thread."""

    transport = "ws"

    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 uid: str | None = None) -> None:
        super().__init__(url, token=token, timeout=timeout, uid=uid)
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._reader: _FrameReader | None = None
        self._lock = threading.Lock()  # one socket, opened once, even if two threads start turns

    def _start_turn(self, request: TurnRequest) -> TurnStream:
        return self._start(dumps(encode_turn_request(request)))

    def resume(self, after: int, *, turn_id: str | None = None) -> TurnStream:
        return self._start(dumps({"resume": _resume_spec(after, turn_id)}), after=after, turn_id=turn_id)

    def close(self) -> None:
        with self._lock:
            self._stack.close()
            self._ws = None

    def _socket(self) -> ClientConnection:
        if self._ws is not None and self._ws.state is State.OPEN:
            return self._ws
        self._stack.close()
        self._ws, self._reader = None, None
        url = ws_url(self.url, self.uid)
        try:
            # entered as a context manager (websockets asks for it) and held open across turns
            self._ws = self._stack.enter_context(connect_ws(
                url, additional_headers=auth_headers(self.token), open_timeout=min(self.timeout, 10),
                max_size=MAX_FRAME))
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise handshake_error(exc, self.url) from exc
        return self._ws

    def _start(self, frame: str, *, after: int | None = None, turn_id: str | None = None) -> TurnStream:
        with self._lock:
            reader = self._send(frame)

        def interrupt() -> None:
            # only while this turn is the socket's current one: an abandoned turn must not stop the next
            if self._reader is reader and not reader.done:
                with contextlib.suppress(ConnectionClosed):  # a closed socket ends the stream anyway
                    reader.ws.send(INTERRUPT_FRAME)

        def close() -> None:
            # Mid-turn, dropping the socket is the only way to stop reading without leaving
            # frames to the next turn; the server keeps the turn for its grace period.
            if self._reader is reader and not reader.done:
                reader.ws.close()

        return TurnStream(reader, interrupt=interrupt, close=close, turn_id=turn_id, after=after)

    def _send(self, frame: str) -> _FrameReader:
        """Send on the open socket; a socket found closed on sending is reopened once."""
        for attempt in (1, 2):
            ws = self._socket()
            # an earlier turn left unread: the server ends it ([INTERRUPTED]) before this one starts
            unfinished = int(self._reader is not None and not self._reader.done)
            reader = _FrameReader(ws, self.url, self.timeout, unfinished)
            try:
                ws.send(frame)
            except ConnectionClosed as exc:
                if attempt == 2:
                    raise closed_error(exc, self.url) from exc
                continue
            self._reader = reader
            return reader
        raise AssertionError("unreachable")


def _resume_spec(after: int, turn_id: str | None) -> dict[str, Any]:
    return {"after": after, "turn": turn_id} if turn_id else {"after": after}


class _AsyncFrameReader(_FrameFilter):
    def __init__(self, ws: AsyncConnection, url: str, timeout: float, skip_statuses: int) -> None:
        super().__init__(skip_statuses)
        self.ws, self.url, self.timeout = ws, url, timeout

    def __aiter__(self) -> _AsyncFrameReader:
        return self

    async def __anext__(self) -> Item:
        while not self.done:
            try:
                # cancelling recv() loses no data (websockets documents this), so a timeout is safe
                frame = await asyncio.wait_for(self.ws.recv(), self.timeout)
            except asyncio.TimeoutError as exc:  # not yet the builtin TimeoutError on Python 3.10
                raise timed_out(self.url, self.timeout) from exc
            except ConnectionClosed as exc:
                raise closed_error(exc, self.url) from exc
            item = self.accept(frame)
            if item is not None:
                return item
        raise StopAsyncIteration


class AsyncWebSocketClient(AsyncChatClient):
    """Async WebSocket client: one socket per client, as the sync one."""

    transport = "ws"

    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 uid: str | None = None) -> None:
        super().__init__(url, token=token, timeout=timeout, uid=uid)
        self._ws: AsyncConnection | None = None
        self._stack = contextlib.AsyncExitStack()
        self._reader: _AsyncFrameReader | None = None

    async def _start_turn(self, request: TurnRequest) -> AsyncTurnStream:
        return await self._start(dumps(encode_turn_request(request)))

    async def _resume(self, after: int, turn_id: str | None) -> AsyncTurnStream:
        return await self._start(dumps({"resume": _resume_spec(after, turn_id)}), after=after, turn_id=turn_id)

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._ws = None

    async def _socket(self) -> AsyncConnection:
        if self._ws is not None and self._ws.state is State.OPEN:
            return self._ws
        await self._stack.aclose()
        self._ws, self._reader = None, None
        url = ws_url(self.url, self.uid)
        try:
            self._ws = await self._stack.enter_async_context(aconnect_ws(
                url, additional_headers=auth_headers(self.token), open_timeout=min(self.timeout, 10),
                max_size=MAX_FRAME))
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise handshake_error(exc, self.url) from exc
        return self._ws

    async def _start(self, frame: str, *, after: int | None = None,
                     turn_id: str | None = None) -> AsyncTurnStream:
        reader = await self._send(frame)

        async def interrupt() -> None:
            if self._reader is reader and not reader.done:
                with contextlib.suppress(ConnectionClosed):
                    await reader.ws.send(INTERRUPT_FRAME)

        async def close() -> None:
            if self._reader is reader and not reader.done:
                await reader.ws.close()

        return AsyncTurnStream(reader, interrupt=interrupt, close=close, turn_id=turn_id, after=after)

    async def _send(self, frame: str) -> _AsyncFrameReader:
        for attempt in (1, 2):
            ws = await self._socket()
            unfinished = int(self._reader is not None and not self._reader.done)
            reader = _AsyncFrameReader(ws, self.url, self.timeout, unfinished)
            try:
                await ws.send(frame)
            except ConnectionClosed as exc:
                if attempt == 2:
                    raise closed_error(exc, self.url) from exc
                continue
            self._reader = reader
            return reader
        raise AssertionError("unreachable")
