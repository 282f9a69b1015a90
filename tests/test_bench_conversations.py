"""The conversation benchmark's paths (``python -m nbchat.bench.model --conversations``): each nbchat
transport is measured against a server of its own, so no transport finds another's conversations kept."""

from __future__ import annotations

import argparse
import os
from contextlib import ExitStack

import pytest

from nbchat.bench.model import conversation_paths
from tests.helpers import processes_running

pytestmark = pytest.mark.model


def serve_children() -> set[int]:
    """The ``nbchat serve`` processes this process started (the benchmark starts them as its children)."""
    return set(processes_running(os.getpid(), b"nbchat.cli.main"))


def test_each_transport_is_measured_on_a_server_of_its_own() -> None:
    args = argparse.Namespace(transports=["ws", "stream"], no_llama_server=True, no_fresh=True, max_tokens=4)
    paths = conversation_paths(args, threads=1)
    assert list(paths) == ["nbchat/ws", "nbchat/stream"]
    servers: list[int] = []
    for open_path in paths.values():
        before = serve_children()
        with ExitStack() as stack:
            ask = open_path(stack)
            assert ask([], "Say hello.").text  # the path answers through its server
            started = serve_children() - before
            assert len(started) == 1, started
        assert not serve_children() & started  # stopped with its path, before the next one starts
        servers += started
    assert len(set(servers)) == 2
