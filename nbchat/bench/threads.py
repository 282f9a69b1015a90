"""How many threads llama.cpp should use, idle and with the cores shared.

Each setting (a thread count and OpenMP's wait policy) runs the embedded
backend, model process included, in a child process of its own, on an idle
machine and then next to a CPU-bound process that keeps one core busy (what a
notebook running a cell, or a second server, does). Settings are taken in turn
within each round so that load from elsewhere falls on all of them alike.

    python -m nbchat.bench.threads --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

#: (threads, OMP_WAIT_POLICY); "default" is the smollm2 backend's own choice of threads
SETTINGS: tuple[tuple[str, str], ...] = (("1", "PASSIVE"), ("2", "PASSIVE"), ("2", "ACTIVE"))
PROMPT = "Count from 1 to 300, separated by commas."


async def _measure(threads: int, answers: int, max_tokens: int) -> dict[str, float]:
    from ..backends.base import GenerationRequest
    from ..backends.smollm2 import SmolLM2Backend
    from ..wire.events import Message

    backend = SmolLM2Backend(n_threads=threads)
    await backend.start()
    ttfts, rates = [], []
    for _ in range(answers):
        request = GenerationRequest([Message("user", PROMPT)], temperature=0.0, max_tokens=max_tokens)
        started = time.perf_counter()
        arrivals = [time.perf_counter() async for p in backend.generate(request) if isinstance(p, str)]
        ttfts.append(arrivals[0] - started)
        rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    await backend.aclose()
    return {"ttft": statistics.median(ttfts), "rate": statistics.median(rates)}


def run_setting(threads: str, policy: str, answers: int, max_tokens: int) -> dict[str, float]:
    """One setting in a fresh child process (the model process inherits its environment)."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    done = subprocess.run([sys.executable, "-m", "nbchat.bench.threads", "--one", threads, "--answers", str(answers),
                           "--max-tokens", str(max_tokens)], env=env, capture_output=True, text=True, timeout=600,
                          check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def busy_core() -> Iterator[None]:
    """A CPU-bound process for the duration of the block."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let the scheduler see it
        yield
    finally:
        hog.kill()
        hog.wait()


def study(rounds: int, answers: int, max_tokens: int) -> dict[tuple[str, str, str], list[dict[str, float]]]:
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for _ in range(rounds):
        for condition in ("idle", "contended"):
            for threads, policy in SETTINGS:
                if condition == "idle":
                    sample = run_setting(threads, policy, answers, max_tokens)
                else:
                    with busy_core():
                        sample = run_setting(threads, policy, answers, max_tokens)
                results.setdefault((threads, policy, condition), []).append(sample)
                print(f"  {threads} threads {policy:7} {condition:9} TTFT {sample['ttft'] * 1e3:5.0f} ms "
                      f"{sample['rate']:6.1f} tokens/s", file=sys.stderr, flush=True)
    return results


def table(results: dict[tuple[str, str, str], list[dict[str, float]]]) -> str:
    lines = ["| threads | OMP_WAIT_POLICY | idle: TTFT | idle: tokens/s | contended: TTFT | contended: tokens/s |",
             "|---:|---|---:|---:|---:|---:|"]
    for threads, policy in SETTINGS:
        cells = []
        for condition in ("idle", "contended"):
            runs = results[(threads, policy, condition)]
            cells += [f"{statistics.median(r['ttft'] for r in runs) * 1e3:.0f} ms",
                      f"{statistics.median(r['rate'] for r in runs):.1f}"]
        lines.append(f"| {threads} | {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--answers", type=int, default=3, help="answers per setting and round")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: one setting, JSON out
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(asyncio.run(_measure(int(args.one), args.answers, args.max_tokens))))
        return 0
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", file=sys.stderr)
    print(table(study(args.rounds, args.answers, args.max_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
