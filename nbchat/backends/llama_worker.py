"""The model process: llama.cpp runs here, never in the server's or the kernel's process.

``python -m nbchat.backends.llama_worker --model FILE`` loads the GGUF (a
:class:`~.llama_model.Model`) and then serves generations one at a time. It reads commands on standard input and
answers on its protocol pipe (the standard output it was started with), in the
messages of :mod:`.model_messages`.

Everything llama.cpp prints goes to standard error: file descriptor 1 is
pointed there at start, so C code writing to stdout cannot corrupt the
protocol. A reader thread takes the commands, so a stop reaches a generation
while llama.cpp computes: it is checked after every sampled token and, while
the prompt is evaluated, by llama.cpp's abort callback between graph nodes.
When standard input closes (the parent died), the process exits at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .kv_states import DEFAULT_CACHE_MB
from .llama_model import Model, Stopped
from .model_messages import End, Failure, Fatal, Generate, HistoryTrimmed, Length, Piece, Ready, decode_command, encode
from .trim import fit

if TYPE_CHECKING:
    from .model_messages import Command, Reply


#: tokens left for the answer when a request sets no max_tokens (at most a quarter of the context)
DEFAULT_RESERVE = 512
#: after an answer that continued the current conversation, how long the process waits for a next job before
#: it keeps the state and reads ahead: a notebook's Run All asks the next question within milliseconds
HANDOFF_SECONDS = 0.05


@dataclass
class Control:
    """What the reader thread shares with the generating thread: the job queue and stop requests."""

    jobs: queue.Queue[Generate] = field(default_factory=queue.Queue)
    #: the stopped jobs, each with the process's count of sampled tokens when its Stop arrived: the
    #: stop's delay is counted where it acts, not from a parent whose reading of the pipe may lag
    stopped: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: set when a job is queued: wakes :meth:`job_within` (the queue stays the truth)
    arrived: threading.Event = field(default_factory=threading.Event)
    #: the process's count of sampled tokens, read when a Stop arrives
    sampled: Callable[[], int] = lambda: 0

    def stop_requested(self, job_id: int) -> bool:
        with self.lock:
            return job_id in self.stopped

    def waiting(self) -> bool:
        """Whether a job is queued (work between turns gives way to it)."""
        return not self.jobs.empty()

    def queue(self, job: Generate) -> None:
        """Queue ``job`` for the generating thread (from the reader thread)."""
        self.jobs.put(job)
        self.arrived.set()

    def job_within(self, seconds: float) -> bool:
        """Whether a job is queued now or comes within ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self.waiting():
            left = deadline - time.monotonic()
            if left <= 0 or not self.arrived.wait(left):
                return self.waiting()
            self.arrived.clear()
        return True

    def take(self, command: Command) -> None:
        """Queue a job, or record a stop and the count of sampled tokens it came at."""
        if isinstance(command, Generate):
            self.queue(command)
            return
        with self.lock:
            self.stopped.setdefault(command.id, self.sampled())

    def after_stop(self, job_id: int, started: int, sampled: int) -> int | None:
        """Forget ``job_id``'s stop; the tokens sampled after it came (None: it never came). A stop
        that came while an earlier job ran counts from ``started``, this job's own first count."""
        with self.lock:
            at_stop = self.stopped.get(job_id)
            # jobs run in the order of their ids: a stop for an earlier one came after its end
            self.stopped = {j: n for j, n in self.stopped.items() if j > job_id}
        return None if at_stop is None else sampled - max(at_stop, started)

    def read_commands(self, stream: IO[bytes]) -> None:
        """Reader thread: take each command; exit the process when the parent is gone."""
        for line in stream:
            try:
                command = decode_command(line)
            except ValueError:
                continue  # not from the supervisor, which writes only commands
            self.take(command)
        os._exit(0)  # standard input closed: nobody will read an answer


class Output:
    """The protocol pipe: one JSON object a line, written whole under a lock."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream, self._lock = stream, threading.Lock()

    def send(self, message: Reply) -> None:
        data = encode(message)
        with self._lock:
            self._stream.write(data)
            self._stream.flush()


def take_protocol_pipe() -> IO[bytes]:
    """The original stdout, for the protocol; fd 1 then points at stderr for C code's prints."""
    pipe = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return pipe


Send = Callable[["Reply"], None]


def run_job(model: Model, job: Generate, control: Control, send: Send) -> None:
    """One generation: each reply goes to ``send``, pieces as they are sampled, then exactly one End."""
    from llama_cpp import StoppingCriteriaList

    job_id = job.id
    started = model.tokens_sampled

    def stop() -> bool:
        return control.stop_requested(job_id)

    def should_stop(_ids: Any, _logits: Any) -> bool:
        model.tokens_sampled += 1
        return stop()

    model.last_prompt = (None, None)  # a job that ends before its prefill reports no counts, not the last job's
    model.continued = False
    copies_out: int | None = None
    answer: list[str] = []
    follow: list[dict[str, str]] | None = None  # the conversation with its answer, once it completed
    try:
        if stop():
            return
        max_tokens = job.max_tokens
        reserve = min(max_tokens or DEFAULT_RESERVE, model.n_ctx // 4)
        tokens, stop_strings, trimmed = fit(model.prompt, job.messages, model.n_ctx, reserve)
        if len(tokens) >= model.n_ctx:
            send(Failure(job_id, code="context_length_exceeded", message=(
                f"the message alone ({len(tokens)} tokens) does not fit the model's context of {model.n_ctx} "
                "tokens; shorten it")))
            return
        if trimmed:
            send(HistoryTrimmed(job_id, trimmed))
        copies_before = model.copies_out
        model.prefill(tokens, stop)
        copies_out = model.copies_out - copies_before
        room = model.n_ctx - len(tokens)
        sampling: dict[str, Any] = dict(job.sampling)  # keyword arguments of create_completion
        stream = model.llama.create_completion(
            tokens, max_tokens=min(max_tokens, room) if max_tokens is not None else room, stop=stop_strings,
            stream=True, stopping_criteria=StoppingCriteriaList([should_stop]), **sampling)
        assert not isinstance(stream, dict)  # stream=True gives an iterator of chunks
        with contextlib.closing(stream):  # type: ignore[type-var]  # a generator: closing it ends llama.cpp's loop
            for chunk in stream:
                if stop():
                    break
                choice = chunk["choices"][0]
                if choice["text"]:
                    answer.append(choice["text"])
                    send(Piece(job_id, choice["text"], model.tokens_sampled))
                if choice["finish_reason"] == "length":
                    send(Length(job_id))
        model.answered()
        if not trimmed and not stop():
            follow = [*job.messages, {"role": "assistant", "content": "".join(answer)}]
    except Stopped:
        pass
    except Exception as exc:  # reported to the parent, which raises it as a BackendError
        model.forget()
        send(Failure(job_id, f"the model failed: {type(exc).__name__}: {exc}"))
    finally:
        after_stop = control.after_stop(job_id, started, model.tokens_sampled)
        send(End(job_id, model.tokens_sampled, *model.last_prompt, copies_out, after_stop))
    between_turns(model, follow, control.waiting, control.job_within)


def between_turns(model: Model, follow: list[dict[str, str]] | None, waiting: Callable[[], bool],
                  job_within: Callable[[float], bool] | None = None) -> None:
    """After a job's End, while the process would wait for the next one: keep the current state
    (:meth:`Model.keep_current`) and read ahead in ``follow``, the conversation that was answered
    (:meth:`Model.prime`); a read-ahead that completed is kept too, so that the kept state is the
    one the conversation's next turn continues.

    After a turn that continued its conversation, a job that comes within :data:`HANDOFF_SECONDS`
    (``job_within``) most likely continues it again (a notebook's Run All): nothing is kept for it,
    since that copy grows with the conversation (5-20 ms) and the job would wait for it. Should the
    job be another conversation's, its prompt keeps the state first (:meth:`Model._restore`). After
    a turn that switched conversations, the state is kept at once: alternating conversations switch
    again, and the copy then runs while the client sends its next question.
    """
    if model.continued and job_within is not None and job_within(HANDOFF_SECONDS):
        return
    try:
        model.keep_current()
        if follow is not None and model.prime(follow, waiting):
            model.keep_current()
    except Exception:  # both are optimisations: a failure leaves nothing to trust
        model.forget()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nbchat.backends.llama_worker")
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_MB)
    parser.add_argument("--exact", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    # Stops come as commands from the parent; an interrupt meant for it must not end the model.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = Output(take_protocol_pipe())
    try:
        model = Model(args.model, args.threads, args.n_ctx, cache_mb=args.cache_mb, exact=args.exact)
    except Exception as exc:  # a missing or unreadable file, not a GGUF, no llama_cpp
        out.send(Fatal(f"{type(exc).__name__}: {exc}"))
        return 1
    out.send(Ready(model.info()))
    control = Control(sampled=lambda: model.tokens_sampled)
    threading.Thread(target=control.read_commands, args=(sys.stdin.buffer,), daemon=True).start()
    while True:
        run_job(model, control.jobs.get(), control, out.send)


if __name__ == "__main__":
    sys.exit(main())
