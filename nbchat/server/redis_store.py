"""The shared turn store: several nbchat processes keep one turn log in Redis.

A turn generates in the process that started it (its *owner*), exactly as
in the memory store: a :class:`RedisTurn` fans its pieces out to the streams
attached in that process from its own replay buffer. Every event is also
copied, in batches, to a Redis Stream, so a stream attached in any other
process reads it from there (:class:`RemoteReader`: from its position on,
then blocking for new entries). Keys (``nbchat:`` prefix)::

    turn:{id}          hash    uid, state (pending|running|ended), owner, request (JSON), interrupt
    turn:{id}:log      stream  entry "{seq}-0": a chunk {seq, c, t} or the end {seq, status, code, message}
    turn:{id}:readers  hash    process id -> streams attached in that process (for the grace period)
    uid:{uid}          string  the uid's current turn
    proc:{id}          string  the process's lease, renewed every lease/3 s

An interrupt sent to any process is published on ``nbchat:interrupt``; the
owner cancels at once (and finds the ``interrupt`` field on its next
heartbeat should the message be lost). A queued turn is claimed by the
process whose stream starts it. A reader that finds the owner's lease gone
ends the turn with ``[ERROR]`` (``process_lost``). A stream key's entry bound
(``stream_max_entries``) and the keys' TTLs replace the memory bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from ..backends import Backend
from ..wire.errors import RequestError, ResumeError
from ..wire.events import Chunk, End, ErrorInfo, Event, Status, TurnRequest
from ..wire.protocol import encode_turn_request, parse_turn_request
from .config import Settings
from .recording import Recorder
from .store import Reader, TurnInfo, TurnStore, info_of
from .turns import Direct, Turn, TurnManager, TurnState, is_turn_id, new_turn_id

log = logging.getLogger("nbchat.server.redis_store")

PREFIX = "nbchat:"
CHANNEL = PREFIX + "interrupt"
#: a blocked remote reader wakes this often to check the owner's lease
POLL_SECONDS = 1.0
#: the shortest time between two writes of one process's events (a stream in another process
#: sees a chunk up to this much later than one in the owner's process)
FLUSH_SECONDS = 0.005
#: entries one read takes at most
READ_COUNT = 1000
#: connections to Redis for commands, and for the blocking reads of remote streams
COMMAND_CONNECTIONS = 64
READ_CONNECTIONS = 1024
#: seconds a command waits for a free connection before the request fails with 503
POOL_WAIT = 5.0

# Queue a turn's end unless it already ended: shared by the interrupt of a queued turn and
# by a reader that found the owner's lease gone (KEYS: meta, log; ARGV: status, code, message, ttl).
_END_ENTRY = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local seq = 1
if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
redis.call('XADD', KEYS[2], seq .. '-0', 'seq', seq, 'status', ARGV[1], 'code', ARGV[2], 'message', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'ended')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
"""

# Append a batch of events to the turns' streams in one command with one reply, its entries in one
# JSON argument: the Python client's cost is per command, per reply and per argument, and one XADD per
# chunk spent more CPU on them than on the chunk. KEYS: the streams, metas and reader hashes the
# entries name; ARGV: maxlen, ttl, then a JSON array of entries, each
#   [log, seq, content, time or null]                          a chunk
#   [log, seq, status, code, message, meta, readers]           the end ("" code and message: no error)
# A turn whose entry fails (out of memory, say) does not stop the others: returns the failed logs' numbers.
# Each stream gets its expiry with its entries, in the same script: a stream written by a process
# that is killed before its first heartbeat must not outlive it (the heartbeat only extends it).
APPEND_SCRIPT = """
local maxlen, ttl, failed, timed = ARGV[1], ARGV[2], {}, {}
local function add(key, seq, ...)
  local id = string.format('%d', seq)
  local ok = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, id .. '-0', 'seq', id, ...)
  if not timed[key] then
    redis.call('EXPIRE', key, ttl)
    timed[key] = true
  end
  return type(ok) ~= 'table' or not ok.err
end
for _, e in ipairs(cjson.decode(ARGV[3])) do
  local log, ok = KEYS[e[1]], true
  if #e == 4 then
    if e[4] == cjson.null then ok = add(log, e[2], 'c', e[3])
    else ok = add(log, e[2], 'c', e[3], 't', string.format('%.17g', e[4])) end
  else
    if e[4] == '' then ok = add(log, e[2], 'status', e[3])
    else ok = add(log, e[2], 'status', e[3], 'code', e[4], 'message', e[5]) end
    redis.call('HSET', KEYS[e[6]], 'state', 'ended')
    for _, key in ipairs({KEYS[e[6]], log, KEYS[e[7]]}) do redis.call('EXPIRE', key, ttl) end
  end
  if not ok then failed[#failed + 1] = e[1] end
end
return failed
"""

# The heartbeat's look at the turns generating in this process, in one command: each turn's state,
# pending interrupt and attached readers, and its keys kept alive. KEYS: meta, log, readers of each
# turn; ARGV: ttl. Returns {state or "", interrupt or "", {process, count, ...}} per turn.
CHECK_SCRIPT = """
local out = {}
for i = 1, #KEYS, 3 do
  local found = redis.call('HMGET', KEYS[i], 'state', 'interrupt')
  local readers = redis.call('HGETALL', KEYS[i + 2])
  for j = 0, 2 do redis.call('EXPIRE', KEYS[i + j], ARGV[1]) end
  out[#out + 1] = {found[1] or '', found[2] or '', readers}
end
return out
"""

# KEYS: meta, log; ARGV: status, code, message, ttl, channel. Returns {state, uid}.
INTERRUPT_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {} end
local uid = redis.call('HGET', KEYS[1], 'uid') or ''
if state == 'pending' then
""" + _END_ENTRY + """
  return {'ended', uid}
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'interrupt', ARGV[1])
  redis.call('PUBLISH', ARGV[5], KEYS[1])
end
return {state, uid}
"""

# KEYS: meta, log, the owner's lease; ARGV: status, code, message, ttl, owner. 1 when it ended the turn.
ABANDON_SCRIPT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[5] then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
""" + _END_ENTRY + """
return 1
"""

# KEYS: meta; ARGV: this process. Returns {'claimed', request, uid} or {state}.
CLAIM_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1])
  return {'claimed', redis.call('HGET', KEYS[1], 'request'), redis.call('HGET', KEYS[1], 'uid') or ''}
end
return {state or 'gone'}
"""


def meta_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{turn_id}"


def log_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{turn_id}:log"


def readers_key(turn_id: str) -> str:
    return f"{PREFIX}turn:{turn_id}:readers"


def uid_key(uid: str) -> str:
    return f"{PREFIX}uid:{uid}"


def lease_key(process: str) -> str:
    return f"{PREFIX}proc:{process}"


def encode_entry(event: Event, seq: int) -> dict[FieldT, EncodableT]:
    """A stream entry's fields for an event (``seq`` is the chunk's, or the end's own slot)."""
    if isinstance(event, Chunk):
        fields: dict[FieldT, EncodableT] = {"seq": event.seq, "c": event.content}
        if event.server_time is not None:
            fields["t"] = event.server_time
        return fields
    assert isinstance(event, End)
    fields = {"seq": seq, "status": event.status.value}
    if event.error is not None:
        fields.update(code=event.error.code, message=event.error.message)
    return fields


def decode_entry(fields: dict[str, str]) -> Event:
    status = fields.get("status")
    if status is None:
        ts = fields.get("t")
        return Chunk(content=fields.get("c", ""), seq=int(fields["seq"]), server_time=float(ts) if ts else None)
    code = fields.get("code")
    error = ErrorInfo(code, fields.get("message", "")) if code else None
    return End(status=Status(status), error=error)


def entry_seq(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def store_error(exc: BaseException) -> End:
    # Redis's own words (a script hash, a key's type, an address) are for the log (the caller's), not clients.
    return End(status=Status.ERROR, error=ErrorInfo(
        "store_unavailable", "the turn store (Redis) failed; the turn cannot continue, ask again"))


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """A Redis failure in a request becomes a 503 (JSON) or a WebSocket [ERROR], never a 500; what
    Redis said goes to the log only."""
    try:
        yield
    except RedisError as exc:
        log.warning("the turn store (Redis) failed in a request: %s", exc)
        raise RequestError("the turn store (Redis) is unreachable; try again shortly",
                           code="store_unavailable", status=503) from exc


class RedisTurn(Turn):
    """A turn generating in this process whose events are also copied to the shared log."""

    #: when the last stream anywhere left (the heartbeat ends the turn after the grace period)
    idle_since: float | None = None

    def _published(self, event: Event) -> None:
        manager = self._manager
        assert isinstance(manager, RedisManager)
        manager.store.writer.add(self, event)

    def _detach_grace(self) -> None:
        # Streams attached in other processes count too: the heartbeat, which sees them, keeps the grace.
        return None


class RedisManager(TurnManager):
    turn_class = RedisTurn

    def __init__(self, backend: Backend, settings: Settings, store: RedisStore,
                 recorder: Recorder | None = None) -> None:
        super().__init__(backend, settings, recorder)
        self.store = store


class Writer:
    """Copies events to the turns' streams: everything queued while one write is out goes in the next
    command (:data:`APPEND_SCRIPT`), so a busy process writes many chunks per round trip, in order."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._queue: list[tuple[RedisTurn, Event]] = []
        self._task: asyncio.Task[None] | None = None
        self._append = store.redis.register_script(APPEND_SCRIPT)

    def add(self, turn: RedisTurn, event: Event) -> None:
        self._queue.append((turn, event))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def drain(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def _flush(self) -> None:
        settings = self.store.settings
        while self._queue:
            batch, self._queue = self._queue, []
            keys, entries = append_args(batch)
            try:
                failed = await self._append(keys=keys, args=[settings.stream_max_entries,
                                                             max(1, int(settings.retain_seconds)), entries])
            except RedisError as exc:
                self._fail({turn for turn, _ in batch}, exc)
                continue
            if failed:
                lost = {keys[int(n) - 1] for n in failed}  # Lua numbers the keys from 1
                self._fail({turn for turn, _ in batch if log_key(turn.id) in lost},
                           RedisError("the store refused the turn's entries"))
            # What comes meanwhile waits for the next command: at load, hundreds of events per command
            # (each costs the client a task and a timeout); a quiet turn's chunk still goes at once.
            await asyncio.sleep(FLUSH_SECONDS)

    @staticmethod
    def _fail(turns: set[RedisTurn], exc: RedisError) -> None:
        # A turn whose write failed cannot be resumed elsewhere: end it here with [ERROR] too.
        for turn in turns:
            log.warning("turn %s: writing to the store failed: %s", turn.id, exc)
            end = store_error(exc)
            turn.interrupt(end.status, end.error)


def append_args(batch: list[tuple[RedisTurn, Event]]) -> tuple[list[str], str]:
    """:data:`APPEND_SCRIPT`'s keys and entries (JSON) for ``batch``; entries name keys by number, from 1."""
    numbers: dict[str, int] = {}

    def number(key: str) -> int:
        return numbers.setdefault(key, len(numbers) + 1)

    entries: list[list[object]] = []
    for turn, event in batch:
        log_number = number(log_key(turn.id))
        if isinstance(event, Chunk):
            entries.append([log_number, event.seq, event.content, event.server_time])
            continue
        assert isinstance(event, End)
        code, message = (event.error.code, event.error.message) if event.error is not None else ("", "")
        entries.append([log_number, turn.last_seq + 1, event.status.value, code, message,
                        number(meta_key(turn.id)), number(readers_key(turn.id))])
    return list(numbers), json.dumps(entries, ensure_ascii=False, separators=(",", ":"))


class RemoteReader:
    """A stream in this process reading a turn that generates in another one, from the shared log."""

    def __init__(self, store: RedisStore, turn_id: str, after: int) -> None:
        self.store = store
        self._turn_id = turn_id
        self.pos = after
        self.done = False

    @property
    def turn_id(self) -> str:
        return self._turn_id

    async def __aenter__(self) -> RemoteReader:
        self.store.count_reader(self._turn_id, +1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.store.count_reader(self._turn_id, -1)

    async def next_batch(self, timeout: float | None = None, direct: Direct | None = None) -> list[Event]:
        # ``direct`` is for a turn generating here; this one's entries come by reads, in batches.
        if self.done:
            return []
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - loop.time()))
            try:
                found = await self.store.reads.xread({log_key(self._turn_id): f"{self.pos}-0"},
                                                     count=READ_COUNT, block=max(1, int(wait * 1000)))
                events = self._decode(found) if found else await self._check_owner()
            except RedisError as exc:
                log.warning("turn %s: reading from the store failed: %s", self._turn_id, exc)
                events = [store_error(exc)]
            if events:
                self.done = self.done or not isinstance(events[-1], Chunk)
                return events
            if deadline is not None and loop.time() >= deadline:
                return []

    def _decode(self, found: Any) -> list[Event]:
        events: list[Event] = []
        for _key, entries in found:
            for entry_id, fields in entries:
                seq = entry_seq(entry_id)
                if seq != self.pos + 1:
                    behind = ErrorInfo("resume_unavailable", f"seq {self.pos + 1} is no longer in the turn's stream "
                                       f"(it starts at {seq}): the stream fell behind the store's bound")
                    return [*events, End(status=Status.ERROR, error=behind)]
                event = decode_entry(fields)
                events.append(event)
                self.pos = seq
                if not isinstance(event, Chunk):
                    return events
        return events

    async def _check_owner(self) -> list[Event]:
        """Nothing new for a while: is the turn still there, and its owner alive?"""
        lost = await self.store.check_owner(self._turn_id)
        return [] if lost is None else [lost]

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.done:
            for ev in await self.next_batch():
                yield ev


class RedisStore(TurnStore):
    """Turns shared through Redis by every process given the same ``--store`` URL."""

    def __init__(self, backend: Backend, settings: Settings, recorder: Recorder | None = None) -> None:
        self.settings = settings
        self.manager = RedisManager(backend, settings, self, recorder)
        self.process = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        #: commands: a bounded pool that queues a burst (500 turns starting at once) instead of refusing it
        self.redis = self._client(COMMAND_CONNECTIONS)
        #: blocking reads of streams attached here to turns generating elsewhere: one connection each
        self.reads = self._client(READ_CONNECTIONS)
        self.writer = Writer(self)
        self._interrupt = self.redis.register_script(INTERRUPT_SCRIPT)
        self._abandon = self.redis.register_script(ABANDON_SCRIPT)
        self._claim = self.redis.register_script(CLAIM_SCRIPT)
        self._check = self.redis.register_script(CHECK_SCRIPT)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    def _client(self, connections: int) -> aioredis.Redis:
        pool = aioredis.BlockingConnectionPool.from_url(
            self.settings.store, max_connections=connections, timeout=POOL_WAIT, decode_responses=True,
            socket_connect_timeout=2, socket_timeout=POLL_SECONDS + 4, health_check_interval=30,
            # one quick retry: a pooled connection broken by a Redis restart reconnects instead of failing
            retry=Retry(ConstantBackoff(0.1), 1))
        return aioredis.Redis(connection_pool=pool)

    @property
    def ttl(self) -> int:
        """Seconds a running turn's keys live without a heartbeat (a queued one's: pending_seconds)."""
        return max(1, int(self.settings.retain_seconds + self.settings.lease_seconds))

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self.redis.ping()
            await self._renew_lease()
        except RedisError as exc:
            await self._close_clients()
            raise RuntimeError(f"cannot reach the turn store at {self.settings.store}: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._heartbeat(), name="nbchat-store-heartbeat"),
                       loop.create_task(self._listen(), name="nbchat-store-interrupts")]

    async def shutdown(self) -> None:
        await self.manager.shutdown()
        await self.writer.drain()

    async def aclose(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in [*self._loops, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError):
            await self.redis.delete(lease_key(self.process))
        await self._close_clients()

    async def _close_clients(self) -> None:
        # A client made on a pool of its own does not close that pool by default: its sockets would leak.
        await self.redis.aclose(close_connection_pool=True)
        await self.reads.aclose(close_connection_pool=True)

    # ------------------------------------------------------------ the store

    async def create(self, request: TurnRequest, uid: str | None = None, *, start: bool = True) -> TurnInfo:
        uid = uid if uid is not None else request.uid
        turn_id = new_turn_id()
        with unavailable():
            previous = await self.redis.get(uid_key(uid)) if uid else None
        turn = self.manager.create(request, uid, start=False, turn_id=turn_id) if start else None
        ttl = self.ttl if start else max(1, int(self.settings.pending_seconds))
        fields: dict[FieldT, EncodableT] = {
            "uid": uid or "", "state": "running" if start else "pending", "owner": self.process if start else "",
            "request": json.dumps(encode_turn_request(request), ensure_ascii=False)}
        pipe = self.redis.pipeline(transaction=True)  # the record and its expiry at once, or neither
        pipe.hset(meta_key(turn_id), mapping=fields)
        pipe.expire(meta_key(turn_id), ttl)
        if uid:
            pipe.set(uid_key(uid), turn_id, ex=max(ttl, int(self.settings.pending_seconds)))
        try:
            with unavailable():
                await pipe.execute()
                if previous and previous != turn_id:
                    await self.interrupt(str(previous))  # one current turn per uid, on whichever process it runs
        except RequestError:
            if turn is not None:
                self.manager.forget(turn_id)
            raise
        if turn is None:
            return TurnInfo(turn_id, uid, TurnState.PENDING)
        turn.start()
        return info_of(turn)

    async def get(self, turn_id: str) -> TurnInfo | None:
        turn = self.manager.get(turn_id)
        if turn is not None:
            return info_of(turn)
        if not is_turn_id(turn_id):
            return None  # not one this server makes: it could name another key (``<id>:log``)
        with unavailable():
            state, uid = await self.redis.hmget(meta_key(turn_id), ["state", "uid"])
        if state is None:
            return None
        return TurnInfo(turn_id, str(uid) if uid else None, TurnState(state))

    async def latest(self, uid: str) -> TurnInfo | None:
        with unavailable():
            turn_id = await self.redis.get(uid_key(uid))
        return None if turn_id is None else await self.get(str(turn_id))

    async def open(self, turn_id: str, after: int) -> Reader:
        turn = self.manager.get(turn_id)
        if turn is None and not is_turn_id(turn_id):
            raise ResumeError(f"unknown turn {turn_id[:40]!r}")
        if turn is None:
            with unavailable():
                turn = await self._claim_if_queued(turn_id, after)
        if turn is not None:
            sub = turn.subscribe(after)
            turn.start()
            return sub
        with unavailable():
            await self._check_position(turn_id, after)
        return RemoteReader(self, turn_id, after)

    async def interrupt(self, turn_id: str, status: Status = Status.INTERRUPTED) -> TurnInfo | None:
        turn = self.manager.get(turn_id)
        if turn is not None:
            turn.interrupt(status)
            return info_of(turn)
        if not is_turn_id(turn_id):
            return None
        with unavailable():
            found = await self._interrupt(keys=[meta_key(turn_id), log_key(turn_id)],
                                          args=[status.value, "", "", self.ttl, CHANNEL])
        if not found:
            return None
        return TurnInfo(turn_id, found[1] or None, TurnState(found[0]))

    # ------------------------------------------------------------ helpers

    async def _claim_if_queued(self, turn_id: str, after: int) -> Turn | None:
        """Start a queued turn here (its stream attached here); None when it runs elsewhere or ended."""
        state = await self.redis.hget(meta_key(turn_id), "state")
        if state is None:
            raise ResumeError(f"unknown turn {turn_id!r} (it may have expired)")
        if state != "pending":
            return None
        if after > 0:
            raise ResumeError(f"turn {turn_id} has not reached seq {after} yet")
        claimed = await self._claim(keys=[meta_key(turn_id)], args=[self.process])
        if claimed[0] != "claimed":
            return None
        request = parse_turn_request(json.loads(claimed[1]))
        try:
            turn = self.manager.create(request, claimed[2] or None, start=False, turn_id=turn_id)
        except RequestError as exc:  # too many turns here, or shutting down: end it rather than orphan it
            await self._abandon_claimed(turn_id, exc)
            raise
        await self.redis.expire(meta_key(turn_id), self.ttl)
        return turn

    async def _abandon_claimed(self, turn_id: str, exc: RequestError) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(log_key(turn_id), encode_entry(End(Status.ERROR, ErrorInfo(exc.code, str(exc))), 1), id="1-0")
        pipe.hset(meta_key(turn_id), "state", "ended")
        for key in (log_key(turn_id), meta_key(turn_id)):
            pipe.expire(key, self.ttl)
        await pipe.execute()

    async def _check_position(self, turn_id: str, after: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(log_key(turn_id), count=1)
        pipe.xrevrange(log_key(turn_id), count=1)
        first, last = await pipe.execute()
        ended = bool(last) and "status" in last[0][1]
        last_seq = entry_seq(last[0][0]) - (1 if ended else 0) if last else 0
        if after > 0 and after > last_seq and not ended:
            raise ResumeError(f"turn {turn_id} has not reached seq {after} yet")
        if first and entry_seq(first[0][0]) > after + 1 and after < last_seq:
            raise ResumeError(f"turn {turn_id} no longer holds seq {after + 1}: its stream starts at "
                              f"{entry_seq(first[0][0])}")

    async def check_owner(self, turn_id: str) -> End | None:
        """An End when the turn cannot go on: its record is gone; ends it when its owner's lease ran out."""
        state, owner = await self.redis.hmget(meta_key(turn_id), ["state", "owner"])
        if state is None:
            return End(status=Status.ERROR, error=ErrorInfo(
                "turn_lost", "the turn is gone from the store (it expired, or the store restarted); ask again"))
        if state == "running" and owner and owner != self.process:
            await self._abandon(keys=[meta_key(turn_id), log_key(turn_id), lease_key(str(owner))],
                                args=[Status.ERROR.value, "process_lost",
                                      "the process generating this turn stopped (its lease ran out); ask again",
                                      self.ttl, owner])
        return None  # an end it wrote is read on the next pass

    def count_reader(self, turn_id: str, delta: int) -> None:
        """Count a stream attached here to a turn generating elsewhere (its owner's grace period sees it).
        In a task of its own: a stream cancelled by its client's disconnect still counts itself out."""
        async def write() -> None:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hincrby(readers_key(turn_id), self.process, delta)
            pipe.expire(readers_key(turn_id), self.ttl)
            with contextlib.suppress(RedisError):
                await pipe.execute()

        task = asyncio.get_running_loop().create_task(write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ heartbeat, interrupts

    async def _renew_lease(self) -> None:
        await self.redis.set(lease_key(self.process), "1", px=int(self.settings.lease_seconds * 1000))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                await self._renew_lease()
                await self.check_turns()
            except RedisError as exc:
                log.warning("the turn store (Redis) failed: %s", exc)
                for turn in self.manager.running():
                    end = store_error(exc)
                    turn.interrupt(end.status, end.error)
            except Exception:  # the heartbeat must outlive a bug in one pass
                log.exception("turn store heartbeat failed")

    async def check_turns(self) -> None:
        """For each turn generating here: keep its keys alive, apply a missed interrupt, end it when its
        record is gone, and run the grace period over the streams attached on every process."""
        # Running ones only: a turn being created is here before its record is written (under load the
        # write can take seconds), and a look at it then would find no record and end it as lost.
        turns = [t for t in self.manager.running() if isinstance(t, RedisTurn) and t.state is TurnState.RUNNING]
        if not turns:
            return
        keys = [key for t in turns for key in (meta_key(t.id), log_key(t.id), readers_key(t.id))]
        results = await self._check(keys=keys, args=[self.ttl])
        found = [((state or None, interrupt or None), dict(zip(flat[::2], flat[1::2], strict=True)))
                 for state, interrupt, flat in results]
        others = sorted({p for _, readers in found for p in readers if p != self.process})
        alive = {self.process}
        if others:
            pipe = self.redis.pipeline(transaction=False)
            for process in others:
                pipe.exists(lease_key(process))
            alive.update(p for p, live in zip(others, await pipe.execute(), strict=True) if live)
        now = time.monotonic()
        for turn, ((state, interrupt), readers) in zip(turns, found, strict=True):
            self._check_turn(turn, state, interrupt, readers, alive, now)

    def _check_turn(self, turn: RedisTurn, state: str | None, interrupt: str | None, readers: dict[str, str],
                    alive: set[str], now: float) -> None:
        if state is None:
            turn.interrupt(Status.ERROR, ErrorInfo(
                "turn_lost", "the turn's record is gone from the store (did Redis restart?); ask again"))
            return
        if interrupt:
            turn.interrupt(Status(interrupt))
            return
        attached = turn.attached + sum(int(n) for p, n in readers.items() if p in alive)
        if attached > 0:
            turn.idle_since = None
        elif turn.idle_since is None:
            turn.idle_since = now
        elif now - turn.idle_since >= self.settings.grace_period:
            log.info("turn %s: nobody reattached within the grace period; cancelling", turn.id)
            turn.interrupt()

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=POLL_SECONDS)
                        if message is not None:
                            self._on_interrupt(str(message["data"]))
            except RedisError as exc:
                log.warning("listening for interrupts failed (retrying): %s", exc)
                await asyncio.sleep(POLL_SECONDS / 2)

    def _on_interrupt(self, key: str) -> None:
        turn = self.manager.get(key.removeprefix(PREFIX + "turn:"))
        if turn is not None and turn.end is None:
            turn.interrupt()
