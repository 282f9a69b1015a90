"""Generated hostile input against a real ``nbchat serve`` (a subprocess, so its
log is the one an operator reads): bodies, headers, query strings and WebSocket
frames. Whatever comes in: never a 5xx, every streamed response ends with its
status, the server still answers afterwards, and no traceback in its log."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from nbchat.wire.events import STATUS_STRINGS
from tests.load_limits import serve

TOKEN = "fuzz-token-0123456789"
FUZZ = settings(max_examples=int(os.environ.get("NBCHAT_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=False)
#: hundreds of requests against a serve subprocess: seconds of CPU, so out of the fast layer
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with open(log, "w") as err, serve(extra=["--log-level", "info"], token=TOKEN, log=err) as running:
        yield running.url, log
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-4000:]


# ---------------------------------------------------------------- strategies

# Text as attackers write it: any code point, lone surrogates included (json.dumps
# escapes those as \ud800, which is how they reach a server).
any_text = st.text(st.characters(codec=None, categories=None), max_size=40) | st.text(max_size=40)
digitish = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=12)
position = st.one_of(st.integers(-10, 10**20).map(str), digitish, any_text, st.just("9" * 5000),
                     st.sampled_from(sorted(STATUS_STRINGS)))
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(any_text, inner, max_size=4), max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "robot"]) | json_value,
                                 "content": any_text | json_value})
turn_request = st.fixed_dictionaries(
    {"userMessage": message | json_value},
    optional={"conversation": st.lists(message, max_size=3) | json_value,
              "temperature": st.floats(-1, 3) | json_value, "maxTokens": st.integers(-2, 50) | json_value,
              "model": any_text | json_value, "uid": any_text | json_value})
openai_request = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3) | json_value},
    optional={"stream": st.booleans() | json_value, "temperature": st.floats(-1, 3) | json_value,
              "max_tokens": st.integers(-2, 50) | json_value, "model": any_text | json_value,
              "stream_options": st.fixed_dictionaries({"include_usage": json_value}) | json_value})
nesting = st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n)


def encoded(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # ensure_ascii: lone surrogates become \ud800 escapes


body = st.one_of(turn_request.map(encoded), json_value.map(encoded), nesting.map(str.encode),
                 st.binary(max_size=200))
header_name = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
# any byte a header value may hold (visible ASCII, space, tab, obs-text), as the client library lets through
header_value = st.lists(st.sampled_from([*range(0x20, 0x7F), 0x09, *range(0x80, 0x100)]), max_size=60).map(
    lambda b: bytes(b).strip(b" \t"))
headers = st.dictionaries(st.sampled_from(["uid", "last-event-id", "content-type", "origin", "x-any"]) | header_name,
                          header_value, max_size=4)
query = st.dictionaries(st.sampled_from(["uid", "turn", "after", "lastEventId", "x"]), position, max_size=3)


# ---------------------------------------------------------------- checks


def assert_ends_with_status(r: httpx.Response) -> None:
    kind = r.headers.get("content-type", "")
    text = r.text
    if kind.startswith("application/x-ndjson"):
        last = json.loads(text.strip().splitlines()[-1])
        assert last.get("status") in STATUS_STRINGS, text[-300:]
    elif kind.startswith("text/event-stream") and "x-nbchat-turn" in r.headers:
        events = [e for e in text.split("\n\n") if e.strip() and not e.startswith(":")]
        last = events[-1]
        assert last.endswith("data: [DONE]") or any(f"data: {s}" in last for s in STATUS_STRINGS), text[-300:]


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code == 200:
        assert_ends_with_status(r)


# ---------------------------------------------------------------- tests


@FUZZ
@given(path=st.sampled_from(["/talkByStream", "/createSse", "/turns", "/v1/chat/completions"]),
       content=body | openai_request.map(encoded), extra=headers)
def test_fuzzed_posts(server: tuple[str, Path], path: str, content: bytes, extra: dict[str, bytes]) -> None:
    url, _ = server
    hdrs = {k.encode(): v for k, v in extra.items() if k.lower() not in ("content-length", "host", "transfer-encoding")}
    hdrs[b"token"] = TOKEN.encode()
    hdrs.pop(b"origin", None)
    check(httpx.post(url + path, content=content, headers=hdrs, timeout=30))


@FUZZ
@given(path=st.sampled_from(["/createSse", "/talkByStream", "/health", "/v1/models"]), params=query, extra=headers)
def test_fuzzed_gets(server: tuple[str, Path], path: str, params: dict[str, str], extra: dict[str, bytes]) -> None:
    url, _ = server
    httpx.post(url + "/talkByStream", json={"userMessage": {"role": "user", "content": "seed"}, "uid": "u"},
               headers={"token": TOKEN})  # so that some uids and turns exist
    hdrs = {k.encode(): v for k, v in extra.items() if k.lower() not in ("content-length", "host", "transfer-encoding")}
    hdrs[b"token"] = TOKEN.encode()
    hdrs.pop(b"origin", None)
    check(httpx.get(url + path, params=params, headers=hdrs, timeout=30))


ws_frame = st.one_of(
    turn_request.map(lambda o: json.dumps(o)), json_value.map(lambda o: json.dumps(o)), nesting,
    st.fixed_dictionaries({"resume": st.fixed_dictionaries({}, optional={"after": json_value | position,
                                                                         "turn": json_value})}).map(json.dumps),
    st.sampled_from(["", "[INTERRUPT]", "{", "null"]), st.binary(max_size=50), st.text(max_size=50))


@FUZZ
@given(frames=st.lists(ws_frame, min_size=1, max_size=5))
def test_fuzzed_websocket_frames(server: tuple[str, Path], frames: list[str | bytes]) -> None:
    url, _ = server
    with ws_connect(url.replace("http://", "ws://") + f"/websocket/fz?token={TOKEN}", max_size=None) as sock:
        for frame in frames:
            sock.send(frame)
        sock.send(json.dumps({"userMessage": {"role": "user", "content": "sentinel-7"}}))
        answer = ""
        try:
            while True:  # the answers to what came before, then the sentinel's own answer and status
                frame = sock.recv(timeout=20)
                assert isinstance(frame, str)
                if frame in STATUS_STRINGS:
                    if frame == "[DONE]" and answer == "sentinel-7":
                        break
                    answer = ""
                    continue
                record = json.loads(frame)
                assert isinstance(record, dict), frame[:200]
                answer += record.get("content", "")
        except ConnectionClosed as exc:
            raise AssertionError(f"the socket closed ({exc.rcvd}) after {frames!r}") from exc
    assert httpx.get(url + "/health", timeout=5).status_code == 200


# ---------------------------------------------------------------- numbers out of range

# A number as a client writes it in JSON text: integers of any size (a 400-digit one is valid
# JSON), floats at and past the double's range, negative zero, and NaN / Infinity, which Python's
# encoder writes as text although JSON has no such values.
number_text = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.integers(min_value=10**15, max_value=10**20).map(str),
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
    st.sampled_from(["1e308", "-1e308", "1e400", "-1e400", "1E+309", "-0.0", "-0", "0.0e0", "NaN", "Infinity",
                     "-Infinity", "1" + "0" * 400, "-1" + "0" * 400, "4.9e-324", "2147483648"]))
SEED_NUMBERS = ["temperature", "maxTokens"]
OPENAI_NUMBERS = ["temperature", "max_tokens", "max_completion_tokens", "top_p", "presence_penalty",
                  "frequency_penalty", "n", "seed"]


def seed_body(field: str, number: str) -> str:
    return '{"userMessage": {"role": "user", "content": "numbers"}, "uid": "n", "' + field + '": ' + number + "}"


def openai_body(stream: bool, field: str, number: str) -> str:
    return ('{"model": "m", "stream": ' + json.dumps(stream) + ', "messages": [{"role": "user", "content": '
            '"numbers"}], "' + field + '": ' + number + "}")


@FUZZ
@given(path=st.sampled_from(["/talkByStream", "/createSse", "/turns"]), field=st.sampled_from(SEED_NUMBERS),
       number=number_text)
def test_out_of_range_numbers_on_the_seed_routes(server: tuple[str, Path], path: str, field: str,
                                                 number: str) -> None:
    url, _ = server
    r = httpx.post(url + path, content=seed_body(field, number).encode(), headers={"token": TOKEN}, timeout=30)
    check(r)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])


@FUZZ
@given(field=st.sampled_from(OPENAI_NUMBERS), number=number_text, stream=st.booleans())
def test_out_of_range_numbers_on_the_openai_route(server: tuple[str, Path], field: str, number: str,
                                                  stream: bool) -> None:
    url, _ = server
    body = openai_body(stream, field, number)
    r = httpx.post(url + "/v1/chat/completions", content=body.encode(), headers={"token": TOKEN}, timeout=30)
    check(r)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])
    if r.status_code == 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@FUZZ
@given(where=st.sampled_from(["after", "lastEventId", "Last-Event-ID"]), number=number_text)
def test_out_of_range_positions_on_the_resume_routes(server: tuple[str, Path], where: str, number: str) -> None:
    url, _ = server
    turn = httpx.post(url + "/talkByStream", json={"userMessage": {"role": "user", "content": "p"}},
                      headers={"token": TOKEN}).headers["x-nbchat-turn"]
    headers = {"token": TOKEN}
    if where == "Last-Event-ID":
        r = httpx.get(url + "/createSse", params={"turn": turn}, headers={**headers, where: number}, timeout=30)
    else:
        path = "/talkByStream" if where == "after" else "/createSse"
        r = httpx.get(url + path, params={"turn": turn, where: number}, headers=headers, timeout=30)
    check(r)
    assert r.status_code in (200, 204, 400), (r.status_code, r.text[:300])


@FUZZ
@given(field=st.sampled_from([*SEED_NUMBERS, "resume"]), number=number_text)
def test_out_of_range_numbers_on_a_websocket(server: tuple[str, Path], field: str, number: str) -> None:
    url, _ = server
    frame = '{"resume": {"after": ' + number + "}}" if field == "resume" else seed_body(field, number)
    with ws_connect(url.replace("http://", "ws://") + f"/websocket/num?token={TOKEN}", max_size=None) as sock:
        sock.send(frame)
        statuses = 0
        try:
            while statuses < 1:  # one status for the frame, whatever it held; the socket stays open
                got = sock.recv(timeout=20)
                assert isinstance(got, str)
                statuses += got in STATUS_STRINGS
            sock.send(seed_body("temperature", "0.5"))
            while (got := sock.recv(timeout=20)) not in STATUS_STRINGS:
                pass
        except ConnectionClosed as exc:
            raise AssertionError(f"the socket closed ({exc.rcvd}) after {frame[:120]!r}") from exc
    assert got == "[DONE]"
