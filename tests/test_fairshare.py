"""The fair queue serves users in turn, and the per-user bounds refuse with 429 (pure asyncio, no server)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from nbchat.bench.hub import UserRun, table
from nbchat.cli.main import main
from nbchat.server.config import Settings
from nbchat.server.fairshare import FairGate, UserQuota
from nbchat.wire.errors import RequestError


async def served_order(gate: FairGate, arrivals: list[str]) -> list[str]:
    """The owners in the order the gate lets their turns generate; every turn arrives while the first holds
    the model."""
    order: list[str] = []
    arrived = asyncio.Event()

    async def turn(owner: str) -> None:
        async with gate.turn(owner):
            order.append(owner)
            await arrived.wait()

    tasks = []
    for owner in arrivals:
        tasks.append(asyncio.create_task(turn(owner)))
        await asyncio.sleep(0)  # arrive in this order
    arrived.set()
    await asyncio.gather(*tasks)
    return order


async def test_one_users_many_turns_do_not_hold_the_others_back() -> None:
    arrivals = ["greedy"] * 6 + ["a", "b"]
    order = await served_order(FairGate(1), arrivals)
    assert order[:4] == ["greedy", "greedy", "a", "b"]  # the first was served at once; then one each in turn
    assert order.count("greedy") == 6 and len(order) == 8


async def test_without_other_users_it_is_first_come_first_served() -> None:
    assert await served_order(FairGate(2), ["x"] * 5) == ["x"] * 5


async def test_a_turn_cancelled_while_waiting_leaves_the_queue() -> None:
    gate = FairGate(1)
    hold = asyncio.Event()

    async def first() -> None:
        async with gate.turn("a"):
            await hold.wait()

    async def waiting() -> None:
        async with gate.turn("b"):
            pytest.fail("a cancelled turn must not generate")

    running = asyncio.create_task(first())
    await asyncio.sleep(0)
    queued = asyncio.create_task(waiting())
    await asyncio.sleep(0)
    assert (gate.active, gate.queued) == (1, 1)
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    assert gate.queued == 0
    hold.set()
    await running
    assert (gate.active, gate.queued) == (0, 0)
    async with gate.turn("c"):  # the slot is free again
        assert gate.active == 1


def test_the_quota_refuses_turns_over_the_users_bound_with_429() -> None:
    quota = UserQuota(max_turns=2, per_minute=0)
    quota.admit("alice", 0)
    with pytest.raises(RequestError) as refused:
        quota.admit("alice", 2)
    assert refused.value.status == 429 and refused.value.code == "user_turn_limit"


def test_the_quota_refuses_turns_over_the_users_rate_with_429() -> None:
    quota = UserQuota(max_turns=0, per_minute=3)
    for _ in range(3):
        quota.admit("alice", 0)
    quota.admit("bob", 0)  # each user has a rate of their own
    with pytest.raises(RequestError) as refused:
        quota.admit("alice", 0)
    assert refused.value.status == 429 and refused.value.code == "user_rate_limit"
    assert "try again in" in str(refused.value)


def test_users_are_bounded_by_default_only_under_a_hub() -> None:
    assert Settings(backend="smollm2").user_limits() == (0, 0.0, 0)
    assert Settings(backend="smollm2", jupyterhub=True).user_limits() == (3, 30.0, 1)
    assert Settings(backend="echo", jupyterhub=True).user_limits() == (3, 30.0, 0)  # no queue but the model's
    assert Settings(backend="echo", jupyterhub=True, max_user_turns=0, fair_slots=2).user_limits() == (0, 30.0, 2)
    with pytest.raises(ValueError, match=r"Settings\.max_user_turns"):
        Settings(max_user_turns=-1)


def test_per_user_options_go_with_jupyterhub(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backend", "echo", "--max-user-turns", "2"]) == 2
    assert "--max-user-turns goes with --jupyterhub" in capsys.readouterr().err


def test_the_benchmark_table_shows_each_users_median_and_refusals() -> None:
    fifo = [UserRun("greedy0", [0.5, 0.7, 0.9]), UserRun("user1", [4.0, 6.0], refused=Counter(busy=1))]
    fair = [UserRun("greedy0", [0.5, 3.0]), UserRun("user1", [1.0, 1.2])]
    shown = table({"FIFO": fifo, "fair": fair})
    assert shown.splitlines()[0] == "| user | FIFO: median TTFT, s | fair: median TTFT, s |"
    assert "| user1 | 5.00 (2 ok, refused: 1 busy) | 1.10 (2 ok) |" in shown
    assert "| the others, median of their medians | 5.00 | 1.10 |" in shown
