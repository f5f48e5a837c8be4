"""Batch state in the metadata stores (`BatchMetadata`), without HTTP: on SQLite and on a real
PostgreSQL, through the same `backend` fixture as tests/test_db.py."""

from __future__ import annotations

import asyncio

import pytest

from filesd.models import BatchRecord, BatchResult
from filesd.objects import BatchStatus
from filesd.storage.base import BatchMetadata, MetadataStore, batch_lease

from . import test_db

# The engines of tests/test_db.py: SQLite, and PostgreSQL.
backend = test_db.backend


@pytest.fixture
def db(backend: test_db.Backend) -> MetadataStore:
    return backend.db


def batch(batch_id: str, *, project: str = "p", status: BatchStatus = "validating") -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        project=project,
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        completion_window="24h",
        status=status,
        created_at=1000,
        expires_at=1000 + 86400,
        metadata='{"k": "v"}',
    )


async def test_a_batch_round_trips_and_belongs_to_its_project(db: MetadataStore) -> None:
    assert isinstance(db, BatchMetadata)
    await db.insert_batch(batch("batch_a"))
    assert await db.get_batch("batch_a", "p") == batch("batch_a")
    assert await db.get_batch("batch_a") == batch("batch_a")
    assert await db.get_batch("batch_a", "other") is None
    assert await db.get_batch("batch_nope") is None


async def test_batches_list_newest_first_with_a_cursor(db: MetadataStore) -> None:
    for n in range(5):
        await db.insert_batch(batch(f"batch_{n}"))
    await db.insert_batch(batch("batch_x", project="q"))
    first = await db.list_batches("p", after=None, limit=2)
    assert first is not None
    assert [b.id for b in first] == ["batch_4", "batch_3"]
    rest = await db.list_batches("p", after="batch_3", limit=10)
    assert rest is not None
    assert [b.id for b in rest] == ["batch_2", "batch_1", "batch_0"]
    assert await db.list_batches("p", after="batch_x", limit=10) is None  # another project's
    assert await db.list_batches("q", after=None, limit=10) == [batch("batch_x", project="q")]


async def test_update_batch_moves_only_from_the_statuses_named(db: MetadataStore) -> None:
    await db.insert_batch(batch("batch_a"))
    assert await db.update_batch("batch_a", {"status": "in_progress", "in_progress_at": 5})
    assert not await db.update_batch(
        "batch_a", {"status": "failed"}, statuses=["validating", "cancelling"]
    )
    assert await db.update_batch("batch_a", {"status": "cancelling"}, statuses=["in_progress"])
    got = await db.get_batch("batch_a")
    assert got is not None
    assert (got.status, got.in_progress_at) == ("cancelling", 5)
    assert await db.active_batches() == ["batch_a"]
    assert await db.update_batch("batch_a", {"status": "cancelled"})
    assert await db.active_batches() == []
    with pytest.raises(ValueError, match="project"):
        await db.update_batch("batch_a", {"project": "evil"})


async def test_batches_are_claimed_in_turns_over_every_instances_leases(
    db: MetadataStore,
) -> None:
    async def order(now: int = 1000) -> list[str]:
        return [b.id for b in await db.batches_to_claim(("validating", "in_progress"), now=now)]

    # p started a batch at 500 (done since) and has three waiting; q has one, the newest.
    await db.insert_batch(batch("batch_p0"))
    await db.update_batch("batch_p0", {"status": "completed", "in_progress_at": 500})
    for n in (1, 2, 3):
        await db.insert_batch(batch(f"batch_p{n}"))
    await db.insert_batch(batch("batch_q1", project="q"))
    # q never started one: its turn first, p's backlog however old.
    assert await order() == ["batch_q1", "batch_p1", "batch_p2", "batch_p3"]
    # q started one more recently than p: p's turn.
    await db.insert_batch(batch("batch_q0", project="q", status="completed"))
    await db.update_batch("batch_q0", {"in_progress_at": 900})
    assert await order() == ["batch_p1", "batch_q1", "batch_p2", "batch_p3"]
    # Another instance drives p1 (its lease): not to claim, and p drives one more than q.
    assert await db.take_lease(batch_lease("batch_p1"), "other", now=1000, ttl=30)
    assert await order() == ["batch_q1", "batch_p2", "batch_p3"]
    # Its lease run out (the instance died), p1 waits like the others.
    assert await order(now=1030) == ["batch_p1", "batch_q1", "batch_p2", "batch_p3"]
    assert await order(now=1029) == ["batch_q1", "batch_p2", "batch_p3"]


async def test_a_result_is_recorded_once_and_counted_once(db: MetadataStore) -> None:
    await db.insert_batch(batch("batch_a", status="in_progress"))
    await db.add_batch_requests("batch_a", [(1, "a"), (2, "b"), (3, "c")])
    await db.add_batch_requests("batch_a", [(3, "c")])  # again after a restart: no change
    assert await db.pending_batch_requests("batch_a", after_line=0, limit=10) == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]
    ok = BatchResult(1, True, '{"custom_id": "a"}', (10, 5, 2, 1))
    bad = BatchResult(3, False, '{"custom_id": "c"}')
    assert await db.record_batch_results("batch_a", [ok, bad]) == 2
    # The same results again (another instance sent them too): ignored, not counted twice.
    assert await db.record_batch_results("batch_a", [ok, bad]) == 0
    assert await db.pending_batch_requests("batch_a", after_line=0, limit=10) == [(2, "b")]
    assert await db.batch_results("batch_a", ok=True, after_line=0, limit=10) == [
        (1, '{"custom_id": "a"}')
    ]
    assert await db.batch_results("batch_a", ok=False, after_line=0, limit=10) == [
        (3, '{"custom_id": "c"}')
    ]
    got = await db.get_batch("batch_a")
    assert got is not None
    assert (got.completed, got.failed) == (1, 1)
    assert (got.input_tokens, got.output_tokens, got.cached_tokens, got.reasoning_tokens) == (
        10,
        5,
        2,
        1,
    )
    await db.clear_batch_requests("batch_a")
    assert await db.pending_batch_requests("batch_a", after_line=0, limit=10) == []


async def test_concurrent_recorders_of_one_result_count_it_once(db: MetadataStore) -> None:
    await db.insert_batch(batch("batch_a", status="in_progress"))
    await db.add_batch_requests("batch_a", [(n, f"r{n}") for n in range(1, 201)])
    results = [BatchResult(n, True, "{}", (1, 1, 0, 0)) for n in range(1, 201)]
    counts = await asyncio.gather(
        *(db.record_batch_results("batch_a", results[k::4]) for k in range(4)),
        *(db.record_batch_results("batch_a", results[k::4]) for k in range(4)),
    )
    assert sum(counts) == 200
    got = await db.get_batch("batch_a")
    assert got is not None
    assert (got.completed, got.input_tokens) == (200, 200)


@pytest.mark.parametrize("status", ["validating", "finalizing", "cancelling", "completed"])
async def test_results_are_recorded_only_while_the_batch_is_in_progress(
    db: MetadataStore, status: BatchStatus
) -> None:
    """Once a batch has left `in_progress`, its output is being (or has been) written from
    the rows: a late result must change neither the rows nor the counts."""
    await db.insert_batch(batch("batch_a", status=status))
    await db.add_batch_requests("batch_a", [(1, "a")])
    assert await db.record_batch_results("batch_a", [BatchResult(1, True, "{}", (1, 1, 0, 0))]) == 0
    assert await db.pending_batch_requests("batch_a", after_line=0, limit=10) == [(1, "a")]
    got = await db.get_batch("batch_a")
    assert got is not None
    assert (got.completed, got.failed, got.input_tokens) == (0, 0, 0)


async def test_delete_everything_removes_the_projects_batches(db: MetadataStore) -> None:
    await db.insert_batch(batch("batch_p", status="in_progress"))
    await db.insert_batch(batch("batch_q", project="q", status="in_progress"))
    for batch_id in ("batch_p", "batch_q"):
        await db.add_batch_requests(batch_id, [(1, "a")])
    await db.delete_everything("p")
    assert await db.get_batch("batch_p") is None
    assert await db.pending_batch_requests("batch_p", after_line=0, limit=10) == []
    assert await db.active_batches() == ["batch_q"]
    assert await db.pending_batch_requests("batch_q", after_line=0, limit=10) == [(1, "a")]
    await db.delete_everything(None)
    assert await db.active_batches() == []
    assert await db.pending_batch_requests("batch_q", after_line=0, limit=10) == []


async def test_a_page_of_results_is_bounded_by_bytes(db: MetadataStore) -> None:
    await db.insert_batch(batch("batch_a", status="in_progress"))
    await db.add_batch_requests("batch_a", [(n, f"r{n}") for n in range(1, 11)])
    big = "x" * 1000
    await db.record_batch_results("batch_a", [BatchResult(n, True, big) for n in range(1, 11)])
    page = await db.batch_results("batch_a", ok=True, after_line=0, limit=100, max_bytes=3500)
    assert [line for line, _ in page] == [1, 2, 3]
    # A result larger than the bound still comes, alone.
    page = await db.batch_results("batch_a", ok=True, after_line=3, limit=100, max_bytes=10)
    assert [line for line, _ in page] == [4]
    page = await db.batch_results("batch_a", ok=True, after_line=0, limit=100)
    assert len(page) == 10


async def test_forget_batch_drops_result_payloads_and_the_lease(db: MetadataStore) -> None:
    await db.insert_batch(batch("batch_a", status="in_progress"))
    await db.add_batch_requests("batch_a", [(1, "a"), (2, "b")])
    await db.record_batch_results("batch_a", [BatchResult(1, True, "x" * 100)])
    assert await db.take_lease("batch:batch_a", "one", now=100, ttl=60)
    assert not await db.take_lease("batch:batch_a", "two", now=100, ttl=60)
    await db.forget_batch("batch_a", "batch:batch_a")
    forgotten: list[tuple[int, str | None]] = [(1, None)]
    assert await db.batch_results("batch_a", ok=True, after_line=0, limit=10) == forgotten
    # The row of the request still says it is done; the lease is free (and gone).
    assert await db.pending_batch_requests("batch_a", after_line=0, limit=10) == [(2, "b")]
    assert await db.take_lease("batch:batch_a", "two", now=100, ttl=60)
