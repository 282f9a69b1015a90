"""The wire decoders, layer by layer and without I/O: SSE framing, NDJSON lines,
WebSocket frames and the OpenAI stream. Every encoding of a turn, fed to its
decoder whole, one byte at a time or split at random points, must give back
the same events."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbchat.wire.decoders import NDJSONItemDecoder, SSEItemDecoder
from nbchat.wire.errors import ProtocolError, RequestError
from nbchat.wire.events import Chunk, End, ErrorInfo, Event, Item, Status
from nbchat.wire.openai import CompletionEncoder, OpenAIItemDecoder
from nbchat.wire.protocol import (
    EventAssembler,
    LineDecoder,
    decode_ndjson_line,
    decode_ws,
    dumps,
    encode_chunk_record,
    encode_ndjson,
    encode_sse_event,
    encode_ws,
)
from nbchat.wire.sse import SSEDecoder, SSEMessage, encode_sse, encode_sse_comment
from tests.helpers import LONG_MESSAGE

# The shared long message, plus lone CRs, a NUL and a split-prone four-byte emoji at the end.
TEXT = LONG_MESSAGE + "lone\rCR, CRLF\r\n, NUL \0 and 'single' quotes \\n not a newline 🧪"
BOOM = ErrorInfo("backend_error", "the model crashed: \"out of memory\" 内存不足 🚑")


def turn_events(text: str, piece: int = 7, end: End | None = None) -> list[Event]:
    """A turn as the server would send it: pieces of ``text``, then a status."""
    chunks: list[Event] = [Chunk(text[i:i + piece], seq=n, server_time=1_700_000_000.25 + n)
                           for n, i in enumerate(range(0, len(text), piece), start=1)]
    return [*chunks, end or End(Status.DONE)]


def encode_openai(events: list[Event]) -> bytes:
    """The OpenAI stream of a turn, built with the server's own encoder."""
    encoder = CompletionEncoder("t1", "default")
    objects: list[object] = [encoder.role_chunk()]
    for event in events:
        objects.append(encoder.content_chunk(event) if isinstance(event, Chunk) else encoder.final_chunk(event))
    objects.append("[DONE]")
    return b"".join(encode_sse(SSEMessage(data=o if isinstance(o, str) else dumps(o))) for o in objects)


ENCODERS: dict[str, tuple[Callable[[list[Event]], bytes], Callable[[], object]]] = {
    "sse": (lambda events: b"".join(encode_sse_event(e) for e in events), SSEItemDecoder),
    "ndjson": (lambda events: b"".join(encode_ndjson(e) for e in events), NDJSONItemDecoder),
    "openai": (encode_openai, OpenAIItemDecoder),
}


def decode(transport: str, parts: Iterable[bytes]) -> list[Event]:
    """Feed byte pieces to a client's item decoder, then pair items into events."""
    decoder = ENCODERS[transport][1]()
    items: list[Item] = []
    for part in parts:
        items += decoder.feed(part, 0.0)  # type: ignore[attr-defined]
    items += decoder.flush(0.0)  # type: ignore[attr-defined]
    assembler = EventAssembler()
    return [e for e in (assembler.feed(item, 0.0) for item in items) if e is not None]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# ---------------------------------------------------------------- every split gives the same events


@pytest.mark.parametrize("transport", ENCODERS)
def test_whole_stream_round_trips(transport: str) -> None:
    events = turn_events(TEXT)
    assert decode(transport, [ENCODERS[transport][0](events)]) == events


@pytest.mark.parametrize("transport", ENCODERS)
def test_one_byte_at_a_time(transport: str) -> None:
    events = turn_events(TEXT, piece=13)
    data = ENCODERS[transport][0](events)
    assert decode(transport, (data[i:i + 1] for i in range(len(data)))) == events


@pytest.mark.parametrize("transport", ENCODERS)
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=60),
       piece=st.integers(min_value=1, max_value=40))
def test_random_split_points(transport: str, cuts: list[int], piece: int) -> None:
    events = turn_events(TEXT, piece=piece)
    data = ENCODERS[transport][0](events)
    assert decode(transport, split_at(data, cuts)) == events


@settings(max_examples=40, deadline=None)
@given(text=st.text(min_size=1, max_size=200), piece=st.integers(min_value=1, max_value=9))
def test_websocket_frames_round_trip_any_text(text: str, piece: int) -> None:
    events = turn_events(text, piece=piece)
    assembler = EventAssembler()
    frames = [frame for event in events for frame in encode_ws(event)]
    decoded = [assembler.feed(decode_ws(f, 0.0), 0.0) for f in frames]
    assert decoded == events


@settings(max_examples=40, deadline=None)
@given(text=st.text(min_size=1, max_size=200), cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=20))
def test_any_text_survives_every_http_encoding(text: str, cuts: list[int]) -> None:
    events = turn_events(text, piece=3)
    for transport, (encode, _) in ENCODERS.items():
        assert decode(transport, split_at(encode(events), cuts)) == events, transport


def test_websocket_long_message_split_at_every_piece_size() -> None:
    for piece in (1, 2, 3, 5, 64):
        events = turn_events(TEXT, piece=piece)
        assembler = EventAssembler()
        decoded = [assembler.feed(decode_ws(f, 0.0), 0.0) for e in events for f in encode_ws(e)]
        assert decoded == events
        assert "".join(e.content for e in decoded if isinstance(e, Chunk)) == TEXT


# ---------------------------------------------------------------- every status, native transports


ENDS = [End(s) for s in Status if s is not Status.ERROR] + [End(Status.ERROR, BOOM)]


@pytest.mark.parametrize("end", ENDS, ids=lambda e: e.status.value)
def test_every_status_round_trips_on_native_transports(end: End) -> None:
    events = turn_events("hi", end=end)
    for transport in ("sse", "ndjson"):
        assert decode(transport, [ENCODERS[transport][0](events)]) == events, transport
    assembler = EventAssembler()
    frames = [f for e in events for f in encode_ws(e)]
    assert [e for e in (assembler.feed(decode_ws(f, 0.0), 0.0) for f in frames) if e is not None] == events


@pytest.mark.parametrize("end", ENDS, ids=lambda e: e.status.value)
def test_every_status_round_trips_on_the_openai_stream(end: End) -> None:
    events = turn_events("hi", end=end)
    decoded = decode("openai", [encode_openai(events)])
    assert decoded[:-1] == events[:-1]
    last = decoded[-1]
    assert isinstance(last, End) and last.status is end.status
    if end.status is Status.ERROR:
        assert last.error == ErrorInfo("backend_error", BOOM.message)
    else:
        assert last.error is None


def test_error_record_precedes_error_status_on_the_wire() -> None:
    data = encode_sse_event(End(Status.ERROR, BOOM))
    msgs = SSEDecoder().feed(data)
    assert [m.id for m in msgs] == [None, "[ERROR]"]
    assert encode_ws(End(Status.ERROR, BOOM))[-1] == "[ERROR]"
    assert encode_ndjson(End(Status.ERROR, BOOM)).endswith(b'{"status":"[ERROR]"}\n')


# ---------------------------------------------------------------- SSE spec subtleties


def feed_all(*parts: bytes) -> list[SSEMessage]:
    decoder = SSEDecoder()
    return [m for p in parts for m in decoder.feed(p)]


def test_sse_comments_are_ignored() -> None:
    assert feed_all(encode_sse_comment("keep-alive"), b":\n\n", b": x\ndata: a\n: y\n\n") == [SSEMessage(data="a")]


def test_sse_one_leading_space_is_removed_no_more() -> None:
    assert feed_all(b"data:a\n\ndata: a\n\ndata:  a\n\n") == [SSEMessage("a"), SSEMessage("a"), SSEMessage(" a")]


def test_sse_cr_at_the_end_of_a_chunk_waits_for_a_possible_lf() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []  # the second CR may still be the start of a CR LF
    assert decoder.feed(b"\n") == [SSEMessage("a")]
    assert feed_all(b"data: b\rdata: c\r\r\n") == [SSEMessage("b\nc")]


def test_sse_every_line_ending_gives_the_same_messages() -> None:
    lf = b"id: 1\ndata: x\ndata: y\n\ndata: z\n\n"
    for ending in (b"\r\n", b"\r"):
        assert feed_all(lf.replace(b"\n", ending) + b"\n") == feed_all(lf)


def test_sse_multi_line_data_is_joined_with_lf_and_line_breaks_in_data_survive_encoding() -> None:
    assert feed_all(b"data: a\ndata:\ndata: b\n\n") == [SSEMessage("a\n\nb")]
    assert feed_all(encode_sse(SSEMessage(data="one\r\ntwo\rthree\nfour"))) == [SSEMessage("one\ntwo\nthree\nfour")]


def test_sse_id_with_nul_is_ignored_and_last_id_carries_over() -> None:
    assert feed_all(b"id: 1\0\ndata: x\n\n") == [SSEMessage("x")]
    decoder = SSEDecoder()
    msgs = decoder.feed(b"id: 7\ndata: a\n\nid: 8\0\ndata: b\n\n")
    assert [m.id for m in msgs] == ["7", "7"] and decoder.last_event_id == "7"


def test_sse_retry_must_be_ascii_digits() -> None:
    assert feed_all(b"retry: 1500\ndata: a\n\n")[0].retry == 1500
    for bad in ("15a", "-1", "١٢", " 1", ""):
        assert feed_all(f"retry: {bad}\ndata: a\n\n".encode())[0].retry is None, bad


def test_sse_empty_data_is_not_dispatched_but_its_id_counts() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 3\n\nevent: x\n\n") == []
    assert decoder.last_event_id == "3"


def test_sse_events_of_other_types_are_not_chunks() -> None:
    assert SSEItemDecoder().feed(b"event: ping\ndata: {}\n\n", 0.0) == []


# ---------------------------------------------------------------- NDJSON lines


def test_ndjson_multibyte_split_across_feeds_is_intact() -> None:
    line = (dumps({"content": "你好🚀", "seq": 1}) + "\n").encode()
    decoder = LineDecoder()
    out = [s for i in range(len(line)) for s in decoder.feed(line[i:i + 1])]
    assert out == [line[:-1].decode()]


def test_ndjson_invalid_utf8_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        LineDecoder().feed(b'{"content": "\xff\xfe", "seq": 1}\n')
    with pytest.raises(ProtocolError):
        NDJSONItemDecoder().feed(b'{"content": "\xe4\xbd", "seq": 1}\n', 0.0)  # a truncated character


def test_ndjson_crlf_blank_lines_and_a_last_line_without_newline() -> None:
    decoder = NDJSONItemDecoder()
    items = decoder.feed(b'{"content":"a","seq":1,"ts":2.5}\r\n\r\n', 0.0) + decoder.feed(b'{"status":"[DONE]"}', 0.0)
    items += decoder.flush(0.0)
    assert items == [Chunk("a", 1, server_time=2.5), Status.DONE]


@pytest.mark.parametrize("line", ['{"status": "[NOPE]"}', "[1, 2]", '{"content": 1, "seq": 1}', "not json",
                                  '{"content": "x", "seq": true}'])
def test_ndjson_lines_outside_the_contract_raise(line: str) -> None:
    with pytest.raises(ProtocolError):
        decode_ndjson_line(line, 0.0)


# ---------------------------------------------------------------- assembling items into events


def test_assembler_raises_on_data_after_the_status() -> None:
    assembler = EventAssembler()
    assembler.feed(Status.DONE, 0.0)
    with pytest.raises(ProtocolError):
        assembler.feed(Chunk("late", 2), 0.0)


def test_assembler_turns_a_request_error_record_into_request_error() -> None:
    assembler = EventAssembler()
    assert assembler.feed(ErrorInfo("invalid_request", "'userMessage' is required"), 0.0) is None
    with pytest.raises(RequestError) as info:
        assembler.feed(Status.ERROR, 0.0)
    assert info.value.code == "invalid_request"


def test_websocket_frames_outside_the_contract_raise() -> None:
    for frame in ("[NOPE]", "{", '{"content": "x"}'):
        with pytest.raises(ProtocolError):
            decode_ws(frame, 0.0)


# ---------------------------------------------------------------- the OpenAI stream


def openai_items(*objects: object) -> list[Item]:
    data = b"".join(encode_sse(SSEMessage(data=o if isinstance(o, str) else dumps(o))) for o in objects)
    decoder = OpenAIItemDecoder()
    return decoder.feed(data, 0.0) + decoder.flush(0.0)


def test_openai_stream_without_nbchat_fields_counts_seqs_and_maps_length() -> None:
    items = openai_items({"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]},
                         {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]},
                         {"choices": [{"delta": {"content": "b"}, "finish_reason": "length"}]},
                         {"choices": [], "usage": {"completion_tokens": 2}}, "[DONE]")
    assert items == [Chunk("a", 1), Chunk("b", 2), Status.TOKENS]


def test_openai_error_object_with_an_unknown_code_is_an_error_end() -> None:
    items = openai_items({"error": {"message": "busy", "type": "server_error", "code": "queue_full"}}, "[DONE]")
    assert items == [ErrorInfo("queue_full", "busy"), Status.ERROR]


def test_openai_done_without_a_finish_reason_raises() -> None:
    with pytest.raises(ProtocolError):
        openai_items({"choices": [{"delta": {"content": "a"}}]}, "[DONE]")


@pytest.mark.parametrize("content", ["", "a", "line\nbreak\r\nand\rcr", "你好 🚀", "\u2028\u2029\x85\x00",
                                     "data: x\n\n"])
@pytest.mark.parametrize("ts", [None, 1700000000.123456])
def test_sse_chunk_template_is_the_generic_framing(content: str, ts: float | None) -> None:
    chunk = Chunk(content=content, seq=12345, server_time=ts)
    generic = encode_sse(SSEMessage(data=encode_chunk_record(chunk), id="12345"))
    assert encode_sse_event(chunk) == generic
    assert feed_all(generic) == [SSEMessage(data=encode_chunk_record(chunk), id="12345")]
