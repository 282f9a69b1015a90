"""The first ``%%chat`` in a fresh kernel: how long until its first token shows.

Each run is a new Python process with IPython's shell (as a fresh kernel has
it): ``%load_ext nbchat``, then at once (as Run All does) a ``%%chat`` cell on
the default path: the in-kernel server starts, the embedded model loads, one
short greedy answer. It reports the time from the cell's start to the first
piece of the answer reaching the cell's view, and where the time went: the
kernel's own start of its server, the model process's start and load.

    python -m nbchat.bench.firstchat --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

#: the child: one fresh shell, one first chat; prints its timings as JSON on the last line
CHILD = r"""
import contextlib, io, json, sys, time
from IPython.testing.globalipapp import start_ipython
import nbchat.notebook.live as live
import nbchat.backends.worker_process as worker
import nbchat.notebook.kernel_server as kernel
marks = {}
def mark(name):
    marks.setdefault(name, time.perf_counter())
def wrap(cls, name, before, after):
    original = getattr(cls, name)
    def wrapped(*args, **kwargs):
        mark(before)
        try:
            return original(*args, **kwargs)
        finally:
            mark(after)
    setattr(cls, name, wrapped)
view_add = live.StreamView.add
def add(self, text):
    mark("first token")
    view_add(self, text)
live.StreamView.add = add
wrap(worker.WorkerProcess, "__init__", "model process started", "model process spawned")
wrap(worker.WorkerProcess, "wait_ready", "model loading", "model loaded")
wrap(kernel.KernelServer, "_launch", "server starting", "server started")
ip = start_ipython()
mark("load_ext")
ip.run_line_magic("load_ext", "nbchat")
time.sleep(float(sys.argv[1]))
mark("cell")
with contextlib.redirect_stdout(io.StringIO()):
    ip.run_cell_magic("chat", "--max-tokens 8 --temperature 0", "Name one planet.")
mark("cell end")
print(json.dumps({k: v - marks["cell"] for k, v in marks.items()}))
"""


def one_run(pause: float) -> dict[str, float]:
    """One fresh process's timings, in seconds from the chat cell's start."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(pause)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"the first-chat child failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: float(v) for k, v in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.bench.firstchat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes, one after the other (default 5)")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between %%load_ext and the chat cell (default 0: Run All)")
    args = parser.parse_args(argv)
    firsts: list[float] = []
    for i in range(args.runs):
        began = time.monotonic()
        marks = one_run(args.pause)
        firsts.append(marks["first token"])
        phases = "  ".join(f"{name} {t:+.2f}" for name, t in sorted(marks.items(), key=lambda kv: kv[1]))
        print(f"run {i + 1}: first token {marks['first token']:.2f} s  ({phases}; {time.monotonic() - began:.1f} s)",
              flush=True)
    print(f"first token: median {statistics.median(firsts):.2f} s, best {min(firsts):.2f} s, "
          f"worst {max(firsts):.2f} s over {len(firsts)} fresh processes; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
