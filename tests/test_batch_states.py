"""The batch state table (filesd/batches/states.py): every status change is one of its moves,
made only from its sources."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from filesd.batches import states
from filesd.models import BatchRecord
from filesd.objects import BatchStatus
from filesd.storage.base import BATCH_ACTIVE
from filesd.storage.sqlite import SqliteMetadata


def test_the_table_covers_every_status_once() -> None:
    statuses = set(get_args(BatchStatus))
    named = {s for t in states.MOVES.values() for s in (*t.sources, t.to)}
    assert named == statuses
    assert set(states.FINAL) == {"completed", "failed", "expired", "cancelled"}
    assert set(states.ACTIVE) | set(states.FINAL) == statuses
    assert not set(states.ACTIVE) & set(states.FINAL)
    # The metadata stores index exactly the statuses someone still works on.
    assert set(states.ACTIVE) == set(BATCH_ACTIVE)
    assert states.INITIAL in states.ACTIVE and set(states.CANCELLABLE) <= set(states.OPEN)


async def test_a_move_is_made_only_from_its_sources(tmp_path: Path) -> None:
    db = await SqliteMetadata.open(tmp_path / "filesd.db")
    try:
        batch = BatchRecord(
            "batch_x", "p", "/v1/embeddings", "file-1", "24h", states.INITIAL, 100, 200
        )
        await db.insert_batch(batch)
        assert not await states.move(db, batch.id, "sent", now=110)  # not in progress yet
        assert await states.move(db, batch.id, "validated", now=120, changes={"total": 3})
        moved = await db.get_batch(batch.id)
        assert moved is not None
        assert (moved.status, moved.in_progress_at, moved.total) == ("in_progress", 120, 3)
        assert await states.move(db, batch.id, "cancel", now=130)
        assert not await states.move(db, batch.id, "cancel", now=131)  # once
        ending = await db.get_batch(batch.id)
        assert ending is not None and states.final_move(ending) == "cancelled"
        assert await states.move(db, batch.id, "cancelled", now=140)
        done = await db.get_batch(batch.id)
        assert done is not None and (done.status, done.cancelled_at) == ("cancelled", 140)
        for name in states.MOVES:  # nothing leaves a final status
            assert not await states.move(db, batch.id, name, now=150)
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("expired", "errors", "status", "move"),
    [
        (None, None, "finalizing", "completed"),
        (None, '{"object": "list", "data": []}', "finalizing", "failed"),
        (190, None, "finalizing", "expired"),
        (190, None, "cancelling", "cancelled"),
    ],
)
def test_how_an_ending_batch_ends(
    expired: int | None, errors: str | None, status: BatchStatus, move: states.Move
) -> None:
    batch = BatchRecord(
        "b", "p", "/v1/embeddings", "f", "24h", status, 1, 2, expired_at=expired, errors=errors
    )
    assert states.final_move(batch) == move
