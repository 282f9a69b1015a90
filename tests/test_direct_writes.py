"""The direct writers (nbchat.server.direct) write what the general ASGI send writes, byte for byte,
and step aside wherever the general send would do something else."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode

from nbchat.clients import connect
from nbchat.server import direct
from nbchat.server.direct import DIRECT_TEXT, DirectWebSocketProtocol, cycle_writer, text_frame
from nbchat.server.limits import Limits
from nbchat.server.serving import ServerHandle
from nbchat.wire.events import Chunk, End, Status
from tests.helpers import TOKEN, ServerFactory

PAYLOADS = ["", "a", "x" * 125, "x" * 126, "x" * 127, "é" * 63, "€" * 42, "y" * 65535, "z" * 65536, "🙂" * 20000,
            '{"content":"line\\nbreak \\"q\\"","seq":7,"ts":1700000000.123456}']


class Transport(asyncio.Transport):
    """Records what is written; never pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol


@pytest.mark.parametrize("text", PAYLOADS, ids=lambda t: f"{len(t.encode())}B")
def test_a_text_frame_is_the_frame_websockets_serializes(text: str) -> None:
    payload = text.encode()
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def _cycle(method: str = "POST") -> tuple[RequestResponseCycle, Transport]:
    transport = Transport()
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "path": "/", "headers": []},  # type: ignore[typeddict-item]
        transport=transport, flow=FlowControl(transport), logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"), access_log=False, default_headers=[],
        message_event=asyncio.Event(), expect_100_continue=False, keep_alive=True, on_response=lambda: None)
    return cycle, transport


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]}


@pytest.mark.parametrize("text", PAYLOADS, ids=lambda t: f"{len(t.encode())}B")
async def test_a_body_chunk_is_the_chunk_uvicorn_writes(text: str) -> None:
    body = (text + "\n").encode()
    general, general_out = _cycle()
    await general.send(START)  # type: ignore[arg-type]
    await general.send({"type": "http.response.body", "body": body, "more_body": True})
    fast, fast_out = _cycle()
    await fast.send(START)  # type: ignore[arg-type]
    head = len(fast_out.written)
    assert cycle_writer(fast)(body) is True
    assert bytes(fast_out.written) == bytes(general_out.written)
    assert bytes(fast_out.written[head:]) == b"%x\r\n%b\r\n" % (len(body), body)


async def test_the_body_writer_steps_aside_where_uvicorns_send_does_more() -> None:
    cycle, out = _cycle()
    write = cycle_writer(cycle)
    assert write(b"early\n") is False  # the response has not started
    await cycle.send(START)  # type: ignore[arg-type]
    written = len(out.written)
    assert write(b"") is False  # an empty body is no chunk (it would end the body)
    cycle.flow.write_paused = True
    assert write(b"behind\n") is False  # the client is behind: the general send waits
    cycle.flow.write_paused = False
    cycle.disconnected = True
    assert write(b"gone\n") is False
    assert len(out.written) == written
    head, _ = _cycle("HEAD")
    await head.send(START)  # type: ignore[arg-type]
    assert cycle_writer(head)(b"x\n") is False  # no body on a HEAD: the general send drops it
    fixed, _ = _cycle()
    await fixed.send({**START, "headers": [(b"content-length", b"2")]})  # type: ignore[arg-type]
    assert cycle_writer(fixed)(b"x\n") is False  # a fixed-length body is not chunked


HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def _websocket(deflate: bool = False) -> tuple[DirectWebSocketProtocol, Transport]:
    accepted = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        accepted.set()
        await receive()

    config = uvicorn.Config(app, ws_per_message_deflate=True)
    config.load()
    protocol = type("Proto", (DirectWebSocketProtocol,), {"limits": Limits()})(
        config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    extension = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b""
    protocol.data_received(HANDSHAKE + extension + b"\r\n")
    await asyncio.wait_for(accepted.wait(), 5)
    transport.written.clear()
    return protocol, transport


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "compressed"])
@pytest.mark.parametrize("text", PAYLOADS, ids=lambda t: f"{len(t.encode())}B")
async def test_websocket_messages_are_the_frames_uvicorn_sends(text: str, deflate: bool) -> None:
    general, general_out = await _websocket(deflate)
    fast, fast_out = await _websocket(deflate)
    assert fast.scope[DIRECT_TEXT] == fast.write_text  # type: ignore[literal-required]  # offered to the app
    assert bool(fast.conn.extensions) is deflate
    for message in (text, text, "next"):  # a compressed socket's frames depend on the ones before
        await general.send({"type": "websocket.send", "text": message})  # type: ignore[arg-type]
        assert fast.write_text(message) is True
    assert bytes(fast_out.written) == bytes(general_out.written)
    for proto in (general, fast):
        proto.connection_lost(None)


async def test_the_text_writer_steps_aside_where_the_general_send_does_more() -> None:
    paused, out = await _websocket()
    paused.pause_writing()
    assert paused.write_text("x") is False  # the client is behind: the general send waits
    paused.resume_writing()
    paused.connection_lost(None)
    assert paused.write_text("x") is False  # gone: the general send raises ClientDisconnected
    assert out.written == b""


def _events(server: ServerHandle, transport: str, text: str) -> list[Any]:
    with connect(server.url, token=TOKEN, transport=transport, timeout=20) as client:  # type: ignore[arg-type]
        return list(client.stream(text))


@pytest.mark.parametrize("transport", ["ws", "sse", "stream"])
def test_a_live_stream_goes_out_through_the_direct_writers(make_server: ServerFactory, transport: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[bytes | str] = []
    chunk_writer = direct.cycle_writer

    def countingcycle_writer(cycle: Any) -> Any:
        write = chunk_writer(cycle)

        def counting(body: bytes) -> bool:
            done = write(body)
            if done:
                written.append(body)
            return done

        return counting

    text_writer = DirectWebSocketProtocol.write_text

    def counting_text(self: DirectWebSocketProtocol, text: str) -> bool:
        done = text_writer(self, text)
        if done:
            written.append(text)
        return done

    monkeypatch.setattr(direct, "cycle_writer", countingcycle_writer)
    monkeypatch.setattr(DirectWebSocketProtocol, "write_text", counting_text)
    server = make_server(rate=200.0)
    text = "every chunk of this answer goes out through the direct writer " * 3
    events = _events(server, transport, text)
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert "".join(c.content for c in chunks) == text
    assert events[-1] == End(status=Status.DONE)
    assert len(written) >= len(chunks) // 2  # paced at 200/s: nearly every chunk written on its own, directly


@pytest.mark.parametrize("transport", ["ws", "stream"])
def test_a_uvicorn_without_the_state_the_writers_read_streams_through_its_own_send(
        make_server: ServerFactory, transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    offered: list[str] = []
    monkeypatch.setattr(direct, "CYCLE_STATE", (*direct.CYCLE_STATE, "renamed_in_a_later_uvicorn"))
    monkeypatch.setattr(direct, "SOCKET_STATE", (*direct.SOCKET_STATE, "renamed_in_a_later_uvicorn"))
    monkeypatch.setattr(direct, "cycle_writer", lambda cycle: offered.append("body") or (lambda body: False))
    monkeypatch.setattr(DirectWebSocketProtocol, "write_text", lambda self, text: offered.append("text") or False)
    server = make_server(rate=200.0)
    text = "the general send carries every chunk " * 3
    events = _events(server, transport, text)
    assert "".join(e.content for e in events if isinstance(e, Chunk)) == text
    assert events[-1] == End(status=Status.DONE)
    assert offered == []
