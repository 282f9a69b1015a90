"""The model process's job hand-off: after an answer, the generating thread learns of the next job
as soon as the reader thread queues it, and gives up waiting when none comes."""

from __future__ import annotations

import threading
import time

from nbchat.backends.llama_worker import Control
from nbchat.backends.model_messages import Generate


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
