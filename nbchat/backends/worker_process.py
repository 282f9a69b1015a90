"""One model process: llama.cpp in a child process, its pipes and how it died.

llama.cpp never runs in the server's or the kernel's own process: it runs in
``python -m nbchat.backends.llama_worker`` (:mod:`.llama_worker`), which
speaks the messages of :mod:`.model_messages`. A native fault (an illegal
instruction on a CPU the library was not built for, a segmentation fault), the
out-of-memory killer or a ``kill -9`` ends only that process, and
:func:`death_message` tells the user which it was and what to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..wire.errors import BackendError
from .cpu import prompt_threads
from .kv_states import DEFAULT_CACHE_MB
from .model_messages import Command, Fatal, ModelInfo, Ready, Reply, decode_reply, encode


@dataclass(frozen=True)
class ModelKey:
    """What a model process is loaded with: processes are shared by backends with equal keys."""

    path: Path
    n_threads: int
    n_ctx: int
    cache_mb: float = DEFAULT_CACHE_MB
    exact: bool = False



_SIGNAL_NAMES: dict[int, str] = {
    signal.SIGILL: "an illegal instruction (SIGILL)",
    signal.SIGSEGV: "a segmentation fault (SIGSEGV)",
    signal.SIGBUS: "a bus error (SIGBUS)",
    signal.SIGFPE: "a floating-point exception (SIGFPE)",
    signal.SIGABRT: "an abort (SIGABRT, often a failed llama.cpp assertion)",
    signal.SIGKILL: "SIGKILL (the kernel's out-of-memory killer, or a kill -9)",
}


def death_message(returncode: int | None, last_error: str = "") -> str:
    """What to tell the user when the model process is gone, from its exit status."""
    if returncode is not None and returncode < 0:
        how = _SIGNAL_NAMES.get(-returncode, f"signal {-returncode}")
    else:
        how = f"exit status {returncode}"
    hint = "the next question starts a new model process"
    if returncode == -signal.SIGILL:
        hint = ("the installed llama.cpp uses an instruction this CPU lacks (built for another CPU, or AMX); "
                "rebuild it for this machine: bash .ci/install-llama.sh --force, and run nbchat doctor; " + hint)
    elif returncode == -signal.SIGKILL:
        hint = "if memory is short, close other programs; " + hint
    detail = f" (its last words: {last_error})" if last_error else ""
    return f"the model process died: {how}{detail}; your kernel and the server keep running; {hint}"


class WorkerProcess:
    """One running model process: its pipes, its last lines of stderr, its exit."""

    def __init__(self, key: ModelKey) -> None:
        command = [sys.executable, "-m", "nbchat.backends.llama_worker", "--model", str(key.path),
                   "--threads", str(key.n_threads), "--n-ctx", str(key.n_ctx), "--cache-mb", str(key.cache_mb),
                   *(["--exact"] if key.exact else [])]
        n_threads = key.n_threads
        # A session of its own: a Ctrl-C in the terminal, or Jupyter interrupting the kernel's
        # process group, must reach the server (which stops the turn), not kill the model.
        self.popen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=worker_environment(n_threads),
                                      start_new_session=True)
        assert self.popen.stdin and self.popen.stdout and self.popen.stderr
        self._stdin: IO[bytes] = self.popen.stdin
        self._stdout: IO[bytes] = self.popen.stdout
        self._stderr_tail: deque[str] = deque(maxlen=5)
        self._write_lock = threading.Lock()
        self._drainer = threading.Thread(target=self._drain_stderr, args=(self.popen.stderr,), daemon=True,
                                         name="nbchat-model-stderr")
        self._drainer.start()
        self.info: ModelInfo = {}

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                text = line.decode(errors="replace").strip()
                if text:
                    self._stderr_tail.append(text)

    def wait_ready(self) -> None:
        """Block until the model is loaded; raise a BackendError when it cannot load."""
        message = self.read()
        if message is None:
            raise BackendError(self.death())
        if isinstance(message, Fatal):
            self.reap()
            raise BackendError(f"cannot load the model: {message.message}")
        if not isinstance(message, Ready):
            raise ValueError(f"the model process began with {message!r}")
        self.info = message.info

    def send(self, command: Command) -> bool:
        """Write one command; False when the process is gone."""
        data = encode(command)
        with self._write_lock:
            try:
                self._stdin.write(data)
                self._stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return False
        return True

    def read(self) -> Reply | None:
        """The next reply, or None once the process has exited."""
        line = self._stdout.readline()
        return decode_reply(line) if line else None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def reap(self) -> int:
        """Wait for the exit (killing a process that lingers) and close the pipes; the exit status."""
        try:
            returncode = self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.popen.wait()
        for pipe in (self._stdin, self._stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        return returncode

    def death(self) -> str:
        """Why the process ended, for the user (after reaping it)."""
        returncode = self.reap()
        self._drainer.join(timeout=1.0)  # its last lines may still be in the pipe
        last = self._stderr_tail[-1] if self._stderr_tail else ""
        return death_message(returncode, last)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()


def worker_environment(n_threads: int) -> dict[str, str]:
    """The model process's environment: OpenMP threads sleep when idle instead of spinning.

    With OpenMP's default (spin-wait), the threads of a two-core machine busy-wait for each
    other, and any other busy process drops decoding from ~95 to 1-10 tokens/s
    (docs/install.md has the figures).
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("OMP_NUM_THREADS", str(prompt_threads(n_threads)))  # prompts use every core
    return env
