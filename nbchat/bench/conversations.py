"""The conversation benchmark: time to first token per turn as conversations grow.

A notebook's conversation carries every earlier answer, and users keep a few
going at once. Three schedules, greedy, each answer carried into its history:

- ``A/B``: two 10-turn conversations asked alternately (A1, B1, A2, B2, ...);
- ``C``: one 20-turn conversation alone.

Paths: ``nbchat/<transport>`` (an ``nbchat serve`` child of its own each),
``llama_cpp.server`` on the same model file and threads, and ``fresh``: llama.cpp
in this process re-reading the whole prompt every turn (what no cache costs).
Each path carries its own answers, as a user of it would. The ratio that
matters is the last turns' TTFT over the first turns': flat means a turn costs
the same however long the conversation is.

    python -m nbchat.bench.model --conversations
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from ..wire.events import Message

TOPICS = (
    "the water cycle", "how a bicycle gear works", "why bread rises", "the moon's phases",
    "how vaccines train the immune system", "what a compiler does", "how bees make honey",
    "why the sea is salty", "how a refrigerator cools", "what causes thunder",
    "how glass is made", "why leaves change colour", "how a violin makes sound", "what a black hole is",
    "how paper is recycled", "why cats purr", "how a lock and key work", "what makes a rainbow",
    "how submarines dive", "why we dream",
)


def question(turn: int, topic_offset: int = 0) -> str:
    """The user message of a turn (1-based): a new topic each turn, referring back now and then."""
    topic = TOPICS[(turn - 1 + topic_offset) % len(TOPICS)]
    if turn > 1 and turn % 3 == 0:
        return f"Thanks. Now explain {topic}, and compare it with what you said before."
    return f"Explain {topic} in a short paragraph."


@dataclass(frozen=True)
class Answer:
    """One turn as a path answered it."""

    ttft: float  #: seconds to the first token, as the client saw it
    text: str
    #: CPU seconds the server side (server and model process) used until the client saw the first
    #: token, where it can be read: a figure the machine's other load moves far less than the TTFT
    cpu: float | None = None


#: answers one turn: (history, user message) -> the answer
Ask = Callable[[list[Message], str], Answer]


@dataclass
class Conversation:
    """One conversation's history and the TTFT (and server CPU) of each of its turns."""

    topic_offset: int
    history: list[Message] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def turn(self, ask: Ask) -> None:
        text = question(len(self.ttft) + 1, self.topic_offset)
        answer = ask(self.history, text)
        self.ttft.append(answer.ttft)
        if answer.cpu is not None:
            self.cpu.append(answer.cpu)
        self.history += [Message("user", text), Message("assistant", answer.text)]


def run_schedules(ask: Ask, turns: int = 10, long_turns: int = 20, topic_offset: int = 0) -> dict[str, list[float]]:
    """TTFT per turn: ``A`` and ``B`` alternating, then ``C`` alone; the server's CPU to the first
    token under ``A cpu``, ``B cpu``, ``C cpu`` where the path measures it."""
    a, b, c = Conversation(0 + topic_offset), Conversation(7 + topic_offset), Conversation(3 + topic_offset)
    for _ in range(turns):
        a.turn(ask)
        b.turn(ask)
    for _ in range(long_turns):
        c.turn(ask)
    result = {"A": a.ttft, "B": b.ttft, "C": c.ttft}
    if a.cpu and len(a.cpu) == len(a.ttft):
        result.update({"A cpu": a.cpu, "B cpu": b.cpu, "C cpu": c.cpu})
    return result


def run_repeated(ask: Ask, turns: int = 10, long_turns: int = 20, repeat: int = 1) -> dict[str, list[float]]:
    """:func:`run_schedules` ``repeat`` times, each run's conversations on topics shifted by one (so
    that no run finds an earlier run's conversation kept), and per turn the median over the runs:
    one run gives one sample a turn, and a 150 ms turn moves by tens of milliseconds with the
    machine's other work."""
    runs = [run_schedules(ask, turns, long_turns, topic_offset=r) for r in range(repeat)]
    return {key: [statistics.median(turn) for turn in zip(*(run[key] for run in runs), strict=True)]
            for key in runs[0]}


def cpu_view(result: dict[str, list[float]]) -> dict[str, list[float]] | None:
    """A path's server CPU to the first token, shaped as its TTFT (None where not measured)."""
    if "A cpu" not in result:
        return None
    return {name: result[f"{name} cpu"] for name in "ABC"}


def growth(ttft: list[float], first: int = 2, last: int = 3) -> float:
    """Mean TTFT of the last ``last`` turns over the mean of the first ``first``."""
    return statistics.fmean(ttft[-last:]) / statistics.fmean(ttft[:first])


def alternating(result: dict[str, list[float]]) -> list[float]:
    """TTFT per turn index over the two alternating conversations (their mean)."""
    return [statistics.fmean(pair) for pair in zip(result["A"], result["B"], strict=True)]


TTFT_TITLE = "TTFT ms per turn, two alternating conversations (mean of A and B); C: one long conversation"
CPU_TITLE = "server CPU ms (server and model process, all threads) until the first token, same turns"


def report(results: dict[str, dict[str, list[float]]], title: str = TTFT_TITLE) -> str:
    """Per path: the alternating conversations' TTFT by turn, their growth, and the long one's."""
    if not results:
        return ""
    n = len(next(iter(results.values()))["A"])
    head = f"{'path':<18}" + "".join(f"{f't{i}':>7}" for i in range(1, n + 1))
    head += f" {'A/B 8-10 / 1-2':>15} {'C t1':>7} {'C t20':>7} {'C 18-20 / 1-2':>14}"
    lines = [title, head, "-" * len(head)]
    lines += [row(name, result) for name, result in results.items()]
    return "\n".join(lines)


def full_report(results: dict[str, dict[str, list[float]]]) -> str:
    """The TTFT table, then the server CPU table of the paths that measured it."""
    cpu = {name: view for name, result in results.items() if (view := cpu_view(result)) is not None}
    return report(results) + (f"\n\n{report(cpu, CPU_TITLE)}" if cpu else "")


def row(name: str, result: dict[str, list[float]]) -> str:
    """One path's line of the table."""
    turns = alternating(result)
    line = f"{name:<18}" + "".join(f"{t * 1e3:>7.0f}" for t in turns)
    long_ = result["C"]
    return line + f" {growth(turns):>14.2f}x {long_[0] * 1e3:>7.0f} {long_[-1] * 1e3:>7.0f} {growth(long_):>13.2f}x"

