"""The WebSocket transport: ``/websocket/{uid}``.

One socket carries any number of turns, one at a time. A receive loop reads
client frames (a turn request, ``""`` for the queued turn, ``[INTERRUPT]``, a
resume request) while a pump task sends the current turn's events, so an
interrupt is read even while an answer streams. Frames follow
:func:`nbchat.wire.protocol.encode_ws`. A request the server rejects is answered
with an error record and ``[ERROR]`` (the socket stays open), so every
request gets exactly one status; one rejected while a turn streams is sent
right after that turn's status, never between its frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.frames import CloseCode

from ..wire.contract import INTERRUPT_FRAME, RESUME_KEY
from ..wire.errors import RequestError, ResumeError
from ..wire.events import Chunk, End, ErrorInfo, Event, Status
from ..wire.protocol import encode_chunk_record, encode_record, encode_ws
from ..wire.requests import parse_json_text, parse_position, parse_turn_request
from .config import Settings
from .context import context_of
from .direct import text_writer
from .owned import store_for
from .store import Reader, TurnStore
from .streaming import send_message, send_now, server_send
from .turn import TurnState

log = logging.getLogger("nbchat.server.ws")


class Session:
    """The state of one socket: its uid, the turn it streams and the pump task."""

    def __init__(self, websocket: WebSocket, store: TurnStore, settings: Settings) -> None:
        self.ws = websocket
        self.uid: str = websocket.path_params["uid"]
        self.store = store
        self.settings = settings
        #: the id of the turn this socket streams (or streamed last)
        self.turn: str | None = None
        self.pump: asyncio.Task[None] | None = None
        #: rejections made while a turn streams: they go out after its frames (see :meth:`reject`)
        self._deferred: list[str] = []
        #: frames of a turn go past the middleware (see server_send); they act on the handshake only
        self._send = server_send(websocket.scope, websocket.send)
        #: a live chunk's frame written at once, where the server offers it (see nbchat.server.direct)
        self._write = text_writer(websocket.scope)

    async def handle(self, text: str) -> None:
        if len(text.encode()) > self.settings.max_body_bytes:
            await self.ws.close(CloseCode.MESSAGE_TOO_BIG, f"message over {self.settings.max_body_bytes} bytes")
            return
        if text == INTERRUPT_FRAME:
            if self.turn is not None:
                await self.store.interrupt(self.turn)
            return
        try:
            await self._dispatch(text)
        except ResumeError as exc:
            await self.reject("resume_unavailable", str(exc))
        except RequestError as exc:
            await self.reject(exc.code, str(exc))

    async def _dispatch(self, text: str) -> None:
        if text == "":
            turn = await self.store.latest(self.uid)
            if turn is not None and turn.id == self.turn and self.streaming:
                return  # this socket already streams that turn: it gets its one status there, not twice
            if turn is None or turn.state is TurnState.ENDED:
                raise RequestError(f"no queued turn for uid {self.uid!r}: POST /turns first, or send a turn request",
                                   code="no_pending_turn")
            await self.switch_to(turn.id, 0)
            return
        obj = parse_json_text(text)
        if isinstance(obj, dict) and RESUME_KEY in obj:
            await self.resume(obj[RESUME_KEY])
            return
        request = parse_turn_request(obj)
        await self.stop_current()
        await self.switch_to((await self.store.create(request, uid=self.uid)).id, 0)

    @property
    def streaming(self) -> bool:
        return self.pump is not None and not self.pump.done()

    async def resume(self, spec: object) -> None:
        if not isinstance(spec, dict):
            raise RequestError('resume takes {"resume": {"after": SEQ, "turn": "optional id"}}')
        after = parse_position(spec.get("after", 0))
        turn_id = spec.get("turn")
        turn = await self.store.get(turn_id) if isinstance(turn_id, str) else await self.store.latest(self.uid)
        if turn is None:
            raise ResumeError(f"no turn to resume for uid {self.uid!r}")
        await self.switch_to(turn.id, after)

    async def stop_current(self, interrupt: bool = True) -> None:
        """End the pump of the current turn; a new question interrupts the one still streaming."""
        if self.turn is not None and interrupt:
            await self.store.interrupt(self.turn)
        if self.pump is not None:
            if not interrupt:
                self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pump
            self.pump = None
        await self._send_deferred()  # a cancelled pump did not send them: before the next turn's frames

    async def switch_to(self, turn: str, after: int) -> None:
        """Stream ``turn`` from ``after`` on (starting it when it is queued); one pump per socket, so a
        previous stream stops first (without interrupting its turn: a resume may switch back to it)."""
        sub = await self.store.open(turn, after)  # raises before anything changes when the position is gone
        await self.stop_current(interrupt=False)
        self.turn = turn
        self.pump = asyncio.get_running_loop().create_task(self._pump(sub))

    async def _pump(self, sub: Reader) -> None:
        write = self._write

        def frame(text: str) -> asyncio.Future[None] | None:
            if write is not None and write(text):  # the client keeps up: written, no send to run
                return None
            return send_message(self._send, {"type": "websocket.send", "text": text})

        def frames(events: list[Event]) -> asyncio.Future[None] | None:
            if len(events) == 1 and type(events[0]) is Chunk:  # a live chunk: one frame
                return frame(encode_chunk_record(events[0]))
            return send_now(self._send, [{"type": "websocket.send", "text": text}
                                         for event in events for text in encode_ws(event)])

        def record(content: str, seq: int, server_time: float | None) -> asyncio.Future[None] | None:
            return frame(encode_record(content, seq, server_time))  # a live chunk, from its fields

        async with sub:
            try:
                while not sub.done:
                    pending = frames(await sub.next_batch(direct=frames, live=record))
                    if pending is not None:
                        await pending
            except OSError:  # the client went away mid-frame: what Starlette's send would have said
                self.ws.application_state = WebSocketState.DISCONNECTED
                raise WebSocketDisconnect(code=1006) from None
        await self._send_deferred()
        if self.store.closing:
            await self.ws.close(CloseCode.GOING_AWAY, "server shutting down")

    async def reject(self, code: str, message: str) -> None:
        """Answer a request with an error record and ``[ERROR]``. While a turn streams, they wait for
        its status: a client reads a socket's statuses in the order of its requests, and an
        ``[ERROR]`` among the turn's chunks would end that turn in its eyes."""
        self._deferred.extend(encode_ws(End(status=Status.ERROR, error=ErrorInfo(code, message))))
        if not self.streaming:
            await self._send_deferred()

    async def _send_deferred(self) -> None:
        while self._deferred:
            await self.ws.send_text(self._deferred.pop(0))


async def websocket_endpoint(websocket: WebSocket) -> None:
    context = context_of(websocket)
    session = Session(websocket, store_for(websocket), context.settings)
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                await session.reject("unsupported_frame",
                                     f"send text frames: a JSON turn request, \"\" or {INTERRUPT_FRAME}")
                continue
            await session.handle(text)
            if websocket.application_state is WebSocketState.DISCONNECTED:
                break
    except WebSocketDisconnect:
        pass
    except Exception:  # a bug must not drop the socket without a close frame, nor take the server down
        log.exception("unexpected error on a WebSocket")
        with contextlib.suppress(Exception):
            await websocket.close(CloseCode.INTERNAL_ERROR, "the server hit an unexpected error; see its log")
    finally:
        if session.pump is not None:
            session.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await session.pump
