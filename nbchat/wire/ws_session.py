"""The client's side of the WebSocket contract, sans-I/O: what to send, and
which received frames belong to the turn being read.

One socket carries a client's turns one after another. A reader may leave a
turn early (a ``break``), leaving its frames in flight; the server ends that
turn with a status as soon as the next turn's request arrives, so the next
turn first skips the old turn's frames up to that status. This object keeps
that bookkeeping, so the I/O layers (websockets' sync and asyncio clients in
:mod:`nbchat.clients.websocket`) are loops that only move frames: they send
what :class:`WebSocketSession` says and feed each received frame to the
turn's :class:`TurnFrames` until it is done.
"""

from __future__ import annotations

from typing import Any

from .contract import INTERRUPT_FRAME, RESUME_KEY
from .errors import ProtocolError
from .events import Item, Status, TurnRequest
from .protocol import decode_ws, dumps
from .requests import encode_turn_request


class TurnFrames:
    """One turn's view of the socket: frames in, the turn's items out."""

    def __init__(self, skip_statuses: int = 0) -> None:
        #: statuses still to come from abandoned earlier turns, whose frames are not this turn's
        self.skip = skip_statuses
        #: this turn's status has arrived: nothing more of it is on the socket
        self.done = False

    def receive(self, frame: str | bytes, received: float) -> Item | None:
        """The item a frame carries for this turn; None for an earlier turn's frame."""
        if self.done:
            raise ProtocolError("a frame was fed to a turn that has already ended")
        if isinstance(frame, bytes):
            raise ProtocolError("the server sent a binary WebSocket frame; nbchat sends text frames only")
        item = decode_ws(frame, received)
        if self.skip:
            self.skip -= isinstance(item, Status)
            return None
        self.done = isinstance(item, Status)
        return item


class WebSocketSession:
    """The turns of one socket: which one the incoming frames are for, and the frames to send."""

    interrupt_frame = INTERRUPT_FRAME

    def __init__(self) -> None:
        self._current: TurnFrames | None = None

    @staticmethod
    def turn_frame(request: TurnRequest) -> str:
        return dumps(encode_turn_request(request))

    @staticmethod
    def resume_frame(after: int, turn_id: str | None) -> str:
        spec: dict[str, Any] = {"after": after, "turn": turn_id} if turn_id else {"after": after}
        return dumps({RESUME_KEY: spec})

    def begin(self) -> TurnFrames:
        """A new turn on this socket, about to be requested: it owns the frames from now on."""
        self._current = TurnFrames(int(self.mid_turn))
        return self._current

    def is_live(self, turn: TurnFrames) -> bool:
        """Whether ``turn`` is the socket's current turn and has not ended: only then may an
        interrupt or a close be sent for it (an abandoned turn must not stop the next one)."""
        return self._current is turn and not turn.done

    @property
    def mid_turn(self) -> bool:
        """Whether a turn's frames may still be coming on this socket."""
        return self._current is not None and not self._current.done

    def reset(self) -> None:
        """A new socket: no earlier turn's frames can arrive on it."""
        self._current = None
