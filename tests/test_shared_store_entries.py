"""The shared store's log entries: a turn's chunks go to Redis as one entry per write, lazily while no
other process reads the turn and at once when one does; a reader in another store (another process's)
finds every chunk from inside a batch, the trimmed-history notice on its chunk and on the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from nbchat.backends.base import Finish, GenerationRequest, Trimmed
from nbchat.backends.echo import EchoBackend
from nbchat.server.config import Settings
from nbchat.server.redis import RedisStore
from nbchat.server.redis.client import Batched
from nbchat.server.redis.schema import decode_entry, log_key
from nbchat.server.redis.writer import LAZY_SECONDS
from nbchat.wire.events import Chunk, End, Event, Message, Status, TurnRequest
from tests.conftest import RedisProcess

MESSAGE = "Batched entries: 你好 🚀 \"quoted\", a \\ backslash,\na newline. " * 3


class TrimmingEcho(EchoBackend):
    """The echo backend, saying first that it dropped three exchanges of the history."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[str | Finish]:
        yield Trimmed(3)
        async for piece in super().generate(request):
            yield piece


@contextlib.asynccontextmanager
async def two_stores(url: str, rate: float) -> AsyncIterator[tuple[RedisStore, RedisStore, aioredis.Redis]]:
    """Two stores on one Redis, as two processes have: ``a`` generates (trimming), ``b`` reads."""
    a = RedisStore(TrimmingEcho(rate=rate), Settings(store=url))
    b = RedisStore(EchoBackend(rate=rate), Settings(store=url))
    direct = aioredis.from_url(url, decode_responses=True)
    for store in (a, b):
        await store.start()
    try:
        yield a, b, direct
    finally:
        await direct.aclose()
        for store in (a, b):
            await store.shutdown()
            await store.aclose()


async def read_all(store: RedisStore, turn_id: str, after: int) -> list[Event]:
    events: list[Event] = []
    async with await store.open(turn_id, after) as reader:
        while not reader.done:
            events += await asyncio.wait_for(reader.next_batch(), 10)
    return events


def question(text: str = MESSAGE) -> TurnRequest:
    return TurnRequest(user_message=Message("user", text))


@pytest.mark.redis
async def test_a_reader_elsewhere_starts_inside_a_batch_and_gets_the_trimmed_notice(
        redis_server: RedisProcess) -> None:
    async with two_stores(redis_server.url, rate=200.0) as (a, b, direct):
        info = await a.create(question())
        turn = a.manager.get(info.id)
        assert turn is not None and turn.generation is not None
        await asyncio.wait_for(asyncio.shield(turn.generation), 10)
        await a.writer.drain()
        chunks = turn.last_seq
        entries = await direct.xrange(log_key(info.id))
        # read by nobody elsewhere: its chunks went in a few entries, not one each
        assert 2 <= len(entries) <= chunks // 10, (len(entries), chunks)
        for after in (0, 1, 7, chunks // 2, chunks - 1, chunks):
            events = await read_all(b, info.id, after)
            got = [c for c in events[:-1] if isinstance(c, Chunk)]
            assert len(got) == len(events) - 1 and events[-1] == End(status=Status.DONE, trimmed=3)
            assert [c.seq for c in got] == list(range(after + 1, chunks + 1))
            assert "".join(c.content for c in got) == MESSAGE[after * 4:]
            assert [c.trimmed for c in got] == [3 if c.seq == 1 else 0 for c in got]  # the notice, on its chunk


@pytest.mark.redis
async def test_a_turn_nobody_reads_elsewhere_is_written_lazily_and_a_watched_one_at_once(
        redis_server: RedisProcess) -> None:
    async with two_stores(redis_server.url, rate=20.0) as (a, b, direct):
        info = await a.create(question("x" * 400))  # 100 pieces, 5 s
        turn = a.manager.get(info.id)
        assert turn is not None
        await asyncio.sleep(LAZY_SECONDS / 3)
        assert turn.last_seq >= 3 and await direct.xlen(log_key(info.id)) == 0  # nobody reads it elsewhere
        # b's stream resumes at a seq the log does not hold yet: it says so, and a writes at once
        opened = asyncio.get_running_loop().time()
        async with await b.open(info.id, 2) as reader:
            first = await asyncio.wait_for(reader.next_batch(), 5)
            assert asyncio.get_running_loop().time() - opened < LAZY_SECONDS / 2
            assert isinstance(first[0], Chunk) and first[0].seq == 3
            # from now on each chunk reaches b within a write or two, not once a second
            seen = first[-1]
            assert isinstance(seen, Chunk)
            for _ in range(5):
                batch = await asyncio.wait_for(reader.next_batch(), 5)
                assert all(isinstance(e, Chunk) for e in batch) and len(batch) <= 3
                seqs = [e.seq for e in batch if isinstance(e, Chunk)]
                assert seqs == list(range(seen.seq + 1, seen.seq + 1 + len(batch)))
                seen = batch[-1]  # type: ignore[assignment]
            # a stop sent from b ends the turn on a; b's stream ends with it, after a's last chunk
            await b.interrupt(info.id)
            rest: list[Event] = []
            while not reader.done:
                rest += await asyncio.wait_for(reader.next_batch(), 5)
        assert rest[-1] == turn.end and turn.end.status is Status.INTERRUPTED
        chunks = [seen, *[e for e in rest if isinstance(e, Chunk)]]
        assert chunks[-1].seq == turn.last_seq
        entries = await direct.xrange(log_key(info.id))
        assert [e for _, f in entries for e in decode_entry(f)][-1] == rest[-1]


@pytest.mark.redis
async def test_calls_made_together_go_in_one_pipeline_each_with_its_own_answer(redis_server: RedisProcess) -> None:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    script = client.register_script("if ARGV[1] == 'bad' then return redis.error_reply('refused') end "
                                    "return redis.call('INCR', KEYS[1])")
    batched = Batched(client, script)
    pipelines = 0
    pipeline = client.pipeline

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal pipelines
        pipelines += 1
        return pipeline(*args, **kwargs)  # type: ignore[arg-type]

    await client.script_load(script.script)  # a process's first batch loads it (the test below)
    client.pipeline = counting  # type: ignore[method-assign]
    try:
        calls = [batched(["nbchat-test:n"], ["bad" if i == 7 else "ok"]) for i in range(200)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        assert pipelines == 1
        assert isinstance(answers[7], ResponseError) and "refused" in str(answers[7])
        assert sorted(a for a in answers if isinstance(a, int)) == list(range(1, 200))
        assert await batched(["nbchat-test:n"], ["ok"]) == 200 and pipelines == 2
    finally:
        await client.delete("nbchat-test:n")
        await client.aclose()


@pytest.mark.redis
async def test_a_batch_sends_only_its_calls_and_outlives_a_script_flush(redis_server: RedisProcess) -> None:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    batched = Batched(client, script)
    try:
        await client.config_resetstat()
        assert await asyncio.gather(*(batched(["nbchat-test:m"], []) for _ in range(3))) == [1, 2, 3]
        for _ in range(5):
            await batched(["nbchat-test:m"], [])
        stats = await client.info("commandstats")
        assert "cmdstat_script|exists" not in stats  # no question to Redis before each batch
        assert stats["cmdstat_script|load"]["calls"] == 1  # the first batch found it unknown and loaded it
        assert stats["cmdstat_evalsha"]["calls"] == 3 + 3 + 5
        await client.script_flush()  # as after a Redis restart
        assert await asyncio.gather(*(batched(["nbchat-test:m"], []) for _ in range(2))) == [9, 10]
        assert (await client.info("commandstats"))["cmdstat_script|load"]["calls"] == 2
    finally:
        await client.delete("nbchat-test:m")
        await client.aclose()
