"""The model process's job hand-off: after an answer, the generating thread learns of the next job
as soon as the reader thread queues it, and gives up waiting when none comes; a stop is counted from
the moment it reaches the process."""

from __future__ import annotations

import threading
import time

from nbchat.backends.llama_worker import Control
from nbchat.backends.model_messages import End, Generate, Stop, decode_reply, encode


def job(n: int) -> Generate:
    return Generate(n, [{"role": "user", "content": "hi"}], 1, {})


def test_a_job_queued_while_waiting_ends_the_wait() -> None:
    control = Control()
    threading.Timer(0.05, control.queue, args=(job(1),)).start()
    began = time.monotonic()
    assert control.job_within(30.0)
    assert time.monotonic() - began < 15.0  # woken by the job, long before the wait would end
    assert control.jobs.get_nowait().id == 1


def test_a_job_already_queued_is_seen_without_waiting() -> None:
    control = Control()
    control.queue(job(1))
    assert control.job_within(0.0)
    control.jobs.get_nowait()
    assert not control.job_within(0.0)  # taken: the old wake-up is no job


def test_no_job_ends_the_wait_with_false() -> None:
    control = Control()
    control.arrived.set()  # a wake-up left from a job already taken is not a job
    assert not control.job_within(0.05)


def test_a_stop_counts_the_tokens_sampled_after_it_came() -> None:
    sampled = [5]
    control = Control(sampled=lambda: sampled[0])
    control.take(Stop(1))
    assert control.stop_requested(1)
    sampled[0] = 8
    assert control.after_stop(1, started=3, sampled=sampled[0]) == 3
    assert not control.stop_requested(1)  # forgotten with the job's end
    assert control.after_stop(1, started=3, sampled=8) is None


def test_a_stop_that_came_during_an_earlier_job_counts_from_this_ones_start() -> None:
    control = Control(sampled=lambda: 5)
    control.take(Stop(2))  # job 2 is still queued; job 1 runs on
    assert control.after_stop(2, started=9, sampled=9) == 0


def test_a_job_never_stopped_reports_no_stop() -> None:
    control = Control(sampled=lambda: 5)
    control.take(job(3))
    assert control.jobs.get_nowait().id == 3
    assert control.after_stop(3, started=0, sampled=40) is None


def test_the_end_carries_the_tokens_after_the_stop_only_when_there_was_one() -> None:
    stopped = End(4, 90, prompt=30, reused=12, copied_out=0, after_stop=1)
    assert decode_reply(encode(stopped)) == stopped
    plain = End(5, 91, prompt=30, reused=12, copied_out=0)
    assert b"after_stop" not in encode(plain)
    assert decode_reply(encode(plain)) == plain


def test_a_stop_that_came_after_its_jobs_end_is_forgotten_with_the_next_job() -> None:
    control = Control(sampled=lambda: 5)
    assert control.after_stop(1, started=0, sampled=5) is None  # job 1 ends unstopped
    control.take(Stop(1))  # its stop crossed the End on the pipe
    control.take(Stop(3))  # a queued job's stop stays
    assert control.after_stop(2, started=5, sampled=9) is None
    assert not control.stop_requested(1) and control.stop_requested(3)
    assert control.stopped == {3: 5}
