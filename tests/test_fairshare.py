"""The fair queue serves users in turn, and the per-user bounds refuse with 429 (pure asyncio, no server)."""

from __future__ import annotations

import asyncio

import pytest

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
    quota.admit("alice", [])
    with pytest.raises(RequestError) as refused:
        quota.admit("alice", [object(), object()])  # type: ignore[list-item]
    assert refused.value.status == 429 and refused.value.code == "user_turn_limit"


def test_the_quota_refuses_turns_over_the_users_rate_with_429() -> None:
    quota = UserQuota(max_turns=0, per_minute=3)
    for _ in range(3):
        quota.admit("alice", [])
    quota.admit("bob", [])  # each user has a rate of their own
    with pytest.raises(RequestError) as refused:
        quota.admit("alice", [])
    assert refused.value.status == 429 and refused.value.code == "user_rate_limit"
    assert "try again in" in str(refused.value)
