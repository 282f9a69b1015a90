"""The embedded model and upstream backends behind a real nbchat server:
what a user sees over every transport."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nbchat.bench.procs import SERVING_LINE
from nbchat.clients import TRANSPORTS, connect
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from nbchat.wire.events import Chunk, End, Message, Status, TurnRequest
from tests.helpers import TOKEN, ServerFactory, StallBackend, quiet_after, stop_process, tree_cpu_seconds

QUESTION = "Name three colours of the rainbow."


def ask(url: str, transport: str, request: TurnRequest, token: str = TOKEN) -> tuple[str, End]:
    with connect(url, token=token, transport=transport, timeout=60) as client:
        events = list(client.stream(request))
    end = events[-1]
    assert isinstance(end, End)
    return "".join(e.content for e in events if isinstance(e, Chunk)), end


@pytest.fixture(scope="module")
def model_server() -> Iterator[ServerHandle]:
    handle = start_server_thread(Settings(port=0, token=TOKEN, backend="smollm2"))
    yield handle
    handle.stop()


@pytest.mark.model
def test_greedy_answer_is_real_and_identical_on_every_transport(model_server: ServerHandle) -> None:
    req = TurnRequest(user_message=Message("user", QUESTION), temperature=0.0, max_tokens=24)
    answers = {t: ask(model_server.url, t, req) for t in TRANSPORTS}
    text, end = answers["ws"]
    assert end.status in (Status.DONE, Status.TOKENS)
    assert len(text.split()) >= 3 and text.strip() != QUESTION
    for transport, (other, other_end) in answers.items():
        assert other == text, transport
        assert other_end.status is end.status, transport


@pytest.mark.model
def test_max_tokens_gives_tokens_status(model_server: ServerHandle) -> None:
    req = TurnRequest(user_message=Message("user", "Write a long story about the sea."), max_tokens=5)
    for transport in ("ws", "sse", "stream"):
        text, end = ask(model_server.url, transport, req)
        assert end.status is Status.TOKENS, transport
        assert text


@pytest.mark.model
def test_two_concurrent_turns_both_complete(model_server: ServerHandle) -> None:
    req = TurnRequest(user_message=Message("user", QUESTION), temperature=0.0, max_tokens=16)
    alone = ask(model_server.url, "stream", req)[0]
    results: dict[str, tuple[str, End]] = {}
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, ask(model_server.url, t, req)))
               for t in ("ws", "sse")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert {t: r[0] for t, r in results.items()} == {"ws": alone, "sse": alone}


@pytest.mark.model
def test_interrupt_stops_the_model_process_cpu(tmp_path: Path) -> None:
    nbchat = shutil.which("nbchat")
    assert nbchat is not None, "nbchat is not on PATH: pip install -e ."
    proc = subprocess.Popen([nbchat, "serve", "--port", "0", "--token", TOKEN, "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it accepts connections (model loaded)
        found = SERVING_LINE.search(line.encode())
        assert found is not None and "serving smollm2 at" in line, line
        url = found.group(1).decode()
        req = TurnRequest(user_message=Message("user", "Tell a very long story."), max_tokens=4000)
        with connect(url, token=TOKEN, transport="stream", timeout=60) as client:
            turn = client.stream(req)
            events = iter(turn)
            for _ in range(5):
                next(events)
            busy0 = tree_cpu_seconds(proc.pid)
            time.sleep(1.0)
            busy = tree_cpu_seconds(proc.pid) - busy0
            turn.interrupt()
            rest = list(events)
        assert isinstance(rest[-1], End) and rest[-1].status is Status.INTERRUPTED
        assert busy > 0.3, f"the model was not running before the interrupt ({busy:.2f} s CPU in 1 s)"
        # Within the stop deadline (2 s), the server and its model process fall quiet: a half-second
        # window with next to no CPU. A model still decoding uses ~0.5 s of CPU in every such window.
        windows = quiet_after(proc.pid)
        assert min(windows) < 0.05 and windows[-1] < 0.1, f"CPU per half second after the interrupt: {windows}"
    finally:
        stop_process(proc)


def test_upstream_backend_through_a_second_nbchat_server(make_server: ServerFactory,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = make_server(rate=0.0)
    monkeypatch.setenv("OPENAI_BASE_URL", upstream.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)
    front = start_server_thread(Settings(port=0, token="front", backend="openai", model="echo"))
    try:
        message = "relayed: 你好 🚀 \"quoted\"\n" * 5
        for transport in ("ws", "sse", "stream", "openai"):
            text, end = ask(front.url, transport, TurnRequest(user_message=Message("user", message)), token="front")
            assert (text, end.status) == (message, Status.DONE), transport
        text, end = ask(front.url, "ws", TurnRequest(user_message=Message("user", "abcdefghijkl"), max_tokens=2),
                        token="front")
        assert (text, end.status) == ("abcdefgh", Status.TOKENS)
    finally:
        front.stop()


def test_upstream_that_fails_or_stalls(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    stalled = make_server(StallBackend(before=1), model_timeout=60)
    monkeypatch.setenv("OPENAI_BASE_URL", stalled.url + "/v1")
    for key in ("wrong-key", TOKEN):
        monkeypatch.setenv("OPENAI_API_KEY", key)
        front = start_server_thread(Settings(port=0, token="front", backend="openai", model="x", model_timeout=0.5))
        try:
            text, end = ask(front.url, "stream", TurnRequest(user_message=Message("user", "x")), token="front")
        finally:
            front.stop()
        if key == "wrong-key":  # the upstream refuses: [ERROR] with its message
            assert end.status is Status.ERROR and end.error is not None
            assert "token" in end.error.message or "401" in end.error.message
        else:  # the upstream answers, then stalls: [MODEL_TIMEOUT]
            assert (text, end.status) == ("piece0 ", Status.MODEL_TIMEOUT)
    assert httpx.get(stalled.url + "/health").status_code == 200
