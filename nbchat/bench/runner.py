"""The benchmark's scenarios and their order: what is measured against which server.

- ``ttft``: a one-piece answer from an echo server at rate 0 on a warm
  connection (the transport's and the turn's setup cost, nothing else);
- ``latency``: one stream at a set rate: one-way latency per chunk and the
  jitter the transport adds to the server's cadence;
- ``max_rate``: one long stream from an echo server at rate 0 (chunks/s at the client);
- ``concurrency``: 1..N streams at once, each at a set rate, starting at
  random offsets within one interval (independent users do not start in step),
  in rounds taking the transports in turn, each between two raw TCP windows
  (:mod:`.rounds`), after a warm-up that is not counted; the streams in this
  process or spread over several (:mod:`.loadgen`); with ``paired``, each
  transport's window streams at the same time as a raw TCP window, the two
  servers sharing one core (:mod:`.affinity`);
- ``model``: the embedded model's real cadence (optional).

Every scenario runs the raw TCP floor (:mod:`.rawtcp`) in the same run. The
servers are child processes (:mod:`.procs`); streams are read with the lean
clients of :mod:`.wire`, or with :mod:`nbchat.clients` (``client="nbchat"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..server.config import Settings
from ..wire.contract import TRANSPORTS
from .affinity import servers_on_one_core
from .loadgen import child_loop, ready_streams, spread_window
from .measure import Streamer, echo_message, open_streamer
from .procs import Child, descendants, nbchat_server, raw_server
from .quota import cpu_quota
from .rawtcp import stream_raw
from .report import Results, serve_workers, summarize
from .rounds import Window, in_pairs, in_rounds, pool_point, window_order
from .stats import Trace
from .wire import parse_host_port

MODEL_PROMPT = "Explain in two sentences why the sky is blue."


@dataclass
class BenchConfig:
    """What to run; :meth:`quick` is the CI-sized run (well under a minute)."""

    transports: tuple[str, ...] = TRANSPORTS
    ttft_turns: int = 20
    latency_rate: float = 100.0
    latency_chunks: int = 300
    latency_rounds: int = 3
    max_rate_chunks: int = 50_000
    concurrency: tuple[int, ...] = (1, 10, 100, 500)
    concurrency_rate: float = 20.0
    concurrency_seconds: float = 5.0
    #: each sweep point measured this many times, raw TCP and the transports in turn
    rounds: int = 1
    model: bool = False
    model_turns: int = 2
    model_max_tokens: int = 48
    client: str = "wire"
    progress: bool = True
    #: more ``nbchat serve`` options for every server measured (``--store URL``, ``--workers N``)
    serve_args: tuple[str, ...] = ()
    #: cores each worker of a measured server may use (a cgroup CPU quota, :mod:`.quota`); 0: uncapped
    server_cpus: float = 0.0
    #: processes the concurrency sweep's streams are spread over (:mod:`.loadgen`); 1: this one
    load_procs: int = 1
    #: each transport's sweep windows run at the same time as a raw TCP window of as many streams,
    #: the two servers on one core (:func:`.rounds.in_pairs`): the CPU ratio against load that comes and goes
    paired: bool = False

    def __post_init__(self) -> None:
        if self.paired and (self.load_procs > 1 or self.server_cpus > 0):
            raise ValueError("paired rounds compare one uncapped server with raw TCP, read by this process: "
                             "run them without --load-procs and --server-cpus")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        options: dict[str, Any] = {"ttft_turns": 5, "latency_chunks": 60, "max_rate_chunks": 10_000,
                                   "concurrency": (1, 50), "concurrency_seconds": 1.5, **overrides}
        return cls(**options)

    def workers(self) -> int:
        """Processes per measured server (``--workers N`` among :attr:`serve_args`)."""
        return serve_workers(self.serve_args)

    def steps(self) -> int:
        """How many measurements a run makes (for the progress bar)."""
        single = (len(self.transports) + 1) * 3
        windows = len(self.transports) * self.rounds if self.paired else len(window_order(self.transports,
                                                                                            self.rounds))
        sweep = len(self.concurrency) * windows
        return single + sweep + (len(self.transports) if self.model else 0)


def load_limits(config: BenchConfig) -> tuple[str, ...]:
    """Options for the server of the concurrency sweep: room for its largest point's streams (the
    server refuses connections past ``--max-connections``, 1,000 by default, with 503)."""
    wanted = max(config.concurrency, default=0) + 256
    return ("--max-connections", str(wanted)) if wanted > Settings().max_connections else ()


@dataclass
class _Run:
    config: BenchConfig
    results: Results
    advance: Callable[[str], None]
    servers: dict[str, Child] = field(default_factory=dict)

    def add(self, section: str, transport: str, traces: list[Trace], **extra: Any) -> None:
        self.results.add(summarize(section, transport, traces, **extra))

    async def raw(self, n: int, rate: float) -> Trace:
        host, port = parse_host_port(self.servers["raw"].url)
        return await stream_raw(port, n, rate, host=host)

    def streamer(self, server: str, transport: str) -> Streamer:
        child = self.servers[server]
        return open_streamer(child.url, child.token, transport, self.config.client)


async def run_benchmark(config: BenchConfig | None = None) -> Results:
    """Run every scenario and return the results (``await`` it, e.g. in a notebook)."""
    config = config or BenchConfig()
    results = Results(config=_config_dict(config))
    bar = _progress(config)
    run = _Run(config, results, advance=lambda what: _step(bar, what))
    try:
        extra = config.serve_args
        # the raw TCP floor is never capped: what it delivers is the load generator's own ceiling
        async with raw_server(processes=config.load_procs) as raw, measured_server(config, 0, extra) as fast, \
                measured_server(config, config.latency_rate, extra) as paced, \
                measured_server(config, config.concurrency_rate, (*extra, *load_limits(config))) as load:
            run.servers.update(raw=raw, fast=fast, paced=paced, load=load)
            await _ttft(run)
            await _latency(run)
            await _max_rate(run)
            with _sweep_cores(config, raw, load):
                for streams in config.concurrency:
                    await _concurrency(run, streams)
        if config.model:
            await _model(run)
    finally:
        if bar is not None:
            bar.close()
    return results


@contextlib.asynccontextmanager
async def measured_server(config: BenchConfig, rate: float, extra: tuple[str, ...]) -> AsyncIterator[Child]:
    """An echo ``nbchat serve``, in a cgroup of its own holding it (workers and all) to
    ``server_cpus`` cores per worker when the config sets a quota."""
    with contextlib.ExitStack() as stack:
        prefix: tuple[str, ...] = ()
        if config.server_cpus > 0:
            workers = config.workers()
            prefix = stack.enter_context(cpu_quota(config.server_cpus * workers, processes=workers)).prefix()
        async with nbchat_server(rate=rate, extra=extra, prefix=prefix) as child:
            yield child


def _sweep_cores(config: BenchConfig, *servers: Child) -> contextlib.AbstractContextManager[int | None]:
    """Paired rounds: the servers of the sweep on one core and this process on the others."""
    if not config.paired:
        return contextlib.nullcontext()
    return servers_on_one_core(pid for child in servers if child.process is not None
                               for pid in (child.process.pid, *descendants(child.process.pid)))


def run(config: BenchConfig | None = None) -> Results:
    """The blocking twin of :func:`run_benchmark`, for scripts and the command line."""
    return asyncio.run(run_benchmark(config))


def _config_dict(config: BenchConfig) -> dict[str, Any]:
    found = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
    # what the sweep's streams were read on: this process's asyncio loop, or children on child_loop()'s
    return {**found, "load_loop": child_loop() if config.load_procs > 1 else "asyncio"}


def _progress(config: BenchConfig) -> Any:
    if not config.progress:
        return None
    import importlib

    tqdm: Any = importlib.import_module("tqdm.auto").tqdm  # no type stubs
    return tqdm(total=config.steps(), desc="nbchat bench", unit="step", leave=False)


def _step(bar: Any, what: str) -> None:
    if bar is not None:
        bar.set_postfix_str(what)
        bar.update(1)


# ---------------------------------------------------------------- scenarios


async def _ttft(run: _Run) -> None:
    n = run.config.ttft_turns
    run.add("ttft", "raw", [await run.raw(1, 0.0) for _ in range(n)])
    run.advance("ttft raw")
    for transport in run.config.transports:
        async with run.streamer("fast", transport) as streamer:
            await streamer.turn(echo_message(1))  # warm: the connection is open, as in a conversation
            run.add("ttft", transport, [await streamer.turn(echo_message(1)) for _ in range(n)])
        run.advance(f"ttft {transport}")


async def _latency(run: _Run) -> None:
    # Rounds taking the transports in turn, so that load from elsewhere on the machine falls on all alike.
    rate, rounds = run.config.latency_rate, run.config.latency_rounds
    per_round = max(2, run.config.latency_chunks // rounds)
    traces: dict[str, list[Trace]] = {t: [] for t in ("raw", *run.config.transports)}
    async with contextlib.AsyncExitStack() as stack:
        streamers = {t: await stack.enter_async_context(run.streamer("paced", t)) for t in run.config.transports}
        for streamer in streamers.values():
            await streamer.turn(echo_message(1))
        for _ in range(rounds):
            traces["raw"].append(await run.raw(per_round, rate))
            for transport, streamer in streamers.items():
                traces[transport].append(await streamer.turn(echo_message(per_round)))
    for transport, found in traces.items():
        run.add("latency", transport, found, rate=rate)
        run.advance(f"latency {transport}")


async def _max_rate(run: _Run) -> None:
    n = run.config.max_rate_chunks
    run.add("max_rate", "raw", [await run.raw(n, 0.0)], rate=0.0)
    run.advance("max rate raw")
    for transport in run.config.transports:
        async with run.streamer("fast", transport) as streamer:
            await streamer.turn(echo_message(1))
            run.add("max_rate", transport, [await streamer.turn(echo_message(n))], rate=0.0)
        run.advance(f"max rate {transport}")


def warmup_chunks(config: BenchConfig) -> int:
    """Chunks per stream of a sweep point's warm-up windows: a second's worth, at most the point's own."""
    return max(2, round(config.concurrency_rate * min(1.0, config.concurrency_seconds)))


async def _concurrency(run: _Run, streams: int) -> None:
    rate = run.config.concurrency_rate
    n = max(2, round(rate * run.config.concurrency_seconds))
    kinds = ("raw", *run.config.transports)
    # Not counted: the first pass of this many streams through a server grows its heap and fills its
    # caches, and would fall on whichever window came first (raw TCP's). With rounds to take a median
    # of (the CPU target's runs); a single round stays as short as it was.
    if run.config.rounds > 1:
        for kind in kinds:
            await _window(run, kind, streams, warmup_chunks(run.config))

    async def measure(kind: str) -> Window:
        window = await _window(run, kind, streams, n)
        run.advance(f"{streams} streams {kind}")
        return window

    async def measure_pair(kind: str) -> tuple[Window, Window]:
        pair = await _paired_window(run, kind, streams, n)
        run.advance(f"{streams} streams {kind} beside raw")
        return pair

    if run.config.paired:
        windows = await in_pairs(kinds, run.config.rounds, measure_pair)
    else:
        windows = await in_rounds(kinds, run.config.rounds, measure)
    for row in pool_point(windows, rate=rate, streams=streams, paired=run.config.paired):
        run.results.add(row)


async def _window(run: _Run, kind: str, streams: int, n: int) -> Window:
    """One window: ``streams`` streams of ``n`` chunks against raw TCP or the load server, the server's
    CPU (its whole process tree, from /proc) read over the streaming alone."""
    server = run.servers["raw" if kind == "raw" else "load"]
    rate, procs = run.config.concurrency_rate, run.config.load_procs
    if procs > 1:
        spec = {"kind": kind, "url": server.url, "token": server.token, "streams": streams, "n": n, "rate": rate,
                "client": run.config.client}
        traces, server_cpu, client_cpu = await spread_window(spec, procs, server.cpu_seconds)
        return Window(traces, server_cpu, client_cpu)
    async with ready_streams(kind, server.url, server.token, streams, n, rate, run.config.client) as go:
        server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
        traces = await go()
        return Window(traces, server.cpu_seconds() - server_cpu, time.process_time() - client_cpu)


async def _paired_window(run: _Run, kind: str, streams: int, n: int) -> tuple[Window, Window]:
    """One paired window: ``streams`` streams of ``n`` chunks against the load server over ``kind`` and
    as many against raw TCP, all at once; each server's CPU read over the streaming alone, this
    process's shared by the two windows in proportion to the chunks each read."""
    raw, load = run.servers["raw"], run.servers["load"]
    rate, client = run.config.concurrency_rate, run.config.client
    async with ready_streams("raw", raw.url, raw.token, streams, n, rate, client) as go_raw, \
            ready_streams(kind, load.url, load.token, streams, n, rate, client) as go:
        raw_cpu, load_cpu, client_cpu = raw.cpu_seconds(), load.cpu_seconds(), time.process_time()
        floor, traces = await asyncio.gather(go_raw(), go())
        raw_cpu, load_cpu = raw.cpu_seconds() - raw_cpu, load.cpu_seconds() - load_cpu
        client_cpu = time.process_time() - client_cpu
    ours, theirs = sum(t.chunks for t in traces), sum(t.chunks for t in floor)
    share = ours / (ours + theirs) if ours + theirs else 0.5
    return (Window(traces, load_cpu, client_cpu * share), Window(floor, raw_cpu, client_cpu * (1 - share)))


async def _model(run: _Run) -> None:
    from ..wire.errors import ServerStartError

    if importlib.util.find_spec("llama_cpp") is None:  # say so plainly instead of a server that fails to start
        run.results.notes.append("model: skipped, llama-cpp-python is not installed")
        return
    try:
        async with nbchat_server(backend="smollm2") as server:
            run.servers["model"] = server
            for transport in run.config.transports:
                async with run.streamer("model", transport) as streamer:
                    await streamer.turn(MODEL_PROMPT, 4)  # warms the model and the connection
                    traces = [await streamer.turn(MODEL_PROMPT, run.config.model_max_tokens)
                              for _ in range(run.config.model_turns)]
                run.add("model", transport, traces)
                run.advance(f"model {transport}")
    except ServerStartError as exc:
        run.results.notes.append(f"model: skipped, the smollm2 server did not start ({exc})")
