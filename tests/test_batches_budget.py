"""The runner's budget of bytes in flight (`ByteBudget`): at most its limit at once, a larger
take alone, first come first served, and nothing kept by a waiter that stops waiting."""

from __future__ import annotations

import asyncio

from filesd.batches.budget import ByteBudget

from .conftest import wait_until


async def test_takes_within_the_limit_go_at_once_and_a_larger_one_alone() -> None:
    budget = ByteBudget(100)
    halted = asyncio.Event()
    assert await budget.take(60, halted)
    assert await budget.take(40, halted)
    large = asyncio.create_task(budget.take(500, halted))
    small = asyncio.create_task(budget.take(1, halted))  # would fit later, but waits its turn
    await asyncio.sleep(0)
    budget.give(60)
    await asyncio.sleep(0)
    assert not large.done() and not small.done()
    budget.give(40)  # nothing taken: the large take goes, alone
    await wait_until(large.done, what="the large take granted")
    await asyncio.sleep(0)
    assert not small.done()
    budget.give(500)
    await wait_until(small.done, what="the small take granted")
    assert large.result() and small.result()


async def test_a_halted_or_cancelled_waiter_takes_nothing() -> None:
    budget = ByteBudget(100)
    halted = asyncio.Event()
    assert await budget.take(100, halted)
    stopping = asyncio.Event()
    halting = asyncio.create_task(budget.take(50, stopping))
    cancelled = asyncio.create_task(budget.take(50, halted))
    after = asyncio.create_task(budget.take(100, halted))
    await asyncio.sleep(0)
    stopping.set()
    assert await halting is False
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    budget.give(100)
    # Neither waiter that went kept a byte: the whole limit is there for the next.
    await wait_until(after.done, what="the take after them granted")
    assert after.result() is True
    assert await budget.take(1, stopping) is False  # halted before it began


async def test_a_waiter_granted_as_it_is_cancelled_gives_its_bytes_back() -> None:
    budget = ByteBudget(10)
    halted = asyncio.Event()
    assert await budget.take(10, halted)
    waiter = asyncio.create_task(budget.take(10, halted))
    await asyncio.sleep(0)
    budget.give(10)  # granted to the waiter, which is cancelled before it resumes
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert await asyncio.wait_for(budget.take(10, halted), timeout=60)
