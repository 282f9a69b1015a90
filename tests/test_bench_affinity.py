"""The paired rounds' cores: the servers held on one core, this process on the others, all given back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from nbchat.bench.affinity import servers_on_one_core, split_cores, threads


def test_the_servers_get_the_highest_core_and_the_load_generator_the_rest() -> None:
    assert split_cores({0, 1}) == ({1}, {0})
    assert split_cores({0, 2, 5}) == ({5}, {0, 2})
    assert split_cores({3}) is None and split_cores(set()) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only: sched_setaffinity")
def test_a_server_and_each_of_its_threads_is_held_on_one_core_and_given_back() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
                              "time.sleep(60)"])
    helper = threading.Thread(target=threading.Event().wait, args=(60,), daemon=True)
    try:
        helper.start()
        while len(threads(child.pid)) < 2:  # its second thread has started
            pass
        cores = os.sched_getaffinity(0)
        child_before = {t: os.sched_getaffinity(t) for t in threads(child.pid)}
        with servers_on_one_core([child.pid]) as core:
            if len(cores) < 2:
                assert core is None  # one core: nothing to split
                assert all(os.sched_getaffinity(t) == c for t, c in child_before.items())
            else:
                assert core == max(cores)
                assert all(os.sched_getaffinity(t) == {core} for t in threads(child.pid))
                assert all(os.sched_getaffinity(t) == cores - {core} for t in threads(os.getpid()))
        assert all(os.sched_getaffinity(t) == c for t, c in child_before.items())
        assert all(os.sched_getaffinity(t) == cores for t in threads(os.getpid()))
    finally:
        child.kill()
        child.wait()
