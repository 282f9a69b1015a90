"""The ``openai`` upstream backend against real OpenAI-compatible servers on loopback:
llama-cpp-python's own server streaming the embedded model, and small Starlette
apps that fail (HTTP 500, an error event mid-stream), stall, or split their
bytes awkwardly. Every server here stops by itself within a few seconds."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nbchat.backends import LENGTH, Finish, GenerationRequest, create_backend
from nbchat.backends.smollm2 import find_gguf
from nbchat.backends.upstream import OpenAIUpstreamBackend
from nbchat.bench.procs import free_port
from nbchat.clients import collect as collect_events
from nbchat.clients import connect
from nbchat.wire.errors import BackendError
from nbchat.wire.events import Message, Status
from tests.helpers import TOKEN, ServerFactory, stop_process

SERVER_START_TIMEOUT = 60.0


def ask(text: str = "Say hello.", *, max_tokens: int | None = 16) -> GenerationRequest:
    return GenerationRequest(messages=[Message("user", text)], temperature=0.0, max_tokens=max_tokens)


async def collect(stream: AsyncIterator[str | Finish]) -> list[str | Finish]:
    return [piece async for piece in stream]


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    record = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(record, ensure_ascii=False)}\n\n".encode()


# --- llama-cpp-python's server, streaming the embedded model -----------------------------




@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free loopback port; its /v1 base URL."""
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server] (see docs/install.md)")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(find_gguf()), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2", "--verbose", "False"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        # A subprocess's readiness cannot be awaited: ask until it answers, within a bound.
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            try:
                if httpx.get(f"{base_url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer /v1/models in time")
            time.sleep(0.2)
        yield base_url
    finally:
        stop_process(proc, 10)


@pytest.mark.model
async def test_streams_a_real_answer_from_llama_cpp_server(llama_server: str) -> None:
    backend = OpenAIUpstreamBackend(model="smollm2", base_url=llama_server, api_key="unused")
    try:
        pieces = await collect(backend.generate(ask("What is the capital of France? One sentence.", max_tokens=32)))
    finally:
        await backend.aclose()
    text = "".join(p for p in pieces if isinstance(p, str))
    assert len(pieces) > 1 and "Paris" in text


@pytest.mark.model
async def test_max_tokens_from_llama_cpp_server_is_length(llama_server: str) -> None:
    backend = OpenAIUpstreamBackend(model="smollm2", base_url=llama_server)
    try:
        pieces = await collect(backend.generate(ask("Count from 1 to 100, separated by commas.", max_tokens=6)))
    finally:
        await backend.aclose()
    assert pieces[-1] is LENGTH and LENGTH not in pieces[:-1]
    assert 1 <= len(pieces) - 1 <= 6


@pytest.mark.model
async def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, llama_server: str) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", llama_server + "/")
    monkeypatch.setenv("OPENAI_API_KEY", "key-from-env")
    monkeypatch.setenv("OPENAI_MODEL", "smollm2")
    backend = create_backend("openai")
    assert isinstance(backend, OpenAIUpstreamBackend)
    assert (backend.base_url, backend.api_key, backend.model_name) == (llama_server, "key-from-env", "smollm2")
    try:
        assert await collect(backend.generate(ask(max_tokens=4)))
    finally:
        await backend.aclose()


# --- small Starlette upstreams that misbehave on purpose ----------------------------------


class Upstream:
    """A Starlette app served by uvicorn in a thread, on a socket bound before it starts
    (so requests simply wait in the backlog: nothing to poll for)."""

    def __init__(self) -> None:
        self.disconnected = threading.Event()
        self.authorization: list[str] = []
        routes = [
            Route("/fail500/chat/completions", self.fail500, methods=["POST"]),
            Route("/error-event/chat/completions", self.error_event, methods=["POST"]),
            Route("/stall/chat/completions", self.stall, methods=["POST"]),
            Route("/bytewise/chat/completions", self.bytewise, methods=["POST"]),
            Route("/truncated/chat/completions", self.truncated, methods=["POST"]),
            Route("/too-long/chat/completions", self.too_long, methods=["POST"]),
        ]
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(Starlette(routes=routes), log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    async def fail500(self, request: Request) -> Response:
        return JSONResponse({"error": {"message": "the model exploded", "type": "server_error"}}, status_code=500)

    async def error_event(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield chunk("partial ")
            yield b'data: {"error": {"message": "upstream overloaded", "code": 503}}\n\n'

        return StreamingResponse(body(), media_type="text/event-stream")

    async def stall(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield chunk("first ")
                await asyncio.Event().wait()  # hang until the client goes away
            finally:
                self.disconnected.set()

        return StreamingResponse(body(), media_type="text/event-stream")

    async def bytewise(self, request: Request) -> Response:
        self.authorization.append(request.headers.get("authorization", ""))
        stream = b": keep-alive\r\n\r\n" + chunk("你好, ") + chunk("🚀 data: x") + chunk(None, "stop")
        stream += b'data: {"choices": [], "usage": {"total_tokens": 3}}\n\ndata: [DONE]\n\n'

        async def body() -> AsyncIterator[bytes]:
            for i in range(len(stream)):  # one byte per network write: characters split everywhere
                yield stream[i : i + 1]

        return StreamingResponse(body(), media_type="text/event-stream")

    async def too_long(self, request: Request) -> Response:
        return JSONResponse({"error": {
            "message": "This model's maximum context length is 4096 tokens. However, your messages resulted in "
                       "5120 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
            status_code=400)

    async def truncated(self, request: Request) -> Response:
        return StreamingResponse(iter([chunk("cut ")]), media_type="text/event-stream")

    def backend(self, route: str, api_key: str | None = "k") -> OpenAIUpstreamBackend:
        return OpenAIUpstreamBackend(model="test-model", base_url=f"{self.url}/{route}", api_key=api_key)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.thread.start()
    yield server
    server.server.should_exit = True
    server.thread.join(10)
    server.sock.close()
    assert not server.thread.is_alive()


async def test_http_500_is_a_backend_error_with_the_upstream_message(upstream: Upstream) -> None:
    backend = upstream.backend("fail500")
    with pytest.raises(BackendError, match="HTTP 500: the model exploded") as caught:
        await collect(backend.generate(ask()))
    assert caught.value.code == "upstream_error"
    await backend.aclose()


async def test_context_length_exceeded_says_what_to_do(upstream: Upstream) -> None:
    backend = upstream.backend("too-long")
    with pytest.raises(BackendError, match="start a new conversation") as caught:
        await collect(backend.generate(ask()))
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length is 4096" in str(caught.value)
    await backend.aclose()


def test_context_length_exceeded_upstream_is_an_error_status_not_a_traceback(
        upstream: Upstream, make_server: ServerFactory) -> None:
    server = make_server(upstream.backend("too-long"))
    with connect(server.url, token=TOKEN, transport="stream") as client:
        end = collect_events(client.stream("hi"))
    assert end.status is Status.ERROR and end.error is not None
    assert end.error.code == "context_length_exceeded" and "start a new conversation" in end.error.message
    assert "Traceback" not in end.error.message


async def test_an_error_event_mid_stream_is_a_backend_error(upstream: Upstream) -> None:
    backend = upstream.backend("error-event")
    stream = backend.generate(ask())
    assert await anext(stream) == "partial "
    with pytest.raises(BackendError, match="upstream overloaded") as caught:
        await anext(stream)
    assert caught.value.code == "upstream_error"
    await backend.aclose()


async def test_sse_split_at_every_byte_decodes_exactly(upstream: Upstream) -> None:
    backend = upstream.backend("bytewise", api_key="sk-test")
    assert await collect(backend.generate(ask())) == ["你好, ", "🚀 data: x"]
    assert upstream.authorization[-1] == "Bearer sk-test"
    await backend.aclose()


async def test_a_stream_cut_short_is_a_backend_error(upstream: Upstream) -> None:
    backend = upstream.backend("truncated")
    with pytest.raises(BackendError, match="closed the stream before"):
        await collect(backend.generate(ask()))
    await backend.aclose()


async def test_cancelling_a_stalled_stream_closes_the_upstream_connection(upstream: Upstream) -> None:
    backend = upstream.backend("stall")
    upstream.disconnected.clear()
    first = asyncio.Event()

    async def consume() -> None:
        async for _piece in backend.generate(ask()):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()  # the server's model-timeout watchdog does this
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(upstream.disconnected.wait, 2.0), "the upstream never saw the disconnect"
    await backend.aclose()


async def test_a_refused_connection_says_what_to_check() -> None:
    backend = OpenAIUpstreamBackend(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="")
    with pytest.raises(BackendError, match=r"cannot connect.*check OPENAI_BASE_URL") as caught:
        await collect(backend.generate(ask()))
    assert caught.value.code == "upstream_error"
    await backend.aclose()


async def test_no_model_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    backend = OpenAIUpstreamBackend(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(BackendError, match="--model or set OPENAI_MODEL"):
        await collect(backend.generate(ask()))
