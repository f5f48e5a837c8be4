"""The metadata database, without HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filesd.db import MIGRATIONS, Database, SchemaTooNew
from filesd.models import FileRecord


def record(file_id: str, *, project: str = "p", created_at: int = 1000, **kw: object) -> FileRecord:
    fields: dict[str, object] = {
        "id": file_id,
        "project": project,
        "filename": f"{file_id}.txt",
        "purpose": "assistants",
        "bytes": 1,
        "sha256": "0" * 64,
        "created_at": created_at,
        "expires_at": None,
    }
    fields.update(kw)
    return FileRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "filesd.db")
    yield database
    await database.close()


async def test_migrations_set_the_version_and_run_once(tmp_path: Path) -> None:
    path = tmp_path / "filesd.db"
    db = await Database.open(path)
    assert await db.schema_version() == len(MIGRATIONS)
    await db.insert_file(record("a"))
    await db.close()
    db = await Database.open(path)  # reopening migrates nothing and keeps the rows
    assert await db.get_live_file("p", "a", now=0) is not None
    await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "filesd.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew):
        await Database.open(path)


async def test_listing_orders_by_insertion_within_one_second(db: Database) -> None:
    for i in range(5):
        await db.insert_file(record(f"f{i}", created_at=1000))
    newest = await db.list_live_files(
        "p", now=0, purpose=None, descending=True, after_seq=None, limit=10, offset=0
    )
    assert [r.id for r in newest] == ["f4", "f3", "f2", "f1", "f0"]
    oldest = await db.list_live_files(
        "p", now=0, purpose=None, descending=False, after_seq=None, limit=2, offset=1
    )
    assert [r.id for r in oldest] == ["f1", "f2"]
    seq = await db.file_seq("p", "f2")
    after = await db.list_live_files(
        "p", now=0, purpose=None, descending=True, after_seq=seq, limit=10, offset=0
    )
    assert [r.id for r in after] == ["f1", "f0"]


async def test_deleted_expired_and_foreign_rows_are_not_live(db: Database) -> None:
    await db.insert_file(record("live"))
    await db.insert_file(record("other", project="q"))
    await db.insert_file(record("expired", expires_at=1500))
    await db.insert_file(record("gone", purpose="batch"))
    deleted = await db.mark_deleted("p", "gone", now=1100)
    assert deleted is not None and deleted.id == "gone"
    assert await db.mark_deleted("p", "gone", now=1100) is None
    assert await db.mark_deleted("p", "other", now=1100) is None

    assert await db.count_live_files("p", now=1000, purpose=None) == 2
    assert await db.count_live_files("p", now=1500, purpose=None) == 1
    assert await db.count_live_files("p", now=1000, purpose="batch") == 0
    assert await db.get_live_file("p", "other", now=0) is None
    assert await db.get_live_file("p", "expired", now=1500) is None
    # A cursor stays valid after its file is deleted, but never crosses projects.
    assert await db.file_seq("p", "gone") is not None
    assert await db.file_seq("p", "other") is None


async def test_blob_references_count_files_not_deleted(db: Database) -> None:
    a, b = "a" * 64, "b" * 64
    await db.insert_file(record("x", sha256=a))
    await db.insert_file(record("y", sha256=a))
    await db.insert_file(record("z", sha256=b))
    await db.mark_deleted("p", "x", now=1)
    assert await db.blob_in_use(a)
    await db.mark_deleted("p", "y", now=1)
    assert not await db.blob_in_use(a)
    assert await db.blobs_in_use([a, b, "c" * 64]) == {b}
