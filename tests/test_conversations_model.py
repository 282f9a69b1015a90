"""Conversations on the embedded model: each keeps its own evaluated state while
several take turns, greedy answers match a fresh evaluation when exact reuse is
asked for, and a conversation longer than the context is trimmed (and says so in
%%chat's footer and the widget's stats line), not refused."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from IPython.core.getipython import get_ipython
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import start_ipython

from nbchat.backends.base import GenerationRequest, Trimmed
from nbchat.backends.smollm2 import SmolLM2Backend
from nbchat.bench.conversations import question
from nbchat.notebook.conversation import Conversation, Exchange
from nbchat.notebook.magics import ChatMagics
from nbchat.notebook.options import ChatOptions
from nbchat.notebook.widget import ChatWidget
from nbchat.server.config import Settings
from nbchat.server.serving import ServerHandle, start_server_thread
from nbchat.wire.errors import BackendError
from nbchat.wire.events import Message
from tests.helpers import TOKEN
from tests.test_widget import RecordingComm

pytestmark = pytest.mark.model

#: a new user message and the template around it: what a continued turn has to read
NEW_TURN_TOKENS = 40


async def answer(backend: SmolLM2Backend, messages: list[Message], max_tokens: int = 48) -> tuple[str, list[object]]:
    pieces = [p async for p in backend.generate(GenerationRequest(messages, temperature=0.0, max_tokens=max_tokens))]
    return "".join(p for p in pieces if isinstance(p, str)), pieces


@pytest.fixture
async def backend() -> AsyncIterator[SmolLM2Backend]:
    made = SmolLM2Backend(cache_mb=64, exact=False)
    await made.start()
    yield made
    await made.aclose()


async def test_alternating_conversations_keep_their_own_state(backend: SmolLM2Backend) -> None:
    """Each conversation's history is not read again, and (kept between turns) not copied out
    when the other one's turn comes: the turn waits only for its own state to be copied in."""
    histories: dict[str, list[Message]] = {"A": [], "B": []}
    seen: dict[str, dict[str, int]] = {}
    copied_out: list[int] = []
    for turn in (1, 2, 3):
        for name, offset in (("A", 0), ("B", 7)):
            text = question(turn, offset)
            messages = [*histories[name], Message("user", text)]
            reply, _ = await answer(backend, messages)
            stats = backend.model.last_prompt
            copied_out.append(stats["copied_out"])
            if turn > 1:
                # the other conversation ran in between, yet this one's history (its last prompt
                # and the answer's tokens) is not read again: only the new message is
                assert stats["reused"] > seen[name]["prompt"], (name, turn, stats, seen[name])
                assert stats["prompt"] - stats["reused"] <= NEW_TURN_TOKENS, (name, turn, stats)
            seen[name] = stats
            histories[name] += [Message("user", text), Message("assistant", reply)]
    # B's first turn copies A out (nothing else was kept then, so A was not); from then on the state
    # that a turn leaves was copied out while the process waited for the next job
    assert copied_out == [0, 1, 0, 0, 0, 0]


def test_the_work_between_turns_gives_way_to_a_waiting_job() -> None:
    from nbchat.backends.llama_model import Model
    from nbchat.backends.llama_worker import between_turns
    from nbchat.backends.smollm2 import find_gguf

    model = Model(str(find_gguf()), 1, 1024, cache_mb=16)
    model.prefill(model.prompt([{"role": "user", "content": question(1, 7)}])[0], lambda: False)
    first = [{"role": "user", "content": question(1)}]
    model.prefill(model.prompt(first)[0], lambda: False)  # the other conversation's state goes to the kept ones
    model.llama.eval(model.llama.tokenize(b"Water moves.", add_bos=False))  # as if generated
    model.answered()
    evaluated = model.llama.n_tokens
    follow = [*first, {"role": "assistant", "content": "Water moves."}]
    between_turns(model, follow, lambda: True)  # a job is waiting: the state is kept, nothing is read ahead
    assert model.kept.touch(model.llama.input_ids[:evaluated].tolist()) and model.llama.n_tokens == evaluated
    calls = itertools.count()
    between_turns(model, follow, lambda: next(calls) > 3)  # a job comes while the read-ahead is computed
    assert next(calls) > 5  # llama.cpp asked between graph nodes, and gave up
    assert model.llama.n_tokens == evaluated
    between_turns(model, follow, lambda: False)  # nobody waits: the template's tokens are read, then kept
    assert model.llama.n_tokens > evaluated and model.kept.touch(model.llama.input_ids[:model.llama.n_tokens].tolist())
    primed = model.llama.n_tokens
    follow_up, _ = model.prompt([*follow, {"role": "user", "content": question(2)}])
    model.prefill(follow_up, lambda: False)
    assert model.last_prompt == (len(follow_up), primed)  # the next turn continues from what was read ahead


def test_a_conversation_that_goes_on_at_once_is_not_copied_between_turns() -> None:
    """A notebook's Run All: the same conversation's next question is there when the answer ends,
    while another conversation is kept. The state the answer leaves is not copied out for it (the
    copy grows with the conversation and the question would wait for it); a switch to the other
    conversation copies it then, and with nobody asking, it is copied while the process waits."""
    from nbchat.backends.llama_model import Model
    from nbchat.backends.llama_worker import Control, run_job
    from nbchat.backends.model_messages import End, Generate, Piece, Reply
    from nbchat.backends.smollm2 import find_gguf

    model = Model(str(find_gguf()), 1, 1024, cache_mb=16)
    replies: list[Reply] = []

    def ask(job_id: int, messages: list[dict[str, str]], control: Control) -> tuple[str, End]:
        start = len(replies)
        run_job(model, Generate(job_id, messages, 24, {"temperature": 0.0}), control, replies.append)
        end = replies[-1]
        assert isinstance(end, End)
        return "".join(r.text for r in replies[start:] if isinstance(r, Piece)), end

    def asked_next() -> Control:
        control = Control()
        control.queue(Generate(99, [{"role": "user", "content": "next"}], 1, {}))
        return control

    other = [{"role": "user", "content": question(1, 7)}]
    other_reply, _ = ask(1, other, Control())
    first = [{"role": "user", "content": question(1)}]
    reply, _ = ask(2, first, asked_next())  # a switch: the state is kept at once, a job waiting or not
    assert not model.continued and len(model.kept) == 2
    copies = model.copies_out
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": question(2)}]
    _, end = ask(3, second, asked_next())
    assert model.continued and end.copied_out == 0
    assert model.copies_out == copies, "the answer's state was copied out though its conversation went on"
    back = [*other, {"role": "assistant", "content": other_reply}, {"role": "user", "content": question(2, 7)}]
    back_reply, end = ask(4, back, Control())
    assert end.copied_out == 1  # the switch kept the conversation that had gone on
    assert end.reused is not None and end.reused > len(model.prompt(other)[0])  # the other one's state came back
    third = [*back, {"role": "assistant", "content": back_reply}, {"role": "user", "content": question(3, 7)}]
    copies = model.copies_out
    ask(5, third, Control())  # nobody asks next: the state is kept while the process waits
    assert model.continued and model.copies_out > copies


def test_a_continued_turn_reads_only_its_own_message_and_what_follows_it() -> None:
    from nbchat.backends.llama_model import Model
    from nbchat.backends.llama_worker import Control, run_job
    from nbchat.backends.model_messages import End, Generate, Piece, Reply
    from nbchat.backends.smollm2 import find_gguf

    model = Model(str(find_gguf()), 1, 1024, cache_mb=16)
    replies: list[Reply] = []
    first = [{"role": "user", "content": question(1)}]
    # run_job returns once the process would wait for the next job: nobody came meanwhile
    run_job(model, Generate(1, first, 48, {"temperature": 0.0}), Control(), replies.append)
    reply = "".join(r.text for r in replies if isinstance(r, Piece))
    text = question(2)
    follow = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": text}]
    run_job(model, Generate(2, follow, 4, {"temperature": 0.0}), Control(), replies.append)
    end = replies[-1]
    assert isinstance(end, End) and end.prompt is not None and end.reused is not None
    # the template's tokens between the answer and the new message were read after the answer,
    # so only the message and "<|im_end|>\n<|im_start|>assistant\n" (6 tokens) are left, not also the
    # 5 of "<|im_end|>\n<|im_start|>user\n" before it
    assert end.prompt - end.reused <= len(model.llama.tokenize(text.encode(), add_bos=False)) + 6, end


async def test_exact_reuse_gives_the_greedy_text_of_a_fresh_evaluation() -> None:
    cached = SmolLM2Backend(cache_mb=64, exact=True)
    fresh = SmolLM2Backend(cache_mb=0, exact=True)  # another process, which has seen nothing else
    try:
        remember = " ".join(f"item{i}" for i in range(60))  # a long first prompt: whole blocks to keep
        first = [Message("user", f"Remember this list: {remember}. {question(1)}")]
        reply, _ = await answer(cached, first)
        await answer(cached, [Message("user", question(1, 7))])  # another conversation in between
        follow_up = [*first, Message("assistant", reply), Message("user", question(2))]
        again, _ = await answer(cached, follow_up, max_tokens=64)
        assert cached.model.last_prompt["reused"] >= 128  # it did continue from kept state
        expected, _ = await answer(fresh, follow_up, max_tokens=64)
        assert fresh.model.last_prompt["reused"] == 0
        assert again == expected and again
    finally:
        await cached.aclose()
        await fresh.aclose()


async def test_a_job_that_ends_before_its_prefill_reports_no_prompt_counts(backend: SmolLM2Backend) -> None:
    await answer(backend, [Message("user", question(1))], max_tokens=4)
    assert backend.model.last_prompt.get("prompt", 0) > 0
    with pytest.raises(BackendError, match="does not fit"):
        await answer(backend, [Message("user", "word " * 5000)])  # refused before anything is evaluated
    loop, idle = asyncio.get_running_loop(), asyncio.Event()
    backend.model.submit(lambda: loop.call_soon_threadsafe(idle.set))  # after the refused job's End (FIFO)
    await asyncio.wait_for(idle.wait(), 60)
    assert backend.model.last_prompt == {}  # not the previous job's counts


def long_history(tokens: int = 6000) -> list[Exchange]:
    """Exchanges of ~500 tokens each (a word and a space are about two tokens), ``tokens`` in all."""
    words = ["river", "stone", "lantern", "harbour", "willow", "copper", "meadow", "falcon"]
    exchanges = []
    for i in range(tokens // 500):
        text = " ".join(f"{words[(i + j) % len(words)]}{j}" for j in range(170))
        exchanges.append(Exchange(f"Remember list {i}.", text, "[DONE]"))
    return exchanges


async def test_a_conversation_longer_than_the_context_is_trimmed(backend: SmolLM2Backend) -> None:
    history = [m for e in long_history() for m in (Message("user", e.user), Message("assistant", e.answer))]
    messages = [Message("system", "Be brief."), *history, Message("user", "Say hello.")]
    reply, pieces = await answer(backend, messages, max_tokens=8)
    assert reply
    notice = pieces[0]
    assert isinstance(notice, Trimmed) and 0 < notice.exchanges < len(history) // 2


@pytest.fixture(scope="module")
def model_server() -> Iterator[ServerHandle]:
    # A context of 1,024 tokens: the 6,000-token conversation is trimmed all the same, and the
    # prompt left is read within the clients' timeouts even on a busy machine (the default
    # context's trimming is tested on the backend above).
    handle = start_server_thread(Settings(port=0, token=TOKEN, backend="smollm2", model_timeout=600,
                                          backend_options={"n_ctx": 1024}))
    yield handle
    handle.stop()


def test_chat_magic_shows_the_trimmed_history(model_server: ServerHandle) -> None:
    shell = start_ipython() or get_ipython()
    assert isinstance(shell, InteractiveShell)
    magics = ChatMagics(shell)
    magics.conversation.options = ChatOptions(server=model_server.url, token=TOKEN, max_tokens=8)
    magics.conversation.exchanges = long_history()
    magics.chat_cell("", "Say hello.")
    result = magics.last
    assert result is not None and result.answer
    trimmed = result.provenance["history_trimmed"]
    assert trimmed > 0 and f"history trimmed: {trimmed} exchanges" in result.stats.footer()
    assert result.provenance["sampling"]["repeat_penalty"] > 1  # the backend's defaults, recorded


def test_the_openai_route_says_the_history_was_trimmed(model_server: ServerHandle) -> None:
    messages: list[Any] = [{"role": r, "content": c} for e in long_history()
                           for r, c in (("user", e.user), ("assistant", e.answer))]
    messages.append({"role": "user", "content": "Say hello."})
    client = openai.OpenAI(base_url=f"{model_server.url}/v1", api_key=TOKEN, timeout=600)
    chunks = list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, stream=True))
    said = [(c.model_extra or {}).get("x_nbchat", {}).get("trimmed") for c in chunks]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and said[-1] and said[-1] > 0
    completion = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8)
    assert (completion.model_extra or {})["x_nbchat"]["trimmed"] == said[-1]


async def test_widget_stats_line_shows_the_trimmed_history(model_server: ServerHandle) -> None:
    conversation = Conversation(ChatOptions(server=model_server.url, token=TOKEN, max_tokens=8))
    conversation.exchanges = long_history()
    widget = ChatWidget(conversation=conversation)
    widget.comm = RecordingComm()
    try:
        task = widget.ask("Say hello.")
        assert task is not None
        await asyncio.wait_for(widget.wait(), 600)
        assert "history trimmed:" in widget.stats, widget.stats
        assert conversation.exchanges[-1].provenance is not None
        assert conversation.exchanges[-1].provenance["history_trimmed"] > 0
    finally:
        widget.close()


@pytest.mark.parametrize("exact", [False, True])
def test_an_answer_that_tokenises_otherwise_is_not_read_again(exact: bool) -> None:
    from nbchat.backends.llama_model import Model
    from nbchat.backends.smollm2 import find_gguf

    model = Model(str(find_gguf()), 1, 1024, cache_mb=16, exact=exact)
    first = [{"role": "user", "content": "Name a machine."}]
    tokens, _ = model.prompt(first)
    model.prefill(tokens, lambda: False)
    answer = "Refrigerators keep food cool."
    # as a model may generate it: one token a character, never how the whole text tokenises
    generated = [t for c in answer for t in model.llama.tokenize(c.encode(), add_bos=False, special=False)]
    assert generated != model.llama.tokenize(answer.encode(), add_bos=False, special=False)
    model.llama.eval(generated)
    model.answered()
    evaluated = list(model.llama.input_ids[:model.llama.n_tokens])
    follow, _ = model.prompt([*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}])
    if exact:  # a fresh evaluation's tokens, so that greedy answers do not depend on the cache
        assert follow == model.llama.tokenize(model.formatter(messages=[
            *first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]).prompt.encode(),
            add_bos=False, special=True)
    else:  # the answer stays the tokens the model evaluated: only the new message is read
        assert follow[:len(evaluated)] == evaluated
        model.prefill(follow, lambda: False)
        assert model.last_prompt == (len(follow), len(evaluated))
