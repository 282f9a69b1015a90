"""One set of assertions over every transport, through nbchat's own clients:
identical events, every status end to end, resume after a dropped connection."""

from __future__ import annotations

import random
import threading

import pytest

from nbchat.clients import TRANSPORTS, connect
from nbchat.server.serving import ServerHandle
from nbchat.wire.errors import RequestError
from nbchat.wire.events import Chunk, End, Event, Message, Status, TurnRequest
from tests.helpers import LONG_MESSAGE, TOKEN, FailBackend, RecordingBackend, ServerFactory, StallBackend

ALL = list(TRANSPORTS)
SEED = ["ws", "sse", "stream"]


def run(server: ServerHandle, transport: str, request: TurnRequest | str) -> list[Event]:
    with connect(server.url, token=TOKEN, transport=transport, timeout=20) as client:
        return list(client.stream(request))


def split(events: list[Event]) -> tuple[list[Chunk], End]:
    chunks = [e for e in events if isinstance(e, Chunk)]
    end = events[-1]
    assert isinstance(end, End)
    assert events[:-1] == chunks, "the status must come last, exactly once"
    return chunks, end


def test_identical_events_on_every_transport(echo_server: ServerHandle) -> None:
    request = TurnRequest(user_message=Message("user", LONG_MESSAGE),
                          conversation=(Message("system", "echo"), Message("assistant", "ok")))
    results = {t: split(run(echo_server, t, request)) for t in ALL}
    for transport, (chunks, end) in results.items():
        assert "".join(c.content for c in chunks) == LONG_MESSAGE, transport
        assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1)), transport
        assert end.status is Status.DONE, transport
        assert all(c.server_time is not None and c.received >= c.server_time - 0.05 for c in chunks), transport
    reference = [(c.content, c.seq) for c in results["ws"][0]]
    for transport, (chunks, _) in results.items():
        assert [(c.content, c.seq) for c in chunks] == reference, transport


@pytest.mark.parametrize("transport", ALL)
def test_tokens_status(echo_server: ServerHandle, transport: str) -> None:
    req = TurnRequest(user_message=Message("user", "abcdefghijklmnopqrstuvwxyz"), max_tokens=3)
    chunks, end = split(run(echo_server, transport, req))
    assert end.status is Status.TOKENS
    assert "".join(c.content for c in chunks) == "abcdefghijkl"


@pytest.mark.parametrize("transport", SEED)
def test_temperature_threshold_status(echo_server: ServerHandle, transport: str) -> None:
    req = TurnRequest(user_message=Message("user", "too hot"), temperature=2.5)
    chunks, end = split(run(echo_server, transport, req))
    assert end.status is Status.TEMPERATURE_THRESHOLD and chunks == []


def test_temperature_out_of_range_is_a_400_for_openai(echo_server: ServerHandle) -> None:
    with pytest.raises(RequestError) as info:
        run(echo_server, "openai", TurnRequest(user_message=Message("user", "x"), temperature=2.5))
    assert info.value.status == 400


@pytest.mark.parametrize("transport", ALL)
def test_model_timeout_status(make_server: ServerFactory, transport: str) -> None:
    server = make_server(StallBackend(before=2), model_timeout=0.3)
    chunks, end = split(run(server, transport, "x"))
    assert end.status is Status.MODEL_TIMEOUT
    assert "".join(c.content for c in chunks) == "piece0 piece1 "


@pytest.mark.parametrize("transport", ALL)
def test_error_status_carries_the_error(make_server: ServerFactory, transport: str) -> None:
    server = make_server(FailBackend())
    chunks, end = split(run(server, transport, "x"))
    assert end.status is Status.ERROR
    assert end.error is not None and "on purpose" in end.error.message
    assert "".join(c.content for c in chunks) == "partial "


@pytest.mark.parametrize("transport", ALL)
def test_interrupted_status_and_the_backend_stops(make_server: ServerFactory, transport: str) -> None:
    backend = RecordingBackend(count=100_000, interval=0.01)
    server = make_server(backend)
    stopper: threading.Thread | None = None
    with connect(server.url, token=TOKEN, transport=transport, timeout=20) as client:
        turn = client.stream("go")
        events: list[Event] = []
        for event in turn:
            events.append(event)
            if len(events) == 5:
                # from another thread, as the notebook's Stop button or a kernel interrupt would
                stopper = threading.Thread(target=turn.interrupt)
                stopper.start()
        assert stopper is not None
        stopper.join(5)
    chunks, end = split(events)
    assert end.status is Status.INTERRUPTED
    assert backend.cancelled.wait(2)
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))


@pytest.mark.parametrize("transport", SEED)
def test_resume_after_a_dropped_connection(make_server: ServerFactory, transport: str) -> None:
    server = make_server(rate=1000.0)  # ~370 pieces: each cut (60 at most) comes while the turn generates
    rng = random.Random(transport)
    for _ in range(3):
        cut = rng.randrange(1, 60)
        with connect(server.url, token=TOKEN, transport=transport, timeout=20) as client:
            turn = client.stream(LONG_MESSAGE)
            first: list[Chunk] = []
            for event in turn:
                assert isinstance(event, Chunk)
                first.append(event)
                if len(first) == cut:
                    break
            turn_id = turn.turn_id
            turn.close()  # the connection drops without an interrupt
            rest = list(client.resume(cut, turn_id=turn_id))
        chunks, end = split([*first, *rest])
        assert end.status is Status.DONE
        assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
        assert "".join(c.content for c in chunks).encode() == LONG_MESSAGE.encode()


@pytest.mark.parametrize("transport", SEED)
async def test_async_clients_yield_the_same_events(echo_server: ServerHandle, transport: str) -> None:
    from nbchat.clients import aconnect

    async with aconnect(echo_server.url, token=TOKEN, transport=transport, timeout=20) as client:
        turn = await client.stream(LONG_MESSAGE)
        events = [e async for e in turn]
    chunks, end = split(events)
    assert end.status is Status.DONE
    assert "".join(c.content for c in chunks) == LONG_MESSAGE
    sync_chunks, _ = split(run(echo_server, transport, LONG_MESSAGE))
    assert [(c.content, c.seq) for c in chunks] == [(c.content, c.seq) for c in sync_chunks]
