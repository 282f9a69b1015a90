"""The official ``openai`` package, unchanged, against nbchat's /v1 endpoints."""

from __future__ import annotations

import openai
import pytest

from nbchat.server.serving import ServerHandle
from tests.helpers import LONG_MESSAGE, TOKEN, ServerFactory, StallBackend


def client_for(server: ServerHandle, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0, timeout=20)


def test_stream_with_usage(echo_server: ServerHandle) -> None:
    stream = client_for(echo_server).chat.completions.create(
        model="echo", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": LONG_MESSAGE}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == LONG_MESSAGE
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(chunks) - 3


def test_not_streamed(echo_server: ServerHandle) -> None:
    done = client_for(echo_server).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "héllo 🚀"}])
    assert done.choices[0].message.content == "héllo 🚀"
    assert done.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(echo_server: ServerHandle) -> None:
    c = client_for(echo_server)
    stream = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "abcdefghijklmnop"}],
                                       max_tokens=2, stream=True)
    chunks = list(stream)
    assert "".join(x.choices[0].delta.content or "" for x in chunks) == "abcdefgh"
    assert chunks[-1].choices[0].finish_reason == "length"
    done = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "abcdefghijkl"}],
                                     max_tokens=1)
    assert done.choices[0].finish_reason == "length" and done.choices[0].message.content == "abcd"


def test_temperature_out_of_range_is_400(echo_server: ServerHandle) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client_for(echo_server).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}],
                                                        temperature=2.5)
    assert "temperature" in str(info.value)


def test_wrong_key_is_401(echo_server: ServerHandle) -> None:
    with pytest.raises(openai.AuthenticationError):
        client_for(echo_server, token="wrong").chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}])


def test_models_lists_the_model(echo_server: ServerHandle) -> None:
    assert [m.id for m in client_for(echo_server).models.list()] == ["echo"]


def test_stalled_backend_ends_the_stream_with_an_error(make_server: ServerFactory) -> None:
    server = make_server(StallBackend(before=2), model_timeout=0.3)
    stream = client_for(server).chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}],
                                                        stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "piece0 piece1 "
    assert "MODEL_TIMEOUT" in str(info.value) or "model_timeout" in str(info.value.body)
