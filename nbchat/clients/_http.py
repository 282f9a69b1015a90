"""The I/O shared by the HTTP transports (SSE, NDJSON, OpenAI stream), sync and async.

Each transport module only says which request starts or resumes a turn and
which sans-I/O :class:`ItemDecoder` turns the response bytes into items; the
loops here feed it whatever byte chunks httpx delivers, map httpx's failures
onto nbchat's errors, and interrupt through ``POST /turns/{id}/interrupt``
with the id from the ``X-NBChat-Turn`` response header.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..wire.contract import TURN_HEADER, interrupt_path
from ..wire.decoders import ItemDecoder
from ..wire.errors import ResumeError
from ..wire.events import Item, TurnRequest
from ..wire.protocol import dumps
from ._common import (
    DEFAULT_TIMEOUT,
    AsyncChatClient,
    AsyncTurnStream,
    ChatClient,
    TurnStream,
    auth_headers,
)
from ._errors import broken, cannot_connect, error_from_status, timed_out


@dataclass(frozen=True)
class Target:
    """One streaming request: what to send and how to decode the answer."""

    method: str
    path: str
    decoder: Callable[[], ItemDecoder]
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class HTTPTransport:
    """What a transport module fills in: the requests to start and to resume a turn."""

    def turn_target(self, request: TurnRequest) -> Target:
        raise NotImplementedError

    def resume_target(self, after: int, turn_id: str | None, uid: str) -> Target:
        raise NotImplementedError


def _timeout(timeout: float) -> httpx.Timeout:
    # the read timeout is the gap allowed between two pieces; connecting should be quick on loopback
    return httpx.Timeout(timeout, connect=min(timeout, 10.0))


class _HTTPConfig:
    """What both HTTP clients do alike: build requests against the server's URL with its token.

    Requests carry their own absolute URL, token and timeout, so a caller's own
    ``http_client=`` (TLS settings, proxies, ``httpx.MockTransport`` in tests)
    needs no base URL or headers of its own."""

    url: str
    token: str | None
    timeout: float

    def _request(self, http: httpx.Client | httpx.AsyncClient, target: Target) -> httpx.Request:
        headers = {**auth_headers(self.token), **target.headers}
        content = None
        if target.body is not None:
            content = dumps(target.body).encode()
            headers["content-type"] = "application/json"
        return http.build_request(target.method, self.url + target.path, content=content,
                                  params=target.params or None, headers=headers, timeout=_timeout(self.timeout))

    def _interrupt_request(self, http: httpx.Client | httpx.AsyncClient, turn_id: str) -> httpx.Request:
        return http.build_request("POST", self.url + interrupt_path(turn_id), headers=auth_headers(self.token),
                                  timeout=_timeout(self.timeout))


def _send_error(url: str, timeout: float, exc: httpx.TransportError) -> Exception:
    """A request that got no answer: never connected, no answer in time, or dropped."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return cannot_connect(url, exc)
    if isinstance(exc, httpx.TimeoutException):
        return timed_out(url, timeout)
    return broken(url, exc)


def _stream_error(url: str, timeout: float, exc: Exception) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return timed_out(url, timeout)
    return broken(url, exc)


class HTTPChatClient(_HTTPConfig, HTTPTransport, ChatClient):
    """A sync client over one httpx.Client (its pool is thread-safe, so interrupt() may run on any thread).

    ``http_client`` is the caller's own client, left open on :meth:`close`."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT, uid: str | None = None,
                 http_client: httpx.Client | None = None) -> None:
        super().__init__(url, token=token, timeout=timeout, uid=uid)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    def _start_turn(self, request: TurnRequest) -> TurnStream:
        return self._open(self.turn_target(request))

    def resume(self, after: int, *, turn_id: str | None = None) -> TurnStream:
        return self._open(self.resume_target(after, turn_id or self.last_turn_id, self.uid), after=after)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _open(self, target: Target, *, after: int | None = None) -> TurnStream:
        response = self._send(target, resuming=after is not None)
        turn_id = response.headers.get(TURN_HEADER)
        self.last_turn_id = turn_id or self.last_turn_id
        # every response this turn reads from, so that close() ends whichever is current
        attached = [(self._items(response, target.decoder()), response)]

        def interrupt() -> None:
            self._interrupt(turn_id, response)

        def reattach(after: int) -> Iterator[Item]:
            if not turn_id:
                raise ResumeError("the server did not name the turn, so it cannot be reattached")
            again = self.resume_target(after, turn_id, self.uid)
            resp = self._send(again, resuming=True)
            attached.append((self._items(resp, again.decoder()), resp))
            return attached[-1][0]

        def close() -> None:
            for items, resp in attached:
                items.close()
                resp.close()

        return TurnStream(attached[0][0], interrupt=interrupt, close=close, turn_id=turn_id, after=after,
                          reattach=reattach)

    def _send(self, target: Target, *, resuming: bool) -> httpx.Response:
        try:
            response = self._http.send(self._request(self._http, target), stream=True)
        except httpx.TransportError as exc:
            raise _send_error(self.url, self.timeout, exc) from exc
        if response.is_success and response.status_code != 204:
            return response
        try:
            body = response.read()
        except httpx.TransportError as exc:
            raise broken(self.url, exc) from exc
        finally:
            response.close()
        if resuming and response.status_code == 204:
            raise ResumeError("nothing to resume: no turn for this client, or it already ended; start a new turn")
        raise error_from_status(response.status_code, body, self.url, resuming=resuming)

    def _items(self, response: httpx.Response, decoder: ItemDecoder) -> Generator[Item, None, None]:
        try:
            for data in response.iter_bytes():
                yield from decoder.feed(data, time.time())
            yield from decoder.flush(time.time())
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _stream_error(self.url, self.timeout, exc) from exc
        finally:
            response.close()

    def _interrupt(self, turn_id: str | None, response: httpx.Response) -> None:
        if turn_id is None:
            response.close()  # a server that did not name the turn: dropping the stream is all we can do
            return
        try:
            answer = self._http.send(self._interrupt_request(self._http, turn_id))
        except httpx.TransportError as exc:
            raise cannot_connect(self.url, exc) from exc
        # 404: the turn already ended and expired, which is what the caller wanted
        if answer.status_code not in (200, 404):
            raise error_from_status(answer.status_code, answer.content, self.url)


class AsyncHTTPChatClient(_HTTPConfig, HTTPTransport, AsyncChatClient):
    """The asyncio twin of :class:`HTTPChatClient`, over one httpx.AsyncClient."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT, uid: str | None = None,
                 http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(url, token=token, timeout=timeout, uid=uid)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()

    async def _start_turn(self, request: TurnRequest) -> AsyncTurnStream:
        return await self._open(self.turn_target(request))

    async def _resume(self, after: int, turn_id: str | None) -> AsyncTurnStream:
        return await self._open(self.resume_target(after, turn_id or self.last_turn_id, self.uid), after=after)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _open(self, target: Target, *, after: int | None = None) -> AsyncTurnStream:
        response = await self._send(target, resuming=after is not None)
        turn_id = response.headers.get(TURN_HEADER)
        self.last_turn_id = turn_id or self.last_turn_id
        items = self._items(response, target.decoder())

        async def interrupt() -> None:
            await self._interrupt(turn_id, response)

        async def close() -> None:
            await items.aclose()
            await response.aclose()

        return AsyncTurnStream(items, interrupt=interrupt, close=close, turn_id=turn_id, after=after)

    async def _send(self, target: Target, *, resuming: bool) -> httpx.Response:
        try:
            response = await self._http.send(self._request(self._http, target), stream=True)
        except httpx.TransportError as exc:
            raise _send_error(self.url, self.timeout, exc) from exc
        if response.is_success and response.status_code != 204:
            return response
        try:
            body = await response.aread()
        except httpx.TransportError as exc:
            raise broken(self.url, exc) from exc
        finally:
            await response.aclose()
        if resuming and response.status_code == 204:
            raise ResumeError("nothing to resume: no turn for this client, or it already ended; start a new turn")
        raise error_from_status(response.status_code, body, self.url, resuming=resuming)

    async def _items(self, response: httpx.Response, decoder: ItemDecoder) -> AsyncGenerator[Item, None]:
        try:
            async for data in response.aiter_bytes():
                for item in decoder.feed(data, time.time()):
                    yield item
            for item in decoder.flush(time.time()):
                yield item
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _stream_error(self.url, self.timeout, exc) from exc
        finally:
            await response.aclose()

    async def _interrupt(self, turn_id: str | None, response: httpx.Response) -> None:
        if turn_id is None:
            await response.aclose()
            return
        try:
            answer = await self._http.send(self._interrupt_request(self._http, turn_id))
        except httpx.TransportError as exc:
            raise cannot_connect(self.url, exc) from exc
        if answer.status_code not in (200, 404):
            raise error_from_status(answer.status_code, answer.content, self.url)
