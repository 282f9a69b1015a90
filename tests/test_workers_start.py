"""``nbchat serve --workers N`` when a worker stays alive but never accepts connections: the command
ends within its start timeout with one line naming that worker, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbchat.bench.procs import alive, descendants
from tests.conftest import ROOT, RedisProcess
from tests.helpers import TOKEN

#: short: the supervisor waits for its workers in the order it spawned them, and the stuck one is the first,
#: so it is the one named at the deadline whether or not the other has started by then
START_TIMEOUT = 3


def stop_a_worker(supervisor: int) -> int:
    """SIGSTOP the first worker process the supervisor spawns (the first seen: the other is spawned after it),
    as soon as it runs: it stays alive and never signals that it accepts."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in descendants(supervisor):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in command:  # a worker, not the resource tracker
                os.kill(pid, signal.SIGSTOP)
                return pid
        time.sleep(0.005)
    pytest.fail("no worker was spawned")


@pytest.mark.redis
def test_a_worker_that_never_accepts_ends_the_command_and_every_worker(redis_server: RedisProcess) -> None:
    command = [sys.executable, "-m", "nbchat", "serve", "--backend", "echo", "--port", "0", "--token", TOKEN,
               "--workers", "2", "--store", redis_server.url, "--start-timeout", str(START_TIMEOUT)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    spawned: set[int] = set()
    try:
        stuck = stop_a_worker(proc.pid)
        began = time.monotonic()
        while proc.poll() is None and time.monotonic() - began < START_TIMEOUT + 30:
            spawned.update(descendants(proc.pid))  # the other worker and the resource tracker too
            time.sleep(0.1)
        out, err = proc.communicate(timeout=1)  # raises when the command still waits: the hang
    finally:
        if proc.poll() is None:
            for pid in descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    said = [line for line in err.splitlines() if line.startswith("nbchat serve:")]
    assert said == [f"nbchat serve: worker {stuck} did not accept connections within {START_TIMEOUT} s "
                    "(--start-timeout); stopping every worker"], err
    assert "Traceback" not in err and "nbchat serving" not in out
    assert len(spawned | {stuck}) >= 3  # both workers and the tracker were seen
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in spawned | {stuck}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in spawned | {stuck} if alive(pid)]


def test_the_start_timeout_must_be_positive() -> None:
    done = subprocess.run([sys.executable, "-m", "nbchat", "serve", "--backend", "echo", "--port", "0",
                           "--start-timeout", "0"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.strip() == "nbchat serve: --start-timeout must be more than 0"
