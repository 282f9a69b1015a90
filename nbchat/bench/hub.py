"""The fair-share benchmark: ``python -m nbchat.bench.hub``.

A real JupyterHub (:mod:`.hubrun`) serves nbchat on the embedded model to ten
users through its proxy: one greedy user keeps ``--greedy`` turns in flight at
once, nine others each send ``--turns`` turns back to back (short answers,
``max_tokens`` 32). Each user's median time to first token is measured with
the model's queue first come, first served (``--fair-slots 0``), then
served user by user in turn (``--fair-slots 1``), both with the per-user
bounds off so that only the queue differs, and last with the bounds
``--jupyterhub`` sets by default. Refused turns (the model's queue full, a
per-user bound) are counted by their code, not timed; a refused greedy client
asks again half a second later.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..clients import acollect, aconnect
from ..wire.errors import RequestError
from ..wire.events import Chunk
from .hubrun import HubUserToken, LocalHub

MAX_TOKENS = 32
RETRY_SECONDS = 0.5
#: the runs: the model's queue first come first served; the fair queue; the fair queue with the per-user
#: bounds of --jupyterhub (3 turns at once, 30 a minute); the first two with the bounds off
MODES = {
    "FIFO queue": ("--fair-slots", "0", "--max-user-turns", "0", "--user-turns-per-minute", "0"),
    "fair queue": ("--fair-slots", "1", "--max-user-turns", "0", "--user-turns-per-minute", "0"),
    "fair queue + default bounds": ("--fair-slots", "1"),
}
QUESTION = "In one sentence, what is a {topic}?"
TOPICS = ("river", "cloud", "kernel", "notebook", "proxy", "token", "queue", "model", "socket", "browser")


@dataclass
class UserRun:
    name: str
    ttft: list[float] = field(default_factory=list)
    #: turns that ended without an answer, by their error code (or status)
    refused: Counter[str] = field(default_factory=Counter)

    def median(self) -> float | None:
        return statistics.median(self.ttft) if self.ttft else None


async def one_turn(url: str, user: HubUserToken, topic: str, run: UserRun) -> bool:
    """Ask once; whether the turn was answered."""
    started = time.perf_counter()
    first: list[float] = []

    def on_chunk(chunk: Chunk) -> None:
        if not first:
            first.append(time.perf_counter() - started)

    try:
        async with aconnect(url, token=user.token, transport="stream", timeout=300) as client, \
                client.stream(QUESTION.format(topic=topic), max_tokens=MAX_TOKENS, temperature=0.0) as turn:
            end = await acollect(turn, on_chunk)
    except RequestError as exc:  # refused before it began (a per-user bound: 429)
        run.refused[exc.code] += 1
        return False
    if end.ok and first:
        run.ttft.append(first[0])
        return True
    run.refused[end.error.code if end.error is not None else end.status.value] += 1
    return False


async def normal_user(url: str, user: HubUserToken, turns: int, run: UserRun) -> None:
    for i in range(turns):
        await one_turn(url, user, TOPICS[i % len(TOPICS)], run)


async def greedy_user(url: str, user: HubUserToken, parallel: int, run: UserRun, stop: asyncio.Event) -> None:
    async def keep_asking(slot: int) -> None:
        while not stop.is_set():
            if not await one_turn(url, user, TOPICS[slot % len(TOPICS)], run):
                await asyncio.sleep(RETRY_SECONDS)  # a refused client asks again shortly, as clients do

    tasks = [asyncio.create_task(keep_asking(i)) for i in range(parallel)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def measure(hub: LocalHub, users: list[HubUserToken], greedy: int, turns: int) -> list[UserRun]:
    """One run: the greedy user (``users[0]``) asks throughout, while the others take their turns."""
    runs = [UserRun(u.name) for u in users]
    stop = asyncio.Event()
    hog = asyncio.create_task(greedy_user(hub.service_url, users[0], greedy, runs[0], stop))
    await asyncio.sleep(1.0)  # the greedy user's turns are queued first
    await asyncio.gather(*(normal_user(hub.service_url, u, turns, r)
                           for u, r in zip(users[1:], runs[1:], strict=True)))
    stop.set()
    await hog
    return runs


def run_mode(workdir: Path, mode: tuple[str, ...], greedy: int, turns: int, users: int) -> list[UserRun]:
    hub = LocalHub(workdir, service_args=("--backend", "smollm2", *mode))
    hub.start()
    try:
        tokens = [hub.create_user(f"{'greedy' if i == 0 else 'user'}{i}") for i in range(users)]
        return asyncio.run(measure(hub, tokens, greedy, turns))
    finally:
        hub.stop()


def table(results: dict[str, list[UserRun]]) -> str:
    """Each user's median time to first token (and turns refused) in each mode; the others' median last."""
    def cell(run: UserRun) -> str:
        median = run.median()
        timed = f"{median:.2f}" if median is not None else "-"
        refused = ", ".join(f"{n} {why}" for why, n in sorted(run.refused.items()))
        return f"{timed} ({len(run.ttft)} ok{', refused: ' + refused if refused else ''})"

    runs = list(results.values())
    lines = ["| user | " + " | ".join(f"{mode}: median TTFT, s" for mode in results) + " |",
             "|---|" + "---:|" * len(runs)]
    lines += [f"| {row[0].name} | " + " | ".join(cell(r) for r in row) + " |" for row in zip(*runs, strict=True)]
    medians = [[m for r in mode_runs[1:] if (m := r.median()) is not None] for mode_runs in runs]
    shown = [f"{statistics.median(m):.2f}" if m else "-" for m in medians]
    lines.append("| the others, median of their medians | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10, help="users, the first of them greedy (default 10)")
    parser.add_argument("--greedy", type=int, default=20, help="the greedy user's turns in flight (default 20)")
    parser.add_argument("--turns", type=int, default=3, help="turns each other user sends back to back (default 3)")
    args = parser.parse_args(argv)
    results: dict[str, list[UserRun]] = {}
    with tempfile.TemporaryDirectory(prefix="nbchat-hub-bench-") as tmp:
        for i, (name, mode) in enumerate(MODES.items()):
            workdir = Path(tmp, str(i))
            workdir.mkdir()
            results[name] = run_mode(workdir, mode, args.greedy, args.turns, args.users)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
