"""The OpenAI wire module in the client direction: bodies, stream events and
error bodies, as the openai transport, the upstream backend and the model
benchmark all read them."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from nbchat.backends.base import GenerationRequest
from nbchat.wire.contract import DEFAULT_MAX_TOKENS
from nbchat.wire.errors import ProtocolError
from nbchat.wire.events import Chunk, End, Message, Status, TurnRequest
from nbchat.wire.openai import (
    DEFAULT_MODEL,
    CompletionEncoder,
    ErrorFields,
    OpenAIItemDecoder,
    StreamDelta,
    StreamDone,
    StreamError,
    completion_body,
    parse_completion_request,
    parse_error_body,
    parse_stream_event,
)
from nbchat.wire.protocol import EventAssembler
from nbchat.wire.sse import SSEMessage, encode_sse


def test_completion_body_from_a_turn_request_round_trips_through_the_server_parser() -> None:
    turn = TurnRequest(Message("user", "hi"), conversation=(Message("system", "be brief"),), temperature=0.2,
                       max_tokens=7)
    body = completion_body(turn)
    assert body == {"model": DEFAULT_MODEL, "messages": [{"role": "system", "content": "be brief"},
                                                         {"role": "user", "content": "hi"}],
                    "temperature": 0.2, "stream": True, "max_tokens": 7}
    parsed = parse_completion_request(body)
    assert parsed.turn.messages == turn.messages
    assert (parsed.turn.temperature, parsed.turn.max_tokens, parsed.stream) == (0.2, 7, True)


def test_completion_body_from_a_backend_request_names_the_given_model() -> None:
    request = GenerationRequest([Message("user", "hi")], temperature=0.0, max_tokens=None)
    body = completion_body(request, model="gpt-x")
    assert body["model"] == "gpt-x" and "max_tokens" not in body and body["temperature"] == 0.0


def test_client_and_server_share_one_set_of_defaults() -> None:
    # Unset, the temperature stays unset all the way to the backend, which samples as suits its model.
    assert (TurnRequest(Message("user", "x")).temperature, TurnRequest(Message("user", "x")).max_tokens) == (
        None, DEFAULT_MAX_TOKENS)
    no_temperature = parse_completion_request({"messages": [{"role": "user", "content": "x"}]})
    assert no_temperature.turn.temperature is None
    assert "temperature" not in completion_body(GenerationRequest([Message("user", "hi")]), model="m")


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}',
     ErrorFields("invalid_api_key", "bad key")),
    (b'{"error": {"code": "unknown_turn", "message": "gone"}}', ErrorFields("unknown_turn", "gone")),
    (b'{"error": {"message": "no code", "type": "server_error"}}', ErrorFields("server_error", "no code")),
    (b'{"detail": "Not Found"}', ErrorFields(None, "Not Found")),
    (b'{"message": "plain"}', ErrorFields(None, "plain")),
    (b'{"error": "just text"}', ErrorFields(None, "just text")),
    (b"Bad Gateway\n", ErrorFields(None, "Bad Gateway")),
    (b"", ErrorFields(None, "(empty body)")),
])
def test_error_bodies_of_every_common_shape(body: bytes, expected: ErrorFields) -> None:
    assert parse_error_body(body) == expected


def test_stream_events() -> None:
    assert parse_stream_event("[DONE]") == StreamDone()
    chunk = ('{"choices":[{"index":0,"delta":{"content":"hé"},"finish_reason":null}],'
             '"x_nbchat":{"seq":3,"ts":1.5}}')
    assert parse_stream_event(chunk) == StreamDelta(content="hé", seq=3, server_time=1.5)
    assert parse_stream_event('{"choices":[{"delta":{},"finish_reason":"length"}]}') == StreamDelta(
        finish_reason="length")
    assert parse_stream_event('{"choices":[]}') == StreamDelta()
    assert parse_stream_event('{"error":{"message":"boom","code":"model_timeout"}}') == StreamError(
        ErrorFields("model_timeout", "boom"))
    assert parse_stream_event('{"message":"overloaded"}', event="error") == StreamError(
        ErrorFields(None, "overloaded"))


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '{"choices": ["x"]}'])
def test_stream_events_that_break_the_format(data: str) -> None:
    with pytest.raises(ProtocolError):
        parse_stream_event(data)


def test_a_trimmed_history_is_said_on_the_openai_route_and_read_back_as_end_trimmed() -> None:
    encoder = CompletionEncoder("t1", "smollm2")
    end = End(Status.DONE, trimmed=4)
    objects = [encoder.role_chunk(), encoder.content_chunk(Chunk("Hi", seq=1, trimmed=4)),
               encoder.content_chunk(Chunk(" there", seq=2)), encoder.final_chunk(end)]
    # the official client's models keep the extension field as an extra, and parse the rest as usual
    parsed = [ChatCompletionChunk.model_validate(obj) for obj in objects]
    assert [(p.model_extra or {}).get("x_nbchat", {}).get("trimmed") for p in parsed] == [None, 4, None, 4]
    assert parsed[-1].choices[0].finish_reason == "stop"
    completion = ChatCompletion.model_validate(encoder.completion("Hi there", end))
    assert (completion.model_extra or {})["x_nbchat"] == {"trimmed": 4}
    assert "x_nbchat" not in encoder.completion("Hi", End(Status.DONE))  # nothing trimmed: nothing said
    # nbchat's own openai transport hands it on as End.trimmed, as the other transports do
    decoder, assembler = OpenAIItemDecoder(), EventAssembler()
    stream = b"".join(encode_sse(SSEMessage(data=json.dumps(obj))) for obj in objects)
    events = [assembler.feed(item, 0.0) for item in decoder.feed(stream + b"data: [DONE]\n\n", 0.0)]
    assert isinstance(events[-1], End) and events[-1].trimmed == 4
