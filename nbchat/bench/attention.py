"""What a turn's prompt costs as its conversation grows, with nothing but llama.cpp.

A continued turn reads only its new message (the history is already
evaluated), yet it attends over the whole history: the floor under the
conversation benchmark's ratio of late turns to early ones. This reads the
same 20 tokens after histories of growing length, in the model process's
thread settings (OpenMP threads sleeping when idle, prompts on every core),
with llama.cpp's KV-cache variants side by side, each measured in turn.

    python -m nbchat.bench.attention [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from ..backends.cpu import prompt_threads
from ..backends.gguf import DEFAULT_N_CTX, default_threads
from ..backends.worker_process import worker_environment

#: tokens of history before the measured read; the last is about a tenth turn's in the benchmark
HISTORIES = (40, 300, 700, 1100)
#: a new user message's length in tokens, as a turn of the conversation benchmark
QUESTION_TOKENS = 20
#: the KV-cache variants: nbchat's (f16, no flash attention) and two llama.cpp offers
VARIANTS: dict[str, dict[str, Any]] = {
    "f16 (nbchat)": {},
    "f16, flash attention": {"flash_attn": True},
    "f32": {"type_k": 0, "type_v": 0},  # GGML_TYPE_F32
}
FILLER = "The river ran past the old mill and the children watched it from the bridge. "
QUESTION = " Tell me about the weather in the mountains in early spring, and what to pack for it."


def load(options: dict[str, Any]) -> Any:
    from llama_cpp import Llama

    from ..backends.smollm2 import find_gguf

    threads = default_threads()
    return Llama(model_path=str(find_gguf()), n_ctx=DEFAULT_N_CTX, n_threads=threads,
                 n_threads_batch=prompt_threads(threads), verbose=False, **options)


def read_after(llama: Any, history: list[int], question: list[int]) -> float:
    """Milliseconds to read ``question`` after ``history`` (evaluated first, not timed)."""
    llama.reset()
    llama.eval(history)
    start = time.perf_counter()
    llama.eval(question)
    return (time.perf_counter() - start) * 1000


def measure(rounds: int) -> dict[tuple[str, int], list[float]]:
    models = {name: load(options) for name, options in VARIANTS.items()}
    first = next(iter(models.values()))
    history = first.tokenize((FILLER * 100).encode())
    question = first.tokenize(QUESTION.encode(), add_bos=False)[:QUESTION_TOKENS]
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):  # variants and lengths in turn, so that load from elsewhere falls on all
        for length in HISTORIES:
            for name, llama in models.items():
                times.setdefault((name, length), []).append(read_after(llama, history[:length], question))
    return times


def table(times: dict[tuple[str, int], list[float]]) -> str:
    head = f"{'history (tokens)':>18}" + "".join(f"{name:>24}" for name in VARIANTS)
    lines = [f"ms to read {QUESTION_TOKENS} tokens, median of the rounds", head, "-" * len(head)]
    for length in HISTORIES:
        lines.append(f"{length:>18}" + "".join(f"{statistics.median(times[(n, length)]):>24.1f}" for n in VARIANTS))
    last, first = HISTORIES[-1], HISTORIES[0]
    lines.append(f"{f'{last} / {first}':>18}" + "".join(
        f"{statistics.median(times[(n, last)]) / statistics.median(times[(n, first)]):>23.2f}x" for n in VARIANTS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.attention", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    os.environ.update({k: v for k, v in worker_environment(default_threads()).items() if k.startswith("OMP_")})
    print(table(measure(args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
