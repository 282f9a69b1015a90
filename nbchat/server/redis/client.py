"""The shared store's connections to Redis, and what a failure of one becomes for a client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT

from ...wire.errors import RequestError
from ...wire.events import End, ErrorInfo, Status

log = logging.getLogger("nbchat.server.redis")

#: a blocked remote reader wakes this often to check the owner's lease
POLL_SECONDS = 1.0
#: connections to Redis for commands, and for the blocking reads of remote streams
COMMAND_CONNECTIONS = 64
READ_CONNECTIONS = 1024
#: seconds a command waits for a free connection before the request fails with 503
POOL_WAIT = 5.0


def connect(url: str, connections: int) -> aioredis.Redis:
    """A client on a bounded pool of its own, which queues a burst (500 turns starting at once)
    instead of refusing it."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=POOL_WAIT, decode_responses=True,
        socket_connect_timeout=2, socket_timeout=POLL_SECONDS + 4, health_check_interval=30,
        # one quick retry: a pooled connection broken by a Redis restart reconnects instead of failing
        retry=Retry(ConstantBackoff(0.1), 1))
    return aioredis.Redis(connection_pool=pool)


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


class Batched:
    """Calls of one script made in the same pass of the event loop, sent together in one pipeline: a
    burst of new turns (500 streams starting at once) costs a few round trips, not one each, and no
    wait for a pooled connection per turn (the pool's lock and condition cost more than the call)."""

    def __init__(self, client: aioredis.Redis, script: AsyncScript) -> None:
        self._client = client
        self._script = script
        self._calls: list[tuple[Sequence[str], Sequence[EncodableT], asyncio.Future[Any]]] = []

    async def __call__(self, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls.append((keys, args, future))
        if len(self._calls) == 1:
            asyncio.get_running_loop().call_soon(self._send)
        return await future

    def _send(self) -> None:
        calls, self._calls = self._calls, []
        task = asyncio.get_running_loop().create_task(self._execute(calls))
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def _execute(self, calls: list[tuple[Sequence[str], Sequence[EncodableT], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._pipeline(calls)
            unknown = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if unknown:  # Redis restarted or flushed its scripts since this process loaded it
                self._script.sha = await self._client.script_load(self._script.script)
                again = await self._pipeline([calls[i] for i in unknown])
                for i, result in zip(unknown, again, strict=True):
                    results[i] = result
        except BaseException as exc:
            for _, _, future in calls:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RedisError(str(exc)))
            raise
        for (_, _, future), result in zip(calls, results, strict=True):
            if future.done():  # its caller went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _pipeline(self, calls: Sequence[tuple[Sequence[str], Sequence[EncodableT], Any]]) -> list[Any]:
        """The calls by the script's hash, in one pipeline. Not through ``AsyncScript.__call__`` with the
        pipeline as its client: that registers the script with the pipeline, whose ``execute`` then asks
        Redis whether it knows the script (a round trip of its own before every batch), and it checks
        its client against redis-py's pipeline classes (Protocol subclasses: slow ``isinstance``)."""
        pipe = self._client.pipeline(transaction=False)
        sha = self._script.sha
        for keys, args, _ in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results
