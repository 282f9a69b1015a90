"""Numbers the wire accepts, the OpenAI parameters it honours or refuses, and a busy backend,
each against a real server on loopback: no number is a 500, every parameter that would change
the answer's shape is honoured (stop) or refused with a 400 naming it, and a busy model is
"try again later" on every transport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from nbchat.backends.base import Backend, Finish, GenerationRequest, Trimmed
from nbchat.server.serving import ServerHandle
from nbchat.wire.errors import QueueFull
from tests.helpers import TOKEN, ServerFactory

H = {"token": TOKEN}
HUGE = "1" + "0" * 400  # a valid JSON integer that float() cannot hold
NEGATIVE_HUGE = "-" + HUGE


def turn_body(extra: str) -> str:
    return '{"userMessage": {"role": "user", "content": "hello there"}' + extra + "}"


def openai_body(extra: str) -> str:
    return '{"model": "m", "messages": [{"role": "user", "content": "hello there"}]' + extra + "}"


def ws_frames(sock) -> list[str]:  # type: ignore[no-untyped-def]
    """A socket's frames up to and including the next status."""
    frames: list[str] = []
    while not frames or frames[-1].startswith("{"):
        frames.append(sock.recv(timeout=10))
    return frames


def last_ndjson(r: httpx.Response) -> object:
    return json.loads(r.text.strip().splitlines()[-1])


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("value", [HUGE, NEGATIVE_HUGE, "1e308", "1e400", "-1e400", "3"])
def test_an_out_of_range_temperature_is_the_threshold_status_on_the_seed_transports(
        echo_server: ServerHandle, value: str) -> None:
    body = turn_body(f', "temperature": {value}')
    r = httpx.post(echo_server.url + "/talkByStream", content=body, headers=H)
    assert r.status_code == 200 and last_ndjson(r) == {"status": "TEMPERATURE_THRESHOLD"}
    r = httpx.post(echo_server.url + "/createSse", content=body, headers=H)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: TEMPERATURE_THRESHOLD")
    url = echo_server.url.replace("http://", "ws://") + f"/websocket/big?token={TOKEN}"
    with ws_connect(url) as sock:
        sock.send(body)
        assert sock.recv(timeout=10) == "TEMPERATURE_THRESHOLD"
        sock.send(turn_body(""))  # the socket is still in step
        assert ws_frames(sock)[-1] == "[DONE]"


@pytest.mark.parametrize("value", [HUGE, NEGATIVE_HUGE, "1e308", "1e400", "-0.5", "2.0001"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_out_of_range_temperature_is_a_400_naming_it_on_v1(echo_server: ServerHandle, value: str,
                                                              stream: bool) -> None:
    r = httpx.post(echo_server.url + "/v1/chat/completions", headers=H,
                   content=openai_body(f', "temperature": {value}, "stream": {json.dumps(stream)}'))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "temperature"


def test_minus_zero_is_a_valid_temperature(echo_server: ServerHandle) -> None:
    r = httpx.post(echo_server.url + "/talkByStream", content=turn_body(', "temperature": -0.0'), headers=H)
    assert last_ndjson(r) == {"status": "[DONE]"}
    r = httpx.post(echo_server.url + "/v1/chat/completions", content=openai_body(', "temperature": -0.0'), headers=H)
    assert r.status_code == 200


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens_are_not_json(echo_server: ServerHandle, value: str) -> None:
    r = httpx.post(echo_server.url + "/talkByStream", content=turn_body(f', "temperature": {value}'), headers=H)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(echo_server.url + "/v1/chat/completions", content=openai_body(f', "top_p": {value}'), headers=H)
    assert r.status_code == 400


@pytest.mark.parametrize("value", [HUGE, "2147483648", "0", "-1", "1e3"])
def test_a_token_limit_out_of_range_is_a_400(echo_server: ServerHandle, value: str) -> None:
    r = httpx.post(echo_server.url + "/talkByStream", content=turn_body(f', "maxTokens": {value}'), headers=H)
    assert r.status_code == 400 and "maxTokens" in r.json()["error"]["message"]
    for key in ("max_tokens", "max_completion_tokens"):
        r = httpx.post(echo_server.url + "/v1/chat/completions", content=openai_body(f', "{key}": {value}'),
                       headers=H)
        assert r.status_code == 400 and r.json()["error"]["param"] == key


@pytest.mark.parametrize("value", [HUGE, "1e308", "-1", "1000000000000000"])
def test_positions_out_of_range_are_400_on_every_route(echo_server: ServerHandle, value: str) -> None:
    turn = httpx.post(echo_server.url + "/talkByStream", json={"userMessage": {"role": "user", "content": "x"}},
                      headers=H).headers["x-nbchat-turn"]
    for path, params in (("/talkByStream", {"after": value}), ("/createSse", {"lastEventId": value})):
        r = httpx.get(echo_server.url + path, params={"turn": turn, **params}, headers=H)
        assert r.status_code == 400, (path, r.text)
    url = echo_server.url.replace("http://", "ws://") + f"/websocket/pos?token={TOKEN}"
    with ws_connect(url) as sock:
        sock.send('{"resume": {"after": ' + value + "}}")
        assert json.loads(sock.recv(timeout=10))["error"]["code"] == "invalid_request"
        assert sock.recv(timeout=10) == "[ERROR]"


# ---------------------------------------------------------------- OpenAI parameters


@pytest.mark.parametrize(("extra", "param"), [
    (', "n": 2', "n"), (', "n": "x"', "n"), (', "n": 0', "n"),
    (', "stop": 123', "stop"), (', "stop": [1]', "stop"), (', "stop": ["a","b","c","d","e"]', "stop"),
    (', "stop": [""]', "stop"),
    (', "stream": "false"', "stream"), (', "stream": 1', "stream"),
    (', "stream": true, "stream_options": {"include_usage": "yes"}', "stream_options.include_usage"),
    (', "top_p": 7', "top_p"), (', "top_p": -0.1', "top_p"), (', "top_p": "1"', "top_p"),
    (', "presence_penalty": 1e308', "presence_penalty"), (', "frequency_penalty": -3', "frequency_penalty"),
    (f', "presence_penalty": {HUGE}', "presence_penalty"), (', "seed": 1.5', "seed"),
    (', "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"', "tools"),
    (', "tool_choice": "required"', "tool_choice"), (', "functions": [{"name": "f"}]', "functions"),
    (', "logprobs": true', "logprobs"), (', "response_format": {"type": "json_object"}', "response_format"),
    (', "logit_bias": {"50256": -100}', "logit_bias"),
])
def test_what_cannot_be_honoured_is_an_openai_400_naming_the_parameter(echo_server: ServerHandle, extra: str,
                                                                       param: str) -> None:
    r = httpx.post(echo_server.url + "/v1/chat/completions", content=openai_body(extra), headers=H)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_accepted_sampling_parameters_in_range_answer(echo_server: ServerHandle) -> None:
    extra = (', "n": 1, "top_p": 0.9, "presence_penalty": -2, "frequency_penalty": 2, "seed": 7, '
             '"tool_choice": "none", "response_format": {"type": "text"}, "logprobs": false, "user": "u", '
             '"stream": false')
    r = httpx.post(echo_server.url + "/v1/chat/completions", content=openai_body(extra), headers=H)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello there"


def stop_body(stop: object, stream: bool) -> dict[str, object]:
    return {"model": "m", "stream": stream, "stop": stop,
            "messages": [{"role": "user", "content": "one two STOP three four"}]}


def streamed_text(r: httpx.Response) -> tuple[str, list[object]]:
    text, reasons = "", []
    for line in r.text.splitlines():
        if line.startswith("data: {"):
            choice = (json.loads(line[6:]).get("choices") or [{}])[0]
            text += choice.get("delta", {}).get("content") or ""
            reasons.append(choice.get("finish_reason"))
    return text, reasons


@pytest.mark.parametrize("stop", ["STOP", ["STOP"], ["zzz", "OP thr"], ["TOP", "two"]])
def test_stop_sequences_end_the_answer_before_them(make_server: ServerFactory, stop: object) -> None:
    # pieces of 4 characters: a stop sequence arrives split over pieces, and must still be caught
    server = make_server(rate=0.0)
    expected = {"STOP": "one two ", "OP thr": "one two ST", "two": "one "}
    want = expected["two"] if stop == ["TOP", "two"] else expected["OP thr"] if "OP thr" in stop else "one two "
    r = httpx.post(server.url + "/v1/chat/completions", json=stop_body(stop, False), headers=H)
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == want and choice["finish_reason"] == "stop"
    r = httpx.post(server.url + "/v1/chat/completions", json=stop_body(stop, True), headers=H)
    text, reasons = streamed_text(r)
    assert text == want and reasons[-1] == "stop" and r.text.rstrip().endswith("data: [DONE]")


def test_a_stop_sequence_split_over_paced_pieces_is_caught(make_server: ServerFactory) -> None:
    server = make_server(rate=200.0)
    r = httpx.post(server.url + "/v1/chat/completions", json=stop_body("wo STO", True), headers=H)
    assert streamed_text(r)[0] == "one t"


def test_an_answer_without_its_stop_sequence_is_whole(echo_server: ServerHandle) -> None:
    r = httpx.post(echo_server.url + "/v1/chat/completions", json=stop_body(["four!"], False), headers=H)
    assert r.json()["choices"][0]["message"]["content"] == "one two STOP three four"


def test_native_transports_take_stop_sequences_too(echo_server: ServerHandle) -> None:
    r = httpx.post(echo_server.url + "/talkByStream", headers=H,
                   json={"userMessage": {"role": "user", "content": "one two STOP three"}, "stop": ["STOP"]})
    records = [json.loads(line) for line in r.text.splitlines()]
    assert "".join(str(rec.get("content", "")) for rec in records) == "one two "
    assert records[-1] == {"status": "[DONE]"}


class TrimmingBackend(Backend):
    """Says the history was trimmed, then answers in pieces, as the embedded model does."""

    name = "trimming"

    @property
    def model_name(self) -> str:
        return "trimming"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish | Trimmed]:
        yield Trimmed(3)
        for piece in ("one ", "two ", "STOP ", "three"):
            yield piece


@pytest.mark.parametrize("stop,answer", [([], "one two STOP three"), (["STOP"], "one two ")])
def test_the_trimmed_history_notice_reaches_a_buffered_reader_with_or_without_stop_sequences(
        make_server: ServerFactory, stop: list[str], answer: str) -> None:
    # unpaced: the answer is made before the stream reads it, so the stream reads the resume buffer
    server = make_server(backend=TrimmingBackend())
    r = httpx.post(server.url + "/talkByStream", headers=H,
                   json={"userMessage": {"role": "user", "content": "hi"}, "stop": stop})
    records = [json.loads(line) for line in r.text.splitlines()]
    assert "".join(str(rec.get("content", "")) for rec in records) == answer
    assert records[0].get("trimmed") == 3 and records[-1] == {"status": "[DONE]"}
    assert not any("trimmed" in rec for rec in records[1:])


# ---------------------------------------------------------------- a busy backend


class BusyBackend(Backend):
    """Refuses every turn as the embedded model does when its queue is full."""

    name = "busy"

    @property
    def model_name(self) -> str:
        return "busy"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        raise QueueFull("the model is busy and 8 turns are already waiting; try again shortly")
        yield ""  # an async generator, as every backend is


@pytest.mark.parametrize("stream", [False, True])
def test_a_busy_model_is_429_with_retry_after_on_v1(make_server: ServerFactory, stream: bool) -> None:
    server = make_server(backend=BusyBackend())
    r = httpx.post(server.url + "/v1/chat/completions", headers=H,
                   json={"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) > 0
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "queue_full"


def test_a_busy_model_is_error_queue_full_on_the_other_transports(make_server: ServerFactory) -> None:
    server = make_server(backend=BusyBackend())
    r = httpx.post(server.url + "/talkByStream", json={"userMessage": {"role": "user", "content": "hi"}}, headers=H)
    records = [json.loads(line) for line in r.text.splitlines()]
    assert records[0]["error"]["code"] == "queue_full" and records[-1] == {"status": "[ERROR]"}
    url = server.url.replace("http://", "ws://") + f"/websocket/busy?token={TOKEN}"
    with ws_connect(url) as sock:
        sock.send(json.dumps({"userMessage": {"role": "user", "content": "hi"}}))
        assert json.loads(sock.recv(timeout=10))["error"]["code"] == "queue_full"
        assert sock.recv(timeout=10) == "[ERROR]"


def test_the_openai_client_reads_a_busy_model_as_a_rate_limit(make_server: ServerFactory) -> None:
    openai = pytest.importorskip("openai")
    server = make_server(backend=BusyBackend())
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0,
                           default_headers={"token": TOKEN})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.model
def test_the_embedded_models_full_queue_is_429_on_v1_and_queue_full_elsewhere(make_server: ServerFactory) -> None:
    from nbchat.backends.smollm2 import SmolLM2Backend

    server = make_server(backend=SmolLM2Backend(queue_size=1))
    long = {"userMessage": {"role": "user", "content": "Write a long story about a lighthouse keeper."},
            "maxTokens": 2000, "temperature": 0.7}
    busy = [httpx.stream("POST", server.url + "/talkByStream", json=long, headers=H, timeout=120)
            for _ in range(2)]  # one runs on the model, one takes the one waiting place
    try:
        first = busy[0].__enter__()
        next(first.iter_lines())  # the model is generating
        second = busy[1].__enter__()
        assert second.status_code == 200
        ask = [{"role": "user", "content": "hi"}]
        for stream in (False, True):
            r = httpx.post(server.url + "/v1/chat/completions", headers=H, timeout=60,
                           json={"model": "m", "stream": stream, "messages": ask})
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) > 0 and r.json()["error"]["code"] == "queue_full"
        r = httpx.post(server.url + "/talkByStream", json={"userMessage": ask[0]}, headers=H, timeout=60)
        records = [json.loads(line) for line in r.text.splitlines()]
        assert records[0]["error"]["code"] == "queue_full" and records[-1] == {"status": "[ERROR]"}
    finally:
        for response in busy:
            response.__exit__(None, None, None)
