"""What long conversations rely on, without the model: the store of kept states and its
memory bound, the trimming of a history too long for the context, the trimmed note on the
wire and in the footer, and a temperature sent only when the user set one."""

from __future__ import annotations

import pytest

from nbchat.backends.kv_states import GROWTH, Saved, StateStore, common_prefix
from nbchat.backends.trim import TRIM_STEP, fit
from nbchat.bench.conversations import Answer, full_report, growth, report, run_repeated, run_schedules
from nbchat.notebook.options import ChatOptions
from nbchat.notebook.provenance import provenance
from nbchat.notebook.render import TurnStats
from nbchat.wire.events import Chunk, End, Message, Status, TurnRequest
from nbchat.wire.protocol import (
    EventAssembler,
    decode_ndjson_line,
    decode_sse_message,
    decode_ws,
    encode_ndjson,
    encode_sse_event,
    encode_ws,
)
from nbchat.wire.requests import encode_turn_request, parse_turn_request
from nbchat.wire.sse import SSEDecoder


def saved(tokens: list[int], size: int) -> Saved:
    return Saved(tuple(tokens), b"x" * size, size)


def test_the_store_finds_the_longest_shared_prefix_and_stays_within_its_bound() -> None:
    store = StateStore(limit=100)
    store.put(saved([1, 2, 3, 4], 40))
    store.put(saved([1, 2, 9], 40))
    found, shared = store.best([1, 2, 3, 4, 5])
    assert found is not None and found.tokens == (1, 2, 3, 4) and shared == 4
    store.put(saved([7, 8], 40))  # past the bound: the least recently used goes
    assert len(store) == 2 and store.size == 80
    assert store.best([1, 2, 3, 4])[0] is not None and store.best([1, 2, 3, 4])[0].tokens == (1, 2, 9)  # type: ignore[union-attr]
    store.put(saved([7, 8, 9], 30))  # extends a kept state: replaces it
    assert store.best([7, 8, 9])[0].tokens == (7, 8, 9) and len(store) == 2  # type: ignore[union-attr]
    store.put(saved([5], 500))  # larger than the whole bound: not kept
    assert store.best([5]) == (None, 0)
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([], [1]) == 0


def test_a_restored_state_lends_its_buffer_to_the_next_save() -> None:
    store = StateStore(limit=200 * 1024 * 1024)
    first = store.buffer(1000)
    assert len(first) >= 1000 + GROWTH  # room for the conversation's next turns
    kept = Saved((1, 2, 3), first, 1000)
    store.put(kept)
    store.take(kept)
    store.release(kept)  # copied back into the context: its buffer is free
    assert store.buffer(1000 + GROWTH) is first  # the next save, a turn longer, writes into it
    assert store.buffer(10) is not first  # the spare is lent once
    store.put(kept)
    store.take(kept)
    store.release(kept)
    assert store.buffer(len(first) + 1) is not first  # too small: a new buffer
    small = StateStore(limit=100)
    small.put(saved([1], 60))
    released = saved([2], 60)
    small.release(released)  # holding it would pass the bound: not kept
    assert small.buffer(10) is not released.data and small.size == 60


def test_a_save_that_extends_a_kept_state_writes_into_its_buffer() -> None:
    store = StateStore(limit=200 * 1024 * 1024)
    first = store.buffer(1000, (1, 2, 3))
    store.put(Saved((1, 2, 3), first, 1000))
    other = store.buffer(1000, (7, 8))
    store.put(Saved((7, 8), other, 1000))
    assert store.touch([1, 2, 3]) and not store.touch([1, 2])  # a state of exactly these tokens is kept
    assert store.sequences()[-1] == (1, 2, 3)  # touched: the most recent
    assert store.buffer(1500, (1, 2, 3, 4)) is first  # the kept state it extends gives way
    assert store.sequences() == [(7, 8)] and store.size == len(other)
    assert store.buffer(len(other) + 1, (7, 8, 9)) is not other  # too small: a new buffer, the kept state stays
    assert store.sequences() == [(7, 8)]


def words(messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
    """A tokenizer of one token per word, plus two per message."""
    return [0] * sum(len(m["content"].split()) + 2 for m in messages), ["<end>"]


def history(exchanges: int, length: int) -> list[dict[str, str]]:
    out = [{"role": "system", "content": "be brief"}]
    for i in range(exchanges):
        out += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "w " * length}]
    return [*out, {"role": "user", "content": "the new question"}]


def test_a_history_too_long_is_trimmed_oldest_first_in_steps() -> None:
    messages = history(exchanges=20, length=98)  # ~100 tokens an exchange: ~2,000 tokens
    tokens, _, dropped = fit(words, messages, n_ctx=1000, reserve=100)
    assert dropped % TRIM_STEP == 0 and dropped == 12  # 8 exchanges + system + question + 100 fit in 1,000
    assert len(tokens) + 100 <= 1000
    # fitting already: nothing dropped
    assert fit(words, history(3, 10), n_ctx=1000, reserve=100)[2] == 0
    # the newest message alone too long: everything before it goes, and the caller refuses the rest
    huge = [*history(2, 10)[:-1], {"role": "user", "content": "w " * 2000}]
    tokens, _, dropped = fit(words, huge, n_ctx=1000, reserve=10)
    assert dropped == 2 and len(tokens) > 1000


def test_the_trimmed_note_travels_on_the_first_chunk_of_every_encoding() -> None:
    chunk = Chunk("Hi", seq=1, trimmed=4)
    frames = [decode_ws(frame, 0.0) for frame in encode_ws(chunk)]
    lines = [decode_ndjson_line(line, 0.0) for line in encode_ndjson(chunk).decode().splitlines()]
    sse = [decode_sse_message(m, 0.0) for m in SSEDecoder().feed(encode_sse_event(chunk))]
    for decoded in (frames, lines, sse):
        assert decoded == [chunk] and isinstance(decoded[0], Chunk) and decoded[0].trimmed == 4
    assembler = EventAssembler()
    assembler.feed(chunk, 0.0)
    assembler.feed(Chunk(" there", seq=2), 0.0)
    end = assembler.feed(Status.DONE, 0.0)
    assert isinstance(end, End) and end.trimmed == 4


def test_the_footer_and_the_provenance_say_the_history_was_trimmed() -> None:
    stats = TurnStats("ws")
    stats.on_chunk("Hi")
    stats.on_end(End(Status.DONE, trimmed=8))
    assert stats.footer().endswith("[DONE] · history trimmed: 8 exchanges")
    record = provenance(ChatOptions(), stats, server="http://h:1", info={"sampling": {"temperature": 0.2}},
                        turn_id=None, uid=None, timestamp="t")
    assert record["history_trimmed"] == 8 and record["temperature"] == 0.2
    record = provenance(ChatOptions(temperature=0.9), stats, server="http://h:1",
                        info={"sampling": {"temperature": 0.2, "top_p": 0.9}}, turn_id=None, uid=None, timestamp="t")
    assert record["sampling"] == {"temperature": 0.9, "top_p": 0.9}  # what the user set wins


@pytest.mark.parametrize("temperature", [None, 0.0, 0.7])
def test_a_temperature_is_sent_only_when_set(temperature: float | None) -> None:
    request = TurnRequest(Message("user", "hi"), temperature=temperature)
    body = encode_turn_request(request)
    assert ("temperature" in body) is (temperature is not None)
    assert parse_turn_request(body).temperature == temperature


def test_the_conversation_benchmark_alternates_and_reports_growth() -> None:
    seen: list[int] = []

    def ask(history: list[Message], text: str) -> Answer:
        seen.append(len(history))
        return Answer(0.1 * (len(history) // 2 + 1), f"answer to {text}", cpu=0.01 * len(history))

    result = run_schedules(ask, turns=3, long_turns=4)
    assert [len(result[k]) for k in "ABC"] == [3, 3, 4]
    assert seen[:4] == [0, 0, 2, 2]  # A1, B1, A2 (after A1 only), B2
    assert growth(result["C"], first=2, last=2) == pytest.approx(0.35 / 0.15)
    assert report({"nbchat/ws": result}).splitlines()[-1].startswith("nbchat/ws")
    assert result["C cpu"] == pytest.approx([0.0, 0.02, 0.04, 0.06])
    text = full_report({"nbchat/ws": result, "fresh": {k: result[k] for k in "ABC"}})
    assert text.count("nbchat/ws") == 2 and text.count("fresh") == 1  # a CPU row only where measured


def test_repeated_schedules_ask_other_questions_and_keep_each_turns_median() -> None:
    firsts: list[str] = []
    slow = iter([0.9, 0.1, 0.2])  # the first run's A1 is slow, the others are not

    def ask(history: list[Message], text: str) -> Answer:
        if not history:
            firsts.append(text)
        wait = next(slow) if not history and len(firsts) in (1, 4, 7) else 0.1 * (len(history) // 2 + 1)
        return Answer(wait, f"answer to {text}")

    result = run_repeated(ask, turns=2, long_turns=2, repeat=3)
    assert len(firsts) == 9 and len(set(firsts)) == 9  # no run repeats a conversation another run had
    assert result["A"] == pytest.approx([0.2, 0.2])  # the median of 0.9, 0.1, 0.2, then of three 0.2
    assert result["C"] == pytest.approx([0.1, 0.2])
