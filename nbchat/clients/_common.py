"""What every client shares: the turn streams that turn decoded wire items into
events, and the client base classes (failures are mapped in :mod:`._errors`).

A transport only has to supply an iterator of decoded items (chunks, error
records, statuses, as :mod:`nbchat.wire.protocol` decodes them) and a way to ask
the server to interrupt; :class:`TurnStream` and :class:`AsyncTurnStream` do
the rest, so every transport yields the same events and raises the same errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from ..wire.contract import DEFAULT_MAX_TOKENS
from ..wire.errors import NBChatConnectionError, NBChatError, RequestError, ResumeError
from ..wire.events import Chunk, End, Event, Item, Message, Status, TurnRequest
from ..wire.protocol import EventAssembler
from ._errors import RESUME_CODES


def as_messages(conversation: Iterable[Message | Mapping[str, Any]]) -> tuple[Message, ...]:
    """``conversation=`` as messages: :class:`Message` objects, or dicts shaped like the OpenAI
    API's (``{"role": "user", "content": "..."}``); TypeError naming the parameter otherwise."""
    if isinstance(conversation, (str, bytes, Mapping)):
        raise TypeError(f"conversation= takes a list of messages, not a {type(conversation).__name__}")
    out: list[Message] = []
    for i, message in enumerate(conversation):
        if isinstance(message, Message):
            out.append(message)
            continue
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise TypeError(f"conversation[{i}] must be a Message or a dict with 'role' (system, user or assistant) "
                            f"and a string 'content', not {message!r:.80}")
        out.append(Message(role, content))
    return tuple(out)


def as_request(request: TurnRequest | str, uid: str | None = None, *, system: str | None = None,
               conversation: Iterable[Message | Mapping[str, Any]] = (), temperature: float | None = None,
               max_tokens: int | None = DEFAULT_MAX_TOKENS, model: str | None = None) -> TurnRequest:
    """A string is the user message, sent with the given options (``max_tokens=None``:
    no limit but the model's; ``temperature=None``: the server's default for its model);
    a :class:`TurnRequest` already carries them. The client's uid is added so that a
    resume by uid finds the turn."""
    if isinstance(request, str):
        system_message = (Message("system", system),) if system is not None else ()
        request = TurnRequest(user_message=Message("user", request),
                              conversation=(*system_message, *as_messages(conversation)),
                              temperature=temperature, max_tokens=max_tokens, model=model)
    elif (system is not None or conversation or model is not None or temperature is not None
          or max_tokens != DEFAULT_MAX_TOKENS):
        raise TypeError("options go with a message string; a TurnRequest carries its own")
    if uid is not None and request.uid is None:
        request = dataclasses.replace(request, uid=uid)
    return request


def auth_headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


DEFAULT_TIMEOUT = 60.0
"""Seconds a client waits for the next piece of an answer."""


# ---------------------------------------------------------------- turn streams


class _TurnState:
    """What the sync and async turn streams share: pairing items into events,
    the last seq seen, and the end of a turn whose connection was cut by an interrupt."""

    def __init__(self, turn_id: str | None, after: int | None) -> None:
        self.turn_id = turn_id
        #: the last seq received (on a resumed stream, the seq it resumed after until more arrives)
        self.last_seq = after or 0
        self.end: End | None = None
        self._resuming = after is not None
        self._assembler = EventAssembler()
        # an Event, not a bool: interrupt() may run on another thread (a kernel interrupt, a Stop button)
        self._interrupt_asked = threading.Event()

    def _feed(self, item: Item) -> Event | None:
        try:
            event = self._assembler.feed(item, time.time())
        except RequestError as exc:
            if self._resuming and exc.code in RESUME_CODES:
                raise ResumeError(f"cannot resume: {exc}; start a new turn instead") from exc
            raise
        if isinstance(event, Chunk):
            self.last_seq = event.seq
        elif isinstance(event, End):
            self.end = event
        return event

    def _cut(self, exc: NBChatConnectionError) -> End:
        """The stream stopped before its status. After an interrupt that is the
        interrupt taking effect (a read cut by Ctrl-C, a connection closed on
        purpose); otherwise the connection broke and ``exc`` says so."""
        if self._interrupt_asked.is_set():
            self.end = End(status=Status.INTERRUPTED, received=time.time())
            return self.end
        raise exc


def ended_early() -> NBChatConnectionError:
    return NBChatConnectionError(
        "the stream ended before the turn's status: the connection broke; "
        "reattach with client.resume(after=turn.last_seq, turn_id=turn.turn_id)"
    )


class TurnStream(_TurnState):
    """One turn's events as they arrive: :class:`Chunk` ... then exactly one :class:`End`.

    Iterate it from one thread; :meth:`interrupt` may be called from any thread,
    after which the stream ends with ``End(INTERRUPTED)``. ``turn_id`` is the
    server's id when the transport told it; ``last_seq`` is the seq to resume after.

    A ``KeyboardInterrupt`` may cut a read short (a kernel interrupt in a
    notebook); call :meth:`interrupt` and keep iterating: a transport whose read
    cannot continue reattaches through ``reattach(last_seq)`` for the rest of the
    turn, up to its ``[INTERRUPTED]``.
    """

    def __init__(self, items: Iterator[Item], *, interrupt: Callable[[], None], close: Callable[[], None],
                 turn_id: str | None = None, after: int | None = None,
                 reattach: Callable[[int], Iterator[Item]] | None = None) -> None:
        super().__init__(turn_id, after)
        self._items = items
        self._send_interrupt = interrupt
        self._close = close
        self._reattach = reattach
        self._closed = False

    def __iter__(self) -> TurnStream:
        return self

    def __next__(self) -> Event:
        if self.end is not None:
            raise StopIteration
        while True:
            try:
                item = next(self._items, None)
                if item is None:
                    raise ended_early()
                event = self._feed(item)
            except NBChatConnectionError as exc:
                if self._reattached():
                    continue
                self.close()
                event = self._cut(exc)  # raises it again unless an interrupt explains it
            except NBChatError:
                self.close()
                raise
            if isinstance(event, End):
                self.close()
            if event is not None:
                return event

    def _reattached(self) -> bool:
        """After an interrupt, a stream cut short is picked up again once, after the last seq seen."""
        if self._reattach is None or not self._interrupt_asked.is_set():
            return False
        reattach, self._reattach = self._reattach, None
        try:
            self._items = reattach(self.last_seq)
        except NBChatError:
            return False  # the turn is gone: the interrupt has taken effect all the same
        return True

    def interrupt(self) -> None:
        """Ask the server to stop this turn (thread-safe, idempotent)."""
        if self.end is None and not self._interrupt_asked.is_set():
            self._interrupt_asked.set()
            self._send_interrupt()

    def close(self) -> None:
        """Stop reading; a running turn goes on for the server's grace period, so it can be resumed."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> TurnStream:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving the block ends the turn: one that is still running is interrupted, so the
        server stops generating now rather than after its grace period."""
        try:
            if self.end is None and not self._closed:
                with contextlib.suppress(NBChatError):  # the turn is being left either way
                    self.interrupt()
        finally:
            self.close()


class AsyncTurnStream(_TurnState):
    """The asyncio twin of :class:`TurnStream`: ``async for event in turn``,
    ``await turn.interrupt()``, ``await turn.aclose()``."""

    def __init__(self, items: AsyncIterator[Item], *, interrupt: Callable[[], Awaitable[None]],
                 close: Callable[[], Awaitable[None]], turn_id: str | None = None, after: int | None = None) -> None:
        super().__init__(turn_id, after)
        self._items = items
        self._send_interrupt = interrupt
        self._close = close
        self._closed = False

    def __aiter__(self) -> AsyncTurnStream:
        return self

    async def __anext__(self) -> Event:
        if self.end is not None:
            raise StopAsyncIteration
        try:
            event: Event | None = None
            while event is None:
                item = await anext(self._items, None)
                if item is None:
                    raise ended_early()
                event = self._feed(item)
        except NBChatConnectionError as exc:
            await self.aclose()
            event = self._cut(exc)
        except NBChatError:
            await self.aclose()
            raise
        if isinstance(event, End):
            await self.aclose()
        return event

    async def interrupt(self) -> None:
        """Ask the server to stop this turn (idempotent)."""
        if self.end is None and not self._interrupt_asked.is_set():
            self._interrupt_asked.set()
            await self._send_interrupt()

    async def aclose(self) -> None:
        """Stop reading; a running turn goes on for the server's grace period, so it can be resumed."""
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> AsyncTurnStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """As :meth:`TurnStream.__exit__`: a turn still running is interrupted, then closed."""
        try:
            if self.end is None and not self._closed:
                with contextlib.suppress(NBChatError):
                    await self.interrupt()
        finally:
            await self.aclose()


class AsyncTurnOpener:
    """What :meth:`AsyncChatClient.stream` returns: ``turn = await client.stream(...)``, or
    ``async with client.stream(...) as turn:`` (which ends the turn on leaving)."""

    def __init__(self, opening: Coroutine[Any, Any, AsyncTurnStream]) -> None:
        self._opening = opening
        self._turn: AsyncTurnStream | None = None

    def __await__(self) -> Generator[Any, None, AsyncTurnStream]:
        return self._opening.__await__()

    async def __aenter__(self) -> AsyncTurnStream:
        self._turn = await self._opening
        return self._turn

    async def __aexit__(self, *exc: object) -> None:
        if self._turn is not None:
            await self._turn.__aexit__(*exc)


# ---------------------------------------------------------------- clients


class _ClientConfig:
    def __init__(self, url: str, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 uid: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        #: names this client's turns on the server, so a resume by uid finds them
        self.uid = uid or uuid.uuid4().hex
        #: the id of the last turn streamed, when the transport tells it (the default for resume)
        self.last_turn_id: str | None = None


class ChatClient(_ClientConfig, ABC):
    """A connection to an nbchat server over one transport (made by :func:`nbchat.clients.connect`).

    ``with client.stream("Hello", temperature=0.2) as turn:`` then ``for event in turn``."""

    transport: str = ""

    def stream(self, request: TurnRequest | str, *, system: str | None = None,
               conversation: Iterable[Message | Mapping[str, Any]] = (), temperature: float | None = None,
               max_tokens: int | None = DEFAULT_MAX_TOKENS, model: str | None = None) -> TurnStream:
        """Start a turn: a message string with its options, or a :class:`TurnRequest`.

        ``conversation`` is the history before the message (:class:`Message` objects or
        OpenAI-shaped dicts), ``system`` a system prompt put first, ``temperature=None``
        the server's default for its model, ``max_tokens=None`` no limit but the model's."""
        return self._start_turn(as_request(request, self.uid, system=system, conversation=conversation,
                                           temperature=temperature, max_tokens=max_tokens, model=model))

    @abstractmethod
    def _start_turn(self, request: TurnRequest) -> TurnStream: ...

    @abstractmethod
    def resume(self, after: int, *, turn_id: str | None = None) -> TurnStream:
        """Reattach to a turn (by default this client's last one) and stream everything after seq ``after``."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncChatClient(_ClientConfig, ABC):
    """The asyncio twin of :class:`ChatClient` (made by :func:`nbchat.clients.aconnect`):
    ``async with client.stream(request) as turn:``, or ``turn = await client.stream(request)``.
    It closes with ``await client.aclose()`` (or ``async with aconnect(...)``)."""

    transport: str = ""

    def stream(self, request: TurnRequest | str, *, system: str | None = None,
               conversation: Iterable[Message | Mapping[str, Any]] = (), temperature: float | None = None,
               max_tokens: int | None = DEFAULT_MAX_TOKENS, model: str | None = None) -> AsyncTurnOpener:
        """Start a turn, as :meth:`ChatClient.stream`; the request is sent when awaited or entered."""
        request = as_request(request, self.uid, system=system, conversation=conversation,
                             temperature=temperature, max_tokens=max_tokens, model=model)
        return AsyncTurnOpener(self._start_turn(request))

    @abstractmethod
    async def _start_turn(self, request: TurnRequest) -> AsyncTurnStream: ...

    def resume(self, after: int, *, turn_id: str | None = None) -> AsyncTurnOpener:
        """Reattach to a turn, as :meth:`ChatClient.resume`."""
        return AsyncTurnOpener(self._resume(after, turn_id))

    @abstractmethod
    async def _resume(self, after: int, turn_id: str | None) -> AsyncTurnStream: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
