"""The WebSocket client's sans-I/O session: frames in, one turn's items out, no socket."""

from __future__ import annotations

import json

import pytest

from nbchat.wire.errors import ProtocolError
from nbchat.wire.events import Chunk, ErrorInfo, Message, Status, TurnRequest
from nbchat.wire.ws_session import TurnFrames, WebSocketSession


def chunk(text: str, seq: int) -> str:
    return json.dumps({"content": text, "seq": seq})


def feed(turn: TurnFrames, frames: list[str]) -> list[object]:
    items = []
    for frame in frames:
        if turn.done:
            break
        item = turn.receive(frame, 1.0)
        if item is not None:
            items.append(item)
    return items


def test_a_turn_yields_its_chunks_and_ends_at_its_status() -> None:
    turn = WebSocketSession().begin()
    items = feed(turn, [chunk("a", 1), chunk("b", 2), "[DONE]", chunk("late", 3)])
    assert [i.content for i in items if isinstance(i, Chunk)] == ["a", "b"]
    assert items[-1] is Status.DONE and turn.done


def test_an_error_record_comes_before_the_status() -> None:
    turn = WebSocketSession().begin()
    items = feed(turn, [json.dumps({"error": {"code": "backend_error", "message": "boom"}}), "[ERROR]"])
    assert isinstance(items[0], ErrorInfo) and items[0].code == "backend_error"
    assert items[1] is Status.ERROR


def test_the_next_turn_skips_an_abandoned_turn_up_to_its_status() -> None:
    session = WebSocketSession()
    first = session.begin()
    assert feed(first, [chunk("old", 1)]) and not first.done  # the reader left here
    second = session.begin()
    assert not session.is_live(first) and session.is_live(second)
    items = feed(second, [chunk("old", 2), "[INTERRUPTED]", chunk("new", 1), "[DONE]"])
    assert [i.content for i in items if isinstance(i, Chunk)] == ["new"]
    assert items[-1] is Status.DONE and not session.is_live(second)


def test_a_finished_turn_leaves_nothing_to_skip_and_a_new_socket_forgets_the_old_turn() -> None:
    session = WebSocketSession()
    feed(session.begin(), ["[DONE]"])
    assert feed(session.begin(), [chunk("x", 1), "[DONE]"])[0] == Chunk(content="x", seq=1, received=1.0)
    session.begin()  # abandoned mid-turn, then the socket is replaced
    session.reset()
    assert feed(session.begin(), [chunk("y", 1)])[0] == Chunk(content="y", seq=1, received=1.0)


def test_a_binary_frame_or_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="binary"):
        WebSocketSession().begin().receive(b"{}", 1.0)
    with pytest.raises(ProtocolError, match="neither JSON nor a status"):
        WebSocketSession().begin().receive("not json", 1.0)


def test_the_frames_it_sends() -> None:
    session = WebSocketSession()
    request = json.loads(session.turn_frame(TurnRequest(user_message=Message("user", "hi"))))
    assert request["userMessage"] == {"role": "user", "content": "hi"}
    assert json.loads(session.resume_frame(4, "t1")) == {"resume": {"after": 4, "turn": "t1"}}
    assert json.loads(session.resume_frame(4, None)) == {"resume": {"after": 4}}
    assert session.interrupt_frame == "[INTERRUPT]"
