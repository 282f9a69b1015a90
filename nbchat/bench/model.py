"""The model benchmark: what nbchat's streaming costs on top of the embedded model.

One run, the same greedy prompts down every path, a table at the end:

- ``in-process``: llama.cpp in the benchmark's own process, with the same
  chat template, KV-block reuse and sampling as the model process (the floor);
- ``model-process``: :class:`~nbchat.backends.smollm2.SmolLM2Backend`, its
  model in a supervised child process, called directly, no server;
- ``nbchat/<transport>``: an ``nbchat serve`` subprocess, read with
  :mod:`nbchat.clients` over WebSocket, SSE, NDJSON and the OpenAI stream;
- ``llama_cpp.server``: llama-cpp-python's own OpenAI-compatible server on the
  same model file and thread count, read with nbchat's own ``openai`` client.

Both servers run as children started by :mod:`nbchat.bench.procs`.

TTFT is measured by the client, from sending the request to the first
non-empty piece; tokens/s is the decode rate after it, (pieces - 1) / (last -
first), a piece being one streamed chunk (one token, except where the model
holds back an incomplete character). Paths are taken in turn within each
round, so that load from elsewhere on the machine falls on all of them alike.

    python -m nbchat.bench.model --rounds 5
    python -m nbchat.bench.model --conversations    # TTFT per turn as conversations grow
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx

from ..backends.base import GenerationRequest
from ..backends.gguf import DEFAULT_N_CTX, default_threads
from ..backends.llama_model import Model
from ..backends.llama_worker import Control, run_job
from ..backends.model_messages import Generate, Piece, Reply
from ..backends.smollm2 import SmolLM2Backend, find_gguf
from ..backends.worker_process import worker_environment
from ..clients import ChatClient, collect, connect
from ..wire.contract import OPENAI_MODELS_PATH, TRANSPORTS, Transport
from ..wire.errors import ServerStartError
from ..wire.events import Message
from . import conversations
from .procs import START_TIMEOUT, Child, drain, free_port, in_background, nbchat_server, python_child

PROMPTS = (
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about a lighthouse.",
    "List five tips for writing clear Python code.",
)
LLAMA_MODEL = "smollm2"  # the alias llama_cpp.server serves the model file under


#: opens one path of the conversation benchmark, its servers and clients closed with the stack
PathOpener = Callable[[ExitStack], "conversations.Ask"]


@dataclass
class Sample:
    """One answer as a client saw it: arrival times of its pieces, and its text."""

    started: float
    arrivals: list[float] = field(default_factory=list)
    text: str = ""

    def add(self, piece: str) -> None:
        if piece:
            self.arrivals.append(time.perf_counter())
            self.text += piece

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.started

    @property
    def rate(self) -> float:
        span = self.arrivals[-1] - self.arrivals[0]
        return (len(self.arrivals) - 1) / span if span > 0 else float("nan")


Runner = Callable[[str], Sample]


def piece_of(reply: Reply) -> str:
    """The text a reply of the model process carries ("" for all but pieces)."""
    return reply.text if isinstance(reply, Piece) else ""


def in_process_runner(threads: int, max_tokens: int) -> Runner:
    """llama.cpp loaded here, driven by the model process's own job runner: the floor."""
    model = Model(str(find_gguf()), threads, DEFAULT_N_CTX)
    jobs = itertools.count()

    def run(prompt: str) -> Sample:
        sample = Sample(time.perf_counter())
        job = Generate(next(jobs), [{"role": "user", "content": prompt}], max_tokens, {"temperature": 0.0})
        run_job(model, job, Control(), lambda reply: sample.add(piece_of(reply)))
        return sample

    return run


def backend_runner(threads: int, max_tokens: int) -> tuple[Runner, Callable[[], None]]:
    """The backend, model process included, on a private event loop; returns (run one prompt, close)."""
    loop = asyncio.new_event_loop()
    backend = SmolLM2Backend(n_threads=threads)
    loop.run_until_complete(backend.start())

    async def answer(prompt: str) -> Sample:
        request = GenerationRequest([Message("user", prompt)], temperature=0.0, max_tokens=max_tokens)
        sample = Sample(time.perf_counter())
        async for piece in backend.generate(request):
            if isinstance(piece, str):
                sample.add(piece)
        return sample

    def close() -> None:
        loop.run_until_complete(backend.aclose())
        loop.close()

    return (lambda prompt: loop.run_until_complete(answer(prompt))), close


def nbchat_runner(client: ChatClient, max_tokens: int, model: str | None = None) -> Runner:
    """One client kept for the whole run, as a notebook keeps it: its connection is reused."""

    def run(prompt: str) -> Sample:
        sample = Sample(time.perf_counter())
        with client.stream(prompt, temperature=0.0, max_tokens=max_tokens, model=model) as turn:
            collect(turn, lambda chunk: sample.add(chunk.content))
        return sample

    return run


def fresh_ask(threads: int, max_tokens: int) -> conversations.Ask:
    """llama.cpp in this process, re-reading the whole prompt every turn: what no cache costs."""
    model = Model(str(find_gguf()), threads, DEFAULT_N_CTX)

    def ask(history: list[Message], text: str) -> conversations.Answer:
        messages = [m.to_dict() for m in (*history, Message("user", text))]
        started = time.perf_counter()
        tokens, stop = model.prompt(messages)
        model.forget()  # nothing evaluated is reused
        sample = Sample(started)
        for chunk in model.llama.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, stop=stop,
                                                   stream=True):
            sample.add(chunk["choices"][0]["text"])  # type: ignore[index]
        return conversations.Answer(sample.ttft, sample.text)

    return ask


def client_ask(client: ChatClient, max_tokens: int, server: Child, model: str | None = None) -> conversations.Ask:
    """A turn with its history through a client (nbchat's, or its OpenAI one to llama_cpp.server),
    with the CPU time ``server`` (and its children) used until the first token arrived."""

    def ask(history: list[Message], text: str) -> conversations.Answer:
        sample = Sample(time.perf_counter())
        cpu = [server.cpu_seconds()]

        def add(piece: str) -> None:
            if piece and not sample.arrivals:
                cpu.append(server.cpu_seconds())
            sample.add(piece)

        with client.stream(text, conversation=history, temperature=0.0, max_tokens=max_tokens,
                           model=model) as turn:
            collect(turn, lambda chunk: add(chunk.content))
        return conversations.Answer(sample.ttft, sample.text, cpu[-1] - cpu[0])

    return ask


@contextlib.asynccontextmanager
async def llama_server(threads: int) -> AsyncIterator[Child]:
    """llama-cpp-python's OpenAI-compatible server on the same model file."""
    port = free_port()
    args = ["-m", "llama_cpp.server", "--model", str(find_gguf()), "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", str(threads), "--n_ctx", "4096", "--model_alias", LLAMA_MODEL, "--verbose", "False"]
    async with python_child(args) as proc:
        output = asyncio.ensure_future(drain(proc))
        try:
            yield Child(proc, url=await _llama_ready(proc, f"http://127.0.0.1:{port}"))
        finally:
            output.cancel()


async def _llama_ready(proc: asyncio.subprocess.Process, url: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(timeout=1.0) as http:
        while proc.returncode is None and time.monotonic() < deadline:
            try:  # it prints nothing reliable on readiness: ask, within a bound
                if (await http.get(f"{url}{OPENAI_MODELS_PATH}")).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise ServerStartError("llama_cpp.server did not start (is llama-cpp-python[server] installed?)")


def measure(runners: dict[str, Runner], rounds: int) -> dict[str, list[Sample]]:
    """Warm every path up once, then ``rounds`` rounds: every path in turn, all prompts each.

    Each path sees the prompts in the same order, so each turn follows the same
    previous turn on every path (the model's KV-cache reuse depends on it)."""
    for run in runners.values():
        run(PROMPTS[-1])
    samples: dict[str, list[Sample]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].extend(run(prompt) for prompt in PROMPTS)
    return samples


def _medians(got: list[Sample]) -> tuple[float, float]:
    return statistics.median(s.ttft for s in got), statistics.median(s.rate for s in got)


def report(samples: dict[str, list[Sample]]) -> str:
    """Medians per path, as ratios to the in-process floor and, when it ran, to llama_cpp.server."""
    floor = samples["in-process"]
    floor_ttft, floor_rate = _medians(floor)
    llama = _medians(samples["llama_cpp.server"]) if "llama_cpp.server" in samples else None
    head = f"{'path':<18} {'TTFT ms':>8} {'tok/s':>7} {'TTFT/floor':>11} {'tok/s/floor':>12}"
    if llama:
        head += f" {'TTFT/llama':>11} {'tok/s/llama':>12}"
    lines = [head + "  same text", "-" * (len(head) + 11)]
    for name, got in samples.items():
        ttft, rate = _medians(got)
        same = all(a.text == b.text for a, b in zip(got, floor, strict=True))
        line = f"{name:<18} {ttft * 1e3:>8.1f} {rate:>7.1f} {ttft / floor_ttft:>11.2f} {rate / floor_rate:>12.2f}"
        if llama:
            line += f" {ttft / llama[0]:>11.2f} {rate / llama[1]:>12.2f}"
        lines.append(f"{line}  {'yes' if same else 'NO'}")
    return "\n".join(lines)


def greedy_pairs(threads: int, pairs: int, max_tokens: int) -> str:
    """How often a continued turn's greedy answer differs from a fresh evaluation's.

    Each pair: a first turn, then a follow-up in the same conversation, once on a model
    that continues from what it kept (the default: the answer's tokens as generated) and
    once on a model that reads everything afresh. Another conversation runs in between,
    so the kept state also goes through the store of other conversations.
    """
    kept = Model(str(find_gguf()), threads, DEFAULT_N_CTX)
    fresh = Model(str(find_gguf()), threads, DEFAULT_N_CTX)
    jobs = itertools.count()

    def run(model: Model, messages: list[dict[str, str]]) -> str:
        pieces: list[str] = []
        job = Generate(next(jobs), messages, max_tokens, {"temperature": 0.0})
        run_job(model, job, Control(), lambda reply: pieces.append(piece_of(reply)))
        return "".join(pieces)

    differ = 0
    for i in range(pairs):
        first = [{"role": "user", "content": conversations.question(1, i)}]
        reply = run(kept, first)
        run(kept, [{"role": "user", "content": conversations.question(1, i + 7)}])
        follow = [*first, {"role": "assistant", "content": reply},
                  {"role": "user", "content": conversations.question(3, i)}]
        fresh.forget()
        differ += run(kept, follow) != run(fresh, follow)
    return f"{differ} of {pairs} follow-up answers differ from a fresh evaluation's (greedy, {max_tokens} tokens)"


def conversation_paths(args: argparse.Namespace, threads: int) -> dict[str, PathOpener]:
    """The paths of the conversation benchmark, each opened on its own when its turn comes.

    Every nbchat transport gets a server of its own: the model process keeps the conversations
    it evaluated, and a second transport asking the same questions of the same server would find
    the first one's histories kept and read almost nothing.
    """

    def nbchat_path(transport: Transport) -> PathOpener:
        def open_path(stack: ExitStack) -> conversations.Ask:
            server = stack.enter_context(in_background(nbchat_server("smollm2")))
            client = stack.enter_context(connect(server.url, token=server.token, transport=transport,
                                                 timeout=START_TIMEOUT))
            return client_ask(client, args.max_tokens, server)
        return open_path

    def llama_path(stack: ExitStack) -> conversations.Ask:
        server = stack.enter_context(in_background(llama_server(threads)))
        llama = stack.enter_context(connect(server.url, transport="openai", timeout=START_TIMEOUT))
        return client_ask(llama, args.max_tokens, server, model=LLAMA_MODEL)

    paths = {f"nbchat/{transport}": nbchat_path(transport) for transport in args.transports}
    if not args.no_llama_server:
        paths["llama_cpp.server"] = llama_path
    if not args.no_fresh:
        paths["fresh"] = lambda _stack: fresh_ask(threads, args.max_tokens)
    return paths


def run_conversations(args: argparse.Namespace, threads: int) -> None:
    """The conversation benchmark (:mod:`nbchat.bench.conversations`): every path in turn, one table."""
    results: dict[str, dict[str, list[float]]] = {}
    print(f"conversations: 2 x {args.turns} turns alternating, 1 x {args.long_turns} turns; "
          f"{args.max_tokens} tokens an answer, greedy, {threads} model threads; "
          f"per turn the median of {args.repeat} run{'s' if args.repeat > 1 else ''}", flush=True)
    for name, open_path in conversation_paths(args, threads).items():
        with ExitStack() as stack:  # one path's server runs only while that path is measured
            ask = open_path(stack)
            ask([], "Say hello.")  # warm-up: loads what a path loads lazily
            results[name] = conversations.run_repeated(ask, args.turns, args.long_turns, args.repeat)
        print(conversations.row(name, results[name]), flush=True)  # a path's figures as soon as they are in
    print(conversations.full_report(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all prompts down every path (default 5)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default 64)")
    parser.add_argument("--no-llama-server", action="store_true", help="skip llama_cpp.server")
    parser.add_argument("--conversations", action="store_true",
                        help="time to first token per turn as conversations grow (see nbchat.bench.conversations)")
    parser.add_argument("--turns", type=int, default=10, help="--conversations: turns of each alternating one")
    parser.add_argument("--long-turns", type=int, default=20, help="--conversations: turns of the long one")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="--conversations: run the schedules N times, on other topics each time, and "
                             "take each turn's median")
    parser.add_argument("--no-fresh", action="store_true", help="--conversations: skip the fresh evaluation")
    parser.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS,
                        help="--conversations: the nbchat transports to run (default: all)")
    parser.add_argument("--pairs", type=int, default=0, metavar="N",
                        help="count how many of N continued greedy answers differ from a fresh evaluation's")
    args = parser.parse_args(argv)
    # A SIGTERM (a timeout, CI) still runs the cleanup below, so no server outlives the run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    threads = default_threads()  # what nbchat serve's smollm2 backend uses
    # Every path runs llama.cpp with the environment of nbchat's model process (OpenMP's wait policy).
    os.environ.update({k: v for k, v in worker_environment(threads).items() if k.startswith("OMP_")})
    if args.pairs:
        print(greedy_pairs(threads, args.pairs, args.max_tokens))
        return 0
    if args.conversations:
        run_conversations(args, threads)
        return 0
    with ExitStack() as stack:
        runners: dict[str, Runner] = {"in-process": in_process_runner(threads, args.max_tokens)}
        run_backend, close = backend_runner(threads, args.max_tokens)
        stack.callback(close)
        runners["model-process"] = run_backend
        server = stack.enter_context(in_background(nbchat_server("smollm2")))
        for transport in TRANSPORTS:
            client = stack.enter_context(connect(server.url, token=server.token, transport=transport))
            runners[f"nbchat/{transport}"] = nbchat_runner(client, args.max_tokens)
        if not args.no_llama_server:
            # read with nbchat's own OpenAI-stream client, so both servers are measured through the same client
            llama_url = stack.enter_context(in_background(llama_server(threads))).url
            llama = stack.enter_context(connect(llama_url, transport="openai", timeout=START_TIMEOUT))
            runners["llama_cpp.server"] = nbchat_runner(llama, args.max_tokens, model=LLAMA_MODEL)
        print(f"{len(PROMPTS)} prompts x {args.rounds} rounds, {args.max_tokens} tokens, greedy, "
              f"{threads} model threads", flush=True)
        print(report(measure(runners, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
