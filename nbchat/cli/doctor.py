"""``nbchat doctor``: is the embedded model safe and fast on this machine?

It reports what a bug report needs (the CPU and its instruction sets, the
llama.cpp library that is installed and what it was compiled to use, the
model file, the threads) and then runs the model for a few tokens in its own
process, as the server does, so a library that cannot run here shows up as a
clear line with its fix instead of a crash. Exit status 1 when something is
known to be unsafe or broken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING

from .._version import __version__
from ..backends.cpu import REBUILD_HINT, check_library, is_x86, probe_installed, read_cpu

if TYPE_CHECKING:
    from ..backends.model_messages import ModelInfo
    from ..backends.smollm2 import SmolLM2Backend

#: the /proc/cpuinfo flags worth showing: the instruction sets llama.cpp can use
SHOWN_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
               "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def add_doctor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check the embedded model on this machine",
                       description="Report the CPU, the installed llama.cpp and its CPU features, the model file and "
                                   "threads, run the model for a few tokens in its own process, and say how to fix "
                                   "what is unsafe or slow.")
    p.add_argument("--threads", type=int, default=None, help="threads to try (default: the backend's default)")
    p.add_argument("--no-run", action="store_true", help="only report; do not start the model")
    p.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    problems: list[str] = []
    print(f"nbchat {__version__}, Python {sys.version.split()[0]}")
    name, flags = read_cpu()
    print(f"CPU: {name} ({os.cpu_count()} logical cores)")
    print(f"  instruction sets: {' '.join(f for f in SHOWN_FLAGS if f in flags) or 'unknown'}")
    probed = probe_installed()
    if isinstance(probed, str):
        print(f"llama-cpp-python: {probed}")
        problems.append(f"llama-cpp-python cannot be loaded; {REBUILD_HINT}")
    else:
        version, info = probed
        check = check_library(info, flags)
        print(f"llama-cpp-python {version}: {' '.join(sorted(check.features)) or info}")
        if is_x86() and check.missing:
            problems.append(f"{check.problems()[0]}; {REBUILD_HINT}")
        if is_x86() and check.amx:
            print(f"WARNING: {check.problems()[-1]}; {REBUILD_HINT}")
    problems += _model_report(args)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("OK: the embedded model runs safely here" if not problems else f"{len(problems)} problem(s) found")
    return 1 if problems else 0


def _model_report(args: argparse.Namespace) -> list[str]:
    from ..backends.gguf import gguf_problem
    from ..backends.smollm2 import SmolLM2Backend
    from ..backends.worker_process import worker_environment
    from ..wire.errors import NBChatError

    backend = SmolLM2Backend(n_threads=args.threads)
    try:
        path = backend.gguf_path()
    except NBChatError as exc:
        return [str(exc)]
    problem = gguf_problem(path)
    if problem:
        return [f"the model file: {problem}"]
    print(f"model file: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    env = worker_environment(backend.n_threads)
    print(f"threads: {backend.n_threads} decoding, {env['OMP_NUM_THREADS']} for prompts "
          f"(OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}; change with --threads)")
    if args.no_run:
        return []
    try:
        rate, info = asyncio.run(_try_model(backend))
    except NBChatError as exc:
        return [f"the model did not run: {exc}"]
    buffers = "on" if info.get("extra_buffers") else "off (the library has AMX code)"
    print(f"model process: pid {info.get('pid')}, llama.cpp extra buffer types {buffers}")
    print(f"decoding: {rate:.0f} tokens/s with {backend.n_threads} threads")
    return []


async def _try_model(backend: SmolLM2Backend) -> tuple[float, ModelInfo]:
    from ..backends.base import GenerationRequest
    from ..wire.events import Message

    await backend.start()
    request = GenerationRequest([Message("user", "Count from 1 to 100, separated by commas.")], temperature=0.0,
                                max_tokens=48)
    arrivals = [time.perf_counter() async for piece in backend.generate(request) if isinstance(piece, str)]
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return ((len(arrivals) - 1) / span if span > 0 else 0.0), backend.model.info
