"""A real JupyterHub with its real proxy and nbchat as its service (see :mod:`nbchat.bench.hubrun`).

``hub`` is one Hub for the session, its service on the echo backend; ``make_hub`` starts Hubs whose service
runs with other options (the model, a shared store, workers). Every Hub stops at teardown, and a process of
its tree that outlives it fails the test run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nbchat.bench.hubrun import HubStartError, HubUserToken, LocalHub

HubFactory = Callable[..., LocalHub]
_names = (f"user{i}" for i in itertools.count(1))


def new_user(hub: LocalHub, *, access: bool = True, admin: bool = False) -> HubUserToken:
    """A fresh Hub user (a name no other test used) with an API token."""
    return hub.create_user(next(_names), access=access, admin=admin)


def start_hub(workdir: Path, **options: object) -> LocalHub:
    hub = LocalHub(workdir, **options)  # type: ignore[arg-type]
    try:
        hub.start()
    except HubStartError as exc:
        if str(exc).startswith("needs "):
            pytest.skip(str(exc))  # the tier hook has already skipped a test marked hub; CI fails it
        pytest.fail(str(exc))
    return hub


def stop_hub(hub: LocalHub) -> None:
    left = hub.stop()
    assert not left, f"processes outlived the Hub: {left}\n{hub.tail()}"


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """One Hub for the session; its nbchat service streams with the echo backend."""
    started = start_hub(tmp_path_factory.mktemp("hub"))
    yield started
    stop_hub(started)


@pytest.fixture
def make_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubFactory]:
    """Start Hubs whose service runs with the given ``service_args`` (e.g. the model, --store, --workers)."""
    hubs: list[LocalHub] = []

    def make(**options: object) -> LocalHub:
        started = start_hub(tmp_path_factory.mktemp("hub"), **options)
        hubs.append(started)
        return started

    yield make
    for started in hubs:
        stop_hub(started)
