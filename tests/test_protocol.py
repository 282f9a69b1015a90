"""The chunk-record template writes exactly what the generic encoder would."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from nbchat.wire.events import Chunk
from nbchat.wire.protocol import chunk_record, encode_chunk_record


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
