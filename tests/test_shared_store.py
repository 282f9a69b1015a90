"""Two ``nbchat serve --store redis://...`` processes on different ports sharing one turn log: a turn
started on one is resumed, started, interrupted and read on the other; a process killed mid-turn and
a Redis that goes away end streams with [ERROR] in bounded time, never a hang or a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from nbchat.backends.echo import EchoBackend
from nbchat.bench.procs import alive
from nbchat.server.config import Settings
from nbchat.server.redis import RedisStore
from nbchat.server.redis.schema import decode_entry, lease_key, log_key, meta_key, readers_key
from nbchat.wire.errors import RequestError
from nbchat.wire.events import Chunk, End, ErrorInfo, Message, Status, TurnRequest
from tests.conftest import ROOT, RedisProcess, ServeFactory, ServeProcess
from tests.helpers import TOKEN, descendants

H = {"token": TOKEN}
# about 90 pieces of the echo backend: at 50 pieces/s a turn lasts about two seconds
MESSAGE = "Shared turns: 你好，世界 🚀 — \"quotes\", a \\ backslash,\na newline; " * 5
STATUSES = ("[DONE]", "[TOKENS]", "[INTERRUPTED]", "[MODEL_TIMEOUT]", "TEMPERATURE_THRESHOLD", "[ERROR]")


def request(content: str = MESSAGE, **extra: object) -> dict[str, object]:
    return {"userMessage": {"role": "user", "content": content}, **extra}


@pytest.fixture
def pair(redis_server: RedisProcess, serve_process: ServeFactory) -> tuple[ServeProcess, ServeProcess]:
    return (serve_process("--store", redis_server.url), serve_process("--store", redis_server.url))


def read_events(response: httpx.Response, count: int, sep: bytes) -> bytes:
    """The raw bytes of the first ``count`` events (``sep`` ends each) of a streaming response."""
    out = b""
    for part in response.iter_raw():
        out += part
        if out.count(sep) >= count:
            break
    assert out.count(sep) >= count, out
    cut = 0
    for _ in range(count):
        cut = out.index(sep, cut) + len(sep)
    return out[:cut]


def ndjson_records(body: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in body.splitlines() if line]


def chunk_seqs(records: list[dict[str, object]]) -> list[object]:
    return [r["seq"] for r in records if "seq" in r]


# ---------------------------------------------------------------- resume on the other process


@pytest.mark.redis
def test_sse_post_on_a_resumed_on_b_byte_exact(pair: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = pair
    with httpx.stream("POST", a.url + "/createSse", json=request(uid="sse-u"), headers=H, timeout=10) as r:
        turn = r.headers["x-nbchat-turn"]
        head = read_events(r, 10, b"\n\n")
    rest = httpx.get(b.url + "/createSse", headers={**H, "uid": "sse-u", "last-event-id": "10"}, timeout=20)
    assert rest.status_code == 200 and rest.headers["x-nbchat-turn"] == turn
    assert rest.content.endswith(b"id: [DONE]\ndata: [DONE]\n\n")
    # the whole turn, replayed from its start on B, is exactly what A sent then B sent
    whole = httpx.get(b.url + "/createSse", params={"turn": turn, "lastEventId": "0"}, headers=H, timeout=10)
    assert head + rest.content == whole.content
    ids = [line[4:] for line in whole.content.split(b"\n") if line.startswith(b"id: ")]
    assert ids == [str(i).encode() for i in range(1, len(ids))] + [b"[DONE]"]
    text = "".join(json.loads(line[6:])["content"] for line in whole.content.split(b"\n")
                   if line.startswith(b"data: {"))
    assert text == MESSAGE


@pytest.mark.redis
def test_ndjson_post_on_a_resumed_on_b_byte_exact(pair: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = pair
    with httpx.stream("POST", a.url + "/talkByStream", json=request(), headers=H, timeout=10) as r:
        turn = r.headers["x-nbchat-turn"]
        head = read_events(r, 10, b"\n")
    rest = httpx.get(b.url + "/talkByStream", params={"turn": turn, "after": "10"}, headers=H, timeout=20)
    assert rest.status_code == 200
    whole = httpx.get(b.url + "/talkByStream", params={"turn": turn, "after": "0"}, headers=H, timeout=10)
    assert head + rest.content == whole.content
    records = ndjson_records(whole.content)
    assert chunk_seqs(records) == list(range(1, len(records)))
    assert records[-1] == {"status": "[DONE]"}
    assert "".join(str(r["content"]) for r in records[:-1]) == MESSAGE


def ws(server: ServeProcess, uid: str) -> ClientConnection:
    return ws_connect(f"ws://127.0.0.1:{server.port}/websocket/{uid}?token={TOKEN}", open_timeout=10)


def frames_until_status(conn: ClientConnection, timeout: float = 20) -> list[str]:
    frames: list[str] = []
    deadline = time.monotonic() + timeout
    while not frames or frames[-1] not in STATUSES:
        frame = conn.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert isinstance(frame, str)
        frames.append(frame)
    return frames


@pytest.mark.redis
def test_websocket_on_a_resumed_on_b(pair: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = pair
    with ws(a, "ws-u") as conn:
        conn.send(json.dumps(request()))
        head = [conn.recv(timeout=10) for _ in range(10)]
    with ws(b, "ws-u") as conn:
        conn.send(json.dumps({"resume": {"after": 10}}))
        rest = frames_until_status(conn)
    frames = [str(f) for f in head] + rest
    assert frames[-1] == "[DONE]"
    records = [json.loads(f) for f in frames[:-1]]
    assert chunk_seqs(records) == list(range(1, len(records) + 1))
    assert "".join(r["content"] for r in records) == MESSAGE


@pytest.mark.redis
def test_queued_turn_on_a_started_by_websocket_on_b(pair: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = pair
    r = httpx.post(a.url + "/turns", json=request("queued on A", uid="queue-u"), headers=H, timeout=10)
    assert r.status_code == 200, r.text
    with ws(b, "queue-u") as conn:
        conn.send("")
        frames = frames_until_status(conn)
    assert frames[-1] == "[DONE]"
    assert "".join(json.loads(f)["content"] for f in frames[:-1]) == "queued on A"
    # and the SSE GET on A sees that same turn, ended
    again = httpx.get(a.url + "/createSse", headers={**H, "uid": "queue-u"}, timeout=10)
    assert again.headers["x-nbchat-turn"] == r.json()["id"]
    assert again.content.endswith(b"data: [DONE]\n\n")


# ---------------------------------------------------------------- interrupts


class Collector(threading.Thread):
    """Reads an NDJSON stream to its end in the background."""

    def __init__(self, url: str, params: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.params = url, params
        self.records: list[dict[str, object]] = []
        self.first = threading.Event()

    def run(self) -> None:
        with httpx.stream("GET", self.url + "/talkByStream", params=self.params, headers=H, timeout=30) as r:
            for line in r.iter_lines():
                if line:
                    self.records.append(json.loads(line))
                    self.first.set()
        self.first.set()


@pytest.mark.redis
def test_interrupt_on_b_stops_the_generation_on_a(redis_server: RedisProcess, serve_process: ServeFactory) -> None:
    a = serve_process("--store", redis_server.url, rate=20)
    b = serve_process("--store", redis_server.url, rate=20)
    long = "x" * 3000  # about a minute of pieces at 20/s: only the interrupt can end it in time
    with httpx.stream("POST", a.url + "/talkByStream", json=request(long, uid="int-u"), headers=H, timeout=30) as r:
        turn = r.headers["x-nbchat-turn"]
        on_b = Collector(b.url, {"turn": turn, "after": "0"})
        on_b.start()
        assert on_b.first.wait(10)
        with ws(b, "int-u") as conn:
            conn.send(json.dumps({"resume": {"turn": turn, "after": 0}}))
            seen = [conn.recv(timeout=10) for _ in range(3)]
            conn.send("[INTERRUPT]")
            sent_at = json.loads(seen[-1])["seq"]
            frames = frames_until_status(conn, timeout=10)
        on_a = ndjson_records(b"".join(r.iter_raw()))
    on_b.join(10)
    assert frames[-1] == "[INTERRUPTED]"
    assert on_a[-1] == {"status": "[INTERRUPTED]"}
    assert on_b.records[-1] == {"status": "[INTERRUPTED]"}
    # every reader saw the same chunks; the generation on A stopped within a piece or two of the interrupt
    last = chunk_seqs(on_a)[-1]
    assert chunk_seqs(on_b.records)[-1] == last
    assert isinstance(last, int) and isinstance(sent_at, int) and last <= sent_at + 3
    assert last < len(long) // 4


# ---------------------------------------------------------------- failures


@pytest.mark.redis
def test_a_killed_mid_turn_ends_b_readers_with_error(pair: tuple[ServeProcess, ServeProcess]) -> None:
    a, b = pair
    with httpx.stream("POST", a.url + "/talkByStream", json=request("y" * 3000), headers=H, timeout=30) as r:
        turn = r.headers["x-nbchat-turn"]
        on_b = Collector(b.url, {"turn": turn, "after": "0"})
        on_b.start()
        assert on_b.first.wait(10)
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        on_b.join(20)
    assert not on_b.is_alive(), "B's reader still waits for a turn whose process died"
    assert time.monotonic() - killed < 10
    assert on_b.records[-1] == {"status": "[ERROR]"}
    error = on_b.records[-2]["error"]
    assert isinstance(error, dict) and error["code"] == "process_lost" and error["message"]
    # a late reader on B gets the same recorded end
    late = ndjson_records(httpx.get(b.url + "/talkByStream", params={"turn": turn, "after": "0"},
                                    headers=H, timeout=10).content)
    assert late[-1] == {"status": "[ERROR]"}


def read_across(a: ServeProcess, b: ServeProcess, content: str,
                disrupt: Callable[[], None]) -> tuple[list[dict[str, object]], list[dict[str, object]], float]:
    """A turn started on A and read on B too, ``disrupt`` called once both read: the records A's
    stream and B's got, and the seconds from the disruption until both ended."""
    with httpx.stream("POST", a.url + "/talkByStream", json=request(content), headers=H, timeout=30) as r:
        turn = r.headers["x-nbchat-turn"]
        on_b = Collector(b.url, {"turn": turn, "after": "0"})
        on_b.start()
        assert on_b.first.wait(10)
        disrupt()
        disrupted = time.monotonic()
        on_a = ndjson_records(b"".join(r.iter_raw()))
        on_b.join(15)
    return on_a, on_b.records, time.monotonic() - disrupted


@pytest.mark.redis
def test_redis_unreachable_gives_503_and_error_status(pair: tuple[ServeProcess, ServeProcess],
                                                      redis_server: RedisProcess) -> None:
    a, b = pair
    on_a, on_b, took = read_across(a, b, "z" * 3000, redis_server.stop)
    assert took < 15
    for records in (on_a, on_b):
        assert records[-1] == {"status": "[ERROR]"}
        error = records[-2]["error"]
        assert isinstance(error, dict) and error["code"] == "store_unavailable"
    for method, path, kwargs in (("POST", "/createSse", {"json": request()}),
                                 ("POST", "/talkByStream", {"json": request()}),
                                 ("POST", "/turns", {"json": request(uid="u")}),
                                 ("GET", "/createSse", {"params": {"uid": "u"}}),
                                 ("POST", "/v1/chat/completions",
                                  {"json": {"messages": [{"role": "user", "content": "hi"}]}})):
        resp = httpx.request(method, b.url + path, headers=H, timeout=15, **kwargs)  # type: ignore[arg-type]
        assert resp.status_code == 503, (path, resp.status_code, resp.text)
        assert "store" in resp.text and "Redis" in resp.text
    with ws(a, "down-u") as conn:
        conn.send(json.dumps(request()))
        frames = frames_until_status(conn, timeout=15)
    assert frames[-1] == "[ERROR]" and json.loads(frames[-2])["error"]["code"] == "store_unavailable"
    assert httpx.get(a.url + "/health", timeout=5).status_code == 200


@pytest.mark.redis
def test_redis_restarted_ends_running_turns_and_serves_again(pair: tuple[ServeProcess, ServeProcess],
                                                             redis_server: RedisProcess) -> None:
    a, b = pair
    on_a, on_b, _ = read_across(a, b, "w" * 3000, redis_server.restart)  # no persistence: the record is gone
    assert on_a[-1] == {"status": "[ERROR]"} and on_b[-1] == {"status": "[ERROR]"}
    # new turns work on both processes once Redis answers again
    for server in (a, b):
        whole = ndjson_records(httpx.post(server.url + "/talkByStream", json=request("again"), headers=H,
                                          timeout=15).content)
        assert whole[-1] == {"status": "[DONE]"}


# ---------------------------------------------------------------- --workers


def test_workers_need_a_shared_store() -> None:
    done = subprocess.run([sys.executable, "-m", "nbchat", "serve", "--backend", "echo", "--port", "0",
                           "--workers", "2"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert "--workers 2 needs --store redis://" in done.stderr and "own memory" in done.stderr


@pytest.mark.redis
def test_workers_share_one_port_and_the_turns(redis_server: RedisProcess, serve_process: ServeFactory) -> None:
    served = serve_process("--workers", "2", "--store", redis_server.url)
    workers = descendants(served.proc.pid)
    assert len(workers) >= 2
    # each request opens a new connection, which the kernel hands to either worker: every resume,
    # queued turn and interrupt must work wherever it lands
    for i in range(4):
        uid = f"workers-{i}"
        with httpx.stream("POST", served.url + "/createSse", json=request(uid=uid), headers=H, timeout=10) as r:
            head = read_events(r, 10, b"\n\n")
        rest = httpx.get(served.url + "/createSse", headers={**H, "uid": uid, "last-event-id": "10"}, timeout=20)
        whole = httpx.get(served.url + "/createSse", params={"turn": r.headers["x-nbchat-turn"]}, headers=H,
                          timeout=10)
        assert head + rest.content == whole.content and whole.content.endswith(b"data: [DONE]\n\n")
        assert httpx.post(served.url + "/turns", json=request(f"queued {i}", uid=uid), headers=H,
                          timeout=10).status_code == 200
        with ws(served, uid) as conn:
            conn.send("")
            frames = frames_until_status(conn)
        assert frames[-1] == "[DONE]" and "".join(json.loads(f)["content"] for f in frames[:-1]) == f"queued {i}"
    served.proc.terminate()
    assert served.proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


@pytest.mark.redis
def test_the_benchmark_starts_workers(redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """``nbchat bench --workers 2`` waits for the line ``nbchat serve --workers 2`` prints once every worker
    accepts, which ends in `` (2 workers)``."""
    from nbchat.bench import procs

    monkeypatch.setattr(procs, "START_TIMEOUT", 60.0)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with procs.in_background(procs.nbchat_server(extra=("--store", redis_server.url, "--workers", "2"))) as child:
        assert child.process is not None and len(descendants(child.process.pid)) >= 2
        done = httpx.post(child.url + "/talkByStream", json=request("two workers"), headers={"token": child.token},
                          timeout=20)
    assert [json.loads(line) for line in done.text.splitlines()][-1] == {"status": "[DONE]"}


@contextlib.asynccontextmanager
async def running_store(url: str, rate: float = 1.0,
                        **settings: float) -> AsyncIterator[tuple[RedisStore, aioredis.Redis]]:
    """A Redis store in this process (echo backend at ``rate`` pieces/s), and a client of the same Redis."""
    store = RedisStore(EchoBackend(rate=rate), Settings(store=url, **settings))  # type: ignore[arg-type]
    await store.start()
    direct = aioredis.from_url(url, decode_responses=True)
    try:
        yield store, direct
    finally:
        await direct.aclose()
        await store.shutdown()
        await store.aclose()


@pytest.fixture
async def store_here(redis_server: RedisProcess) -> AsyncIterator[tuple[RedisStore, aioredis.Redis]]:
    async with running_store(redis_server.url) as both:
        yield both


@pytest.mark.redis
async def test_one_command_writes_a_batch_and_a_failing_turn_alone_ends(
        store_here: tuple[RedisStore, aioredis.Redis]) -> None:
    """One write puts each turn's new chunks in one entry of its stream, times included, whose id is the
    last seq it holds; a turn whose stream the store refuses ends with [ERROR] while the others of the
    same write are written."""
    store, direct = store_here
    question = TurnRequest(user_message=Message("user", "hi"))
    good, bad, other = (store.manager.create(question, start=False, turn_id=name) for name in ("g", "b", "o"))
    await direct.set(log_key("b"), "not a stream")  # XADD on it fails with WRONGTYPE
    for seq in (1, 2, 3):
        store.writer.appended(good, f"g{seq}", seq, 1000.125 + seq, 0)
        store.writer.appended(bad, f"b{seq}", seq, None, 0)
    store.writer.appended(other, "o1 \u00e9 🚀 \"x\"\n", 1, None, 2)
    await store.writer.drain()
    store.writer.appended(good, "g4", 4, 1004.5, 0)
    await store.writer.drain()
    entries = await direct.xrange(log_key("g"))
    assert [i for i, _ in entries] == ["3-0", "4-0"]
    assert [[(c.content, c.seq, c.server_time) for c in decode_entry(f)] for _, f in entries] == [
        [("g1", 1, 1001.125), ("g2", 2, 1002.125), ("g3", 3, 1003.125)], [("g4", 4, 1004.5)]]
    ((entry_id, fields),) = await direct.xrange(log_key("o"))
    assert entry_id == "1-0" and "t" not in fields
    assert decode_entry(fields) == [Chunk(content="o1 \u00e9 🚀 \"x\"\n", seq=1, trimmed=2)]
    assert bad.end is not None and bad.end.status is Status.ERROR and bad.end.error is not None
    assert bad.end.error.code == "store_unavailable"
    assert good.end is None and other.end is None


@pytest.mark.redis
async def test_the_heartbeat_reads_interrupts_and_readers_on_other_processes(
        store_here: tuple[RedisStore, aioredis.Redis]) -> None:
    """One look per heartbeat: a stream counted by a live process keeps a turn out of its grace period,
    one counted by a process whose lease is gone does not, and an interrupt field stops the turn."""
    store, direct = store_here
    info = await store.create(TurnRequest(user_message=Message("user", "a long answer " * 50)))
    turn = store.manager.get(info.id)
    assert turn is not None
    await direct.set(lease_key("live"), "1")
    await direct.hset(readers_key(turn.id), mapping={"live": "1", "gone": "3"})
    await store.check_turns()
    assert not turn.in_grace and turn.end is None  # "live" reads it
    await direct.hset(readers_key(turn.id), "live", "0")
    await store.check_turns()
    assert turn.in_grace and turn.end is None  # only a dead process's count is left
    await direct.hset(meta_key(turn.id), "interrupt", Status.INTERRUPTED.value)
    await store.check_turns()
    await asyncio.wait_for(asyncio.shield(turn.generation), 5)  # type: ignore[arg-type]
    assert turn.end is not None and turn.end.status is Status.INTERRUPTED


@pytest.mark.redis
async def test_the_heartbeat_leaves_a_turn_alone_while_its_record_is_being_written(
        store_here: tuple[RedisStore, aioredis.Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load the record of a new turn reaches Redis late; a heartbeat meanwhile must not take the
    missing record for a lost turn (it ended such turns with [ERROR] turn_lost)."""
    store, direct = store_here
    written = asyncio.Event()
    release = asyncio.Event()
    create = store.write_record

    async def slow_create(*args: object, **kwargs: object) -> object:
        written.set()
        await release.wait()  # the record is on its way
        return await create(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_record", slow_create)
    creating = asyncio.ensure_future(store.create(TurnRequest(user_message=Message("user", "hello there"))))
    await asyncio.wait_for(written.wait(), 5)
    (turn,) = [t for t in store.manager.running() if t.end is None]
    await store.check_turns()
    assert turn.end is None  # not "turn_lost"
    release.set()
    monkeypatch.undo()
    info = await asyncio.wait_for(creating, 5)
    assert info.id == turn.id and await direct.hget(meta_key(turn.id), "state") == "running"
    await store.check_turns()
    assert turn.end is None


@pytest.mark.redis
async def test_the_grace_period_counts_streams_on_other_processes_and_is_the_memory_stores(
        redis_server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    """A turn generating here with its only stream in another process runs on while that process is
    alive and counts the stream; once the count drops to zero, the turn's own grace timer (the one the
    memory store uses) cancels it after the grace period and one heartbeat's lag, with one log line."""
    caplog.set_level(logging.INFO, logger="nbchat.server.turn")
    async with running_store(redis_server.url, rate=20.0, grace_period=0.3, lease_seconds=0.6) as (store, direct):
        info = await store.create(TurnRequest(user_message=Message("user", "a long answer " * 50)))
        turn = store.manager.get(info.id)
        assert turn is not None
        await direct.set(lease_key("elsewhere"), "1", ex=30)
        await direct.hset(readers_key(turn.id), "elsewhere", "1")
        await asyncio.sleep(1.5)  # heartbeats every 0.2 s; grace and lag together are 0.7 s
        assert turn.end is None and not turn.in_grace
        left = time.monotonic()
        await direct.hset(readers_key(turn.id), "elsewhere", "0")
        await asyncio.wait_for(asyncio.shield(turn.generation), 5)  # type: ignore[arg-type]
        assert turn.end is not None and turn.end.status is Status.INTERRUPTED
        assert time.monotonic() - left >= store.settings.grace_period + store.writer.counting_delay
        assert [r.message for r in caplog.records].count(
            f"turn {turn.id}: nobody reattached within the grace period; cancelling") == 1


@pytest.mark.redis
async def test_a_claimed_turn_this_process_cannot_run_ends_with_its_reason_in_the_log(
        store_here: tuple[RedisStore, aioredis.Redis]) -> None:
    """A queued turn whose stream comes to a process that is shutting down ends with [ERROR] and that
    reason, as an entry a reader anywhere decodes, and its keys still expire."""
    store, direct = store_here
    info = await store.create(TurnRequest(user_message=Message("user", "hi")), start=False)
    store.manager.closing = True
    with pytest.raises(RequestError) as refused:
        await store.open(info.id, 0)
    assert refused.value.code == "shutting_down"
    ((entry_id, fields),) = await direct.xrange(log_key(info.id))
    assert entry_id == "1-0" and decode_entry(fields) == [End(
        status=Status.ERROR, error=ErrorInfo("shutting_down", "the server is shutting down"))]
    assert await direct.hget(meta_key(info.id), "state") == "ended"
    assert await direct.ttl(log_key(info.id)) > 0 and await direct.ttl(meta_key(info.id)) > 0
