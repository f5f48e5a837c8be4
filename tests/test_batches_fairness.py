"""Projects share the batch runner fairly: a project waiting out its upstream's rate limit
holds no concurrency slot, slots go to the project holding the fewest, batches are claimed
with projects taking turns, and a project over its share of the run slots gives one back
while another project's batch waits. Through the HTTP API with a test upstream (two API
keys: two projects), and the rules themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filesd.batches.fairness import FairSlots, run_share, to_yield
from filesd.storage.rules import QueuedBatch, claim_order

from .batch_upstream import Behaviour, make_upstream, request_line
from .conftest import BETA, wait_until
from .test_batches_api import app_client, finished, get_batch, start_batch

# Longer than any test may take (the runner waits at most 300 s): only a request that does
# not wait for it finishes.
FOREVER = "3600"


async def _limited_client(
    aiohttp_client: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
    behaviour: Behaviour,
    **settings: Any,
) -> Any:
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    return await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": str(upstream.make_url("/v1")), "max_retries": 3, **settings},
    )


def _calls(behaviour: Behaviour, prefix: str) -> int:
    return sum(n for key, n in behaviour.calls.items() if key.startswith(prefix))


async def test_a_project_waiting_out_429s_leaves_the_slots_to_the_others(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour(retry_after=FOREVER)
    client = await _limited_client(
        aiohttp_client, aiohttp_server, tmp_path, behaviour, concurrency=2
    )
    limited = await start_batch(client, [request_line(f"a{n}", "429") for n in range(6)])
    # Both slots' requests have met their 429 and wait out its Retry-After.
    await wait_until(lambda: _calls(behaviour, "a") >= 2, what="project A rate limited")
    other = await start_batch(client, [request_line(f"b{n}") for n in range(4)], headers=BETA)
    batch = await finished(client, other["id"], timeout=60, headers=BETA)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    # A's batch waits on, losing nothing, with no more requests under way than the slots
    # (a rate-limited batch does not pile up every request of its input in memory).
    assert _calls(behaviour, "a") == 2
    waiting = await get_batch(client, limited["id"])
    assert waiting["status"] == "in_progress"
    assert waiting["request_counts"] == {"total": 6, "completed": 0, "failed": 0}


async def test_a_projects_backlog_does_not_keep_anothers_batch_from_starting(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour()
    client = await _limited_client(
        aiohttp_client, aiohttp_server, tmp_path, behaviour, max_running=1
    )
    backlog = [await start_batch(client, [request_line(f"a{n}", "hold")]) for n in range(3)]
    await wait_until(lambda: behaviour.calls["a0"] == 1, what="A's first batch running")
    other = await start_batch(client, [request_line("b0")], headers=BETA)
    behaviour.gate.set()
    assert (await finished(client, other["id"], headers=BETA))["status"] == "completed"
    for batch in backlog:
        assert (await finished(client, batch["id"]))["status"] == "completed"
    # The run slot freed by A's first batch went to B's, not to the rest of A's backlog.
    assert list(behaviour.calls) == ["a0", "b0", "a1", "a2"]


async def test_a_project_over_its_share_of_run_slots_gives_one_back(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour(retry_after=FOREVER)
    client = await _limited_client(
        aiohttp_client, aiohttp_server, tmp_path, behaviour, max_running=2, concurrency=2
    )
    limited = [
        await start_batch(client, [request_line(f"a{b}r{n}", "429") for n in range(2)])
        for b in range(2)
    ]
    # Both of A's batches run (both run slots), every request waiting out a 429.
    await wait_until(lambda: _calls(behaviour, "a") >= 4, what="A's two batches running")
    other = await start_batch(client, [request_line("b0")], headers=BETA)
    batch = await finished(client, other["id"], timeout=60, headers=BETA)
    assert batch["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    # The batch that gave way keeps its requests (left pending, not failed) and, the slot
    # free again, is taken up again: its requests are sent anew.
    await wait_until(
        lambda: any(n >= 2 for key, n in behaviour.calls.items() if key.startswith("a")),
        timeout=30,
        what="the yielded batch resumed",
    )
    for created in limited:
        seen = await get_batch(client, created["id"])
        assert seen["status"] == "in_progress"
        assert seen["request_counts"] == {"total": 2, "completed": 0, "failed": 0}


async def test_a_request_is_sent_at_most_1_plus_max_retries_times_however_its_batch_yields(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    """A yield leaves the requests waiting out a 429 pending; taken up again, each has only
    the sends it had left (they used to start over, as often as another project came)."""
    behaviour = Behaviour(retry_after=FOREVER)
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={
            "upstream": str(upstream.make_url("/v1")),
            "max_retries": 1,
            "max_running": 2,
            "concurrency": 2,
        },
    )
    limited = [await start_batch(client, [request_line(f"a{b}", "429")]) for b in range(2)]
    await wait_until(lambda: _calls(behaviour, "a") >= 2, what="A's two batches running")
    other = await start_batch(client, [request_line("b0")], headers=BETA)
    assert (await finished(client, other["id"], timeout=60, headers=BETA))["status"] == (
        "completed"
    )
    # The batch that yielded, taken up again, sends its request once more (its second and
    # last send: max_retries = 1), and that 429 is its answer.
    await wait_until(
        lambda: any(behaviour.calls[f"a{n}"] == 2 for n in range(2)),
        timeout=60,
        what="the yielded batch's request sent again",
    )
    done = [n for n in range(2) if behaviour.calls[f"a{n}"] == 2]
    batch = await finished(client, limited[done[0]]["id"], timeout=60)
    assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert behaviour.calls[f"a{done[0]}"] == 2


# --- the rules ----------------------------------------------------------------------------------


async def test_a_slot_given_back_goes_to_the_waiting_project_holding_fewest() -> None:
    slots = FairSlots(2)
    await slots.acquire("a")
    await slots.acquire("a")
    a_waits = asyncio.ensure_future(slots.acquire("a"))
    await asyncio.sleep(0)
    b_waits = asyncio.ensure_future(slots.acquire("b"))
    await asyncio.sleep(0)
    # A asked first, but holds both slots: the one it gives back is B's.
    slots.release("a")
    await asyncio.wait_for(b_waits, 10)
    assert not a_waits.done()
    slots.release("b")
    await asyncio.wait_for(a_waits, 10)
    # Alone, a project takes every slot there is.
    slots.release("a")
    slots.release("a")
    await asyncio.wait_for(asyncio.gather(slots.acquire("c"), slots.acquire("c")), 10)


async def test_a_cancelled_taker_holds_no_slot() -> None:
    slots = FairSlots(1)
    await slots.acquire("a")
    gone = asyncio.ensure_future(slots.acquire("b"))
    staying = asyncio.ensure_future(slots.acquire("c"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    slots.release("a")
    await asyncio.wait_for(staying, 10)
    # Handed a slot, then cancelled before it ran: the slot goes on to the next taker.
    late = asyncio.ensure_future(slots.acquire("b"))
    after = asyncio.ensure_future(slots.acquire("d"))
    await asyncio.sleep(0)
    slots.release("c")
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    await asyncio.wait_for(after, 10)


def test_a_project_over_its_share_yields_only_while_another_waits_under_it() -> None:
    assert run_share(4, 2) == 2 and run_share(1, 3) == 1 and run_share(4, 0) == 4
    assert to_yield({"a": 4}, {"b"}, 4) == "a"
    assert to_yield({"a": 3, "b": 1}, {"b"}, 4) == "a"  # b holds 1 of its 2
    assert to_yield({"a": 2, "b": 2}, {"a", "b"}, 4) is None  # even
    assert to_yield({"a": 4}, {"a"}, 4) is None  # alone: all of it
    assert to_yield({"a": 1}, {"b"}, 1) is None  # one slot: turns, batch by batch
    assert to_yield({"a": 3, "b": 2, "c": 1}, {"d"}, 6) == "a"  # the one holding most


def test_the_claim_order_lets_projects_take_turns() -> None:
    a = [QueuedBatch(f"a{n}", "a") for n in range(3)]
    b = [QueuedBatch(f"b{n}", "b") for n in range(2)]
    ids = [q.id for q in claim_order([*a, *b], {})]
    assert ids == ["a0", "b0", "a1", "b1", "a2"]
    # A drives one already: B's batch first, then turns.
    driven = QueuedBatch("a9", "a", driven=True)
    assert [q.id for q in claim_order([driven, *a, b[0]], {})] == ["b0", "a0", "a1", "a2"]
    # Neither drives any: the project that started a batch longest ago (or never) first.
    assert [q.id for q in claim_order([*a, b[0]], {"a": 50})][:2] == ["b0", "a0"]
    assert [q.id for q in claim_order([*b, *a], {"a": 50, "b": 60})][:3] == ["a0", "b0", "a1"]
