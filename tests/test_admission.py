from __future__ import annotations

import asyncio

import pytest

from inferswarm.openai_compat.errors import RateLimited
from inferswarm.router.admission import WaitQueue


async def test_waiters_are_served_in_turn_across_tenants() -> None:
    queue = WaitQueue(max_waiting=10, timeout_s=5)
    order: list[str] = []

    async def wait(name: str, tenant: str) -> None:
        await queue.wait(tenant)
        order.append(name)

    tasks = []
    for name, tenant in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B")]:
        tasks.append(asyncio.create_task(wait(name, tenant)))
        await asyncio.sleep(0)
    assert len(queue) == 4
    for _ in range(4):
        queue.wake(1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["a1", "b1", "a2", "a3"]
    assert len(queue) == 0


async def test_a_full_queue_refuses_with_retry_after() -> None:
    queue = WaitQueue(max_waiting=1, timeout_s=5)
    first = asyncio.create_task(queue.wait("A"))
    await asyncio.sleep(0)
    with pytest.raises(RateLimited) as refused:
        await queue.wait("B")
    assert refused.value.code == "queue_full"
    assert refused.value.headers["Retry-After"]
    queue.wake(1)
    await first


async def test_waiting_is_bounded_in_time() -> None:
    queue = WaitQueue(max_waiting=5, timeout_s=0.05)
    with pytest.raises(RateLimited) as late:
        await queue.wait("A")
    assert late.value.code == "queue_timeout"
    assert len(queue) == 0 and queue.timed_out == 1


async def test_a_waiter_that_leaves_gives_up_its_place() -> None:
    queue = WaitQueue(max_waiting=5, timeout_s=5)
    leaving = asyncio.create_task(queue.wait("A"))
    await asyncio.sleep(0)
    staying = asyncio.create_task(queue.wait("B"))
    await asyncio.sleep(0)
    leaving.cancel()  # the client disconnected while waiting
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert len(queue) == 1
    queue.wake(1)
    await asyncio.wait_for(staying, 1)
