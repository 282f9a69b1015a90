"""The chunk-record template writes exactly what the generic encoder would, and a chunk given by its
fields what the chunk itself gives."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from nbchat.wire.events import Chunk
from nbchat.wire.protocol import (
    chunk_record,
    encode_chunk_record,
    encode_ndjson,
    encode_ndjson_record,
    encode_record,
    encode_sse_event,
    encode_sse_record,
    encode_ws,
)


@given(content=st.text(), seq=st.integers(min_value=1, max_value=10**9),
       ts=st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)))
def test_template_matches_the_generic_encoder(content: str, seq: int, ts: float | None) -> None:
    chunk = Chunk(content=content, seq=seq, server_time=ts)
    decoded = json.loads(encode_chunk_record(chunk))
    expected = chunk_record(chunk)
    assert decoded.keys() == expected.keys()
    assert decoded["content"] == content and decoded["seq"] == seq
    if ts is not None:
        assert abs(decoded["ts"] - ts) <= 1e-6


@given(content=st.text(), seq=st.integers(min_value=1, max_value=10**9),
       ts=st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)))
def test_a_chunk_by_its_fields_is_encoded_as_the_chunk(content: str, seq: int, ts: float | None) -> None:
    # a server's live chunks go out by their fields, with no Chunk made: the same bytes on every transport
    chunk = Chunk(content=content, seq=seq, server_time=ts)
    assert encode_record(content, seq, ts) == encode_chunk_record(chunk) == encode_ws(chunk)[0]
    assert encode_ndjson_record(content, seq, ts) == encode_ndjson(chunk)
    assert encode_sse_record(content, seq, ts) == encode_sse_event(chunk)
