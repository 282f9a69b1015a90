"""A real JupyterHub with its real proxy and nbchat as its service (see :mod:`nbchat.bench.hubrun`).

A Hub's start costs seconds of CPU (the Hub, its proxy, the service, and the model or workers the service
loads), so tests share them: ``hub_pool`` (tests/conftest.py) keeps one Hub per set of service options for
the session, and ``hub`` is its Hub on the echo backend. ``make_hub`` starts a Hub of the test's own, for a
test that harms it (stops the Hub). Every Hub stops at teardown, and a process of its tree that outlives it
fails the test run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nbchat.bench.hubrun import ECHO, HubStartError, HubUserToken, LocalHub
from tests.conftest import RedisProcess

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


class HubPool:
    """Hubs by the options of their service, each started when a test first asks for it and shared with every
    test that asks for the same options (each test makes users of its own)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._workdirs = tmp_path_factory
        self._hubs: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], LocalHub] = {}

    def get(self, service_args: Sequence[str] = ECHO, service_env: dict[str, str] | None = None) -> LocalHub:
        key = (tuple(service_args), tuple(sorted((service_env or {}).items())))
        if key not in self._hubs:
            self._hubs[key] = start_hub(self._workdirs.mktemp("hub"), service_args=service_args,
                                        service_env=service_env)
        return self._hubs[key]

    def stop(self, *hubs: LocalHub) -> None:
        """Stop the given Hubs (all when none is given)."""
        stopping = [hub for hub in self._hubs.values() if not hubs or hub in hubs]
        self._hubs = {key: hub for key, hub in self._hubs.items() if hub not in stopping}
        with ThreadPoolExecutor(max(1, len(stopping))) as stops:  # each stop mostly waits for processes to end
            ended = list(stops.map(lambda hub: (hub.stop(), hub.tail()), stopping))
        left = {hub.url: end for hub, end in zip(stopping, ended, strict=True)}
        assert not any(pids for pids, _ in left.values()), f"processes outlived their Hub: {left}"


@pytest.fixture(scope="session")
def hub(hub_pool: HubPool) -> LocalHub:
    """The session's Hub whose nbchat service streams with the echo backend as fast as it can."""
    return hub_pool.get()


#: the service as ``nbchat serve --jupyterhub`` starts with no option: the embedded model
MODEL: tuple[str, ...] = ()
#: the echo backend at 20 pieces a second: a turn lasts long enough for other requests to meet it
SLOW_ECHO = ("--backend", "echo", "--rate", "20")


@pytest.fixture
def make_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubFactory]:
    """Start Hubs of the test's own (for a test that stops one); each stops at the test's teardown."""
    hubs: list[LocalHub] = []

    def make(**options: object) -> LocalHub:
        started = start_hub(tmp_path_factory.mktemp("hub"), **options)
        hubs.append(started)
        return started

    yield make
    for started in hubs:
        stop_hub(started)


@pytest.fixture(scope="session")
def workers_hub(hub_pool: HubPool, shared_redis: RedisProcess) -> Iterator[LocalHub]:
    """A Hub whose service runs two workers sharing Redis, each user bounded to 2 turns at once and 4 a minute."""
    started = hub_pool.get(service_args=(*SLOW_ECHO, "--max-user-turns", "2", "--user-turns-per-minute", "4",
                                         "--store", shared_redis.url, "--workers", "2"))
    yield started
    hub_pool.stop(started)  # before its Redis stops
