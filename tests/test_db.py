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
    await db.insert_files([record("a")])
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


async def page(db: Database, **kw: object) -> tuple[list[str], int]:
    args: dict[str, object] = {
        "now": 0,
        "purpose": None,
        "descending": True,
        "after": None,
        "limit": 10,
        "offset": 0,
    }
    args.update(kw)
    found = await db.list_live_files("p", **args)  # type: ignore[arg-type]
    assert found is not None
    rows, total = found
    return [r.id for r in rows], total


async def test_listing_orders_by_insertion_within_one_second(db: Database) -> None:
    await db.insert_files([record(f"f{i}", created_at=1000) for i in range(5)])
    assert await page(db) == (["f4", "f3", "f2", "f1", "f0"], 5)
    assert await page(db, descending=False, limit=2, offset=1) == (["f1", "f2"], 5)
    assert await page(db, after="f2") == (["f1", "f0"], 5)
    assert await page(db, after="f2", descending=False) == (["f3", "f4"], 5)
    assert await page(db, offset=10) == ([], 5)
    assert (
        await db.list_live_files(
            "p", now=0, purpose=None, descending=True, after="nope", limit=1, offset=0
        )
        is None
    )


async def test_totals_come_from_counters_that_follow_every_change(
    db: Database, tmp_path: Path
) -> None:
    await db.insert_files(
        [record(f"b{i}", purpose="batch") for i in range(3)]
        + [record("v", purpose="vision"), record("e", purpose="batch", expires_at=1500)]
        + [record("q", project="q")]
    )
    assert (await page(db, now=1000))[1] == 5
    assert (await page(db, now=1000, purpose="batch"))[1] == 4
    # An expired file stops counting at once, before any sweep.
    assert (await page(db, now=1500, purpose="batch"))[1] == 3
    await db.mark_deleted("p", "b0", now=1000)
    assert (await page(db, now=1000))[1] == 4
    assert await db.delete_expired_files(now=1500, limit=10) == ["0" * 64]
    assert (await page(db, now=1500))[1] == 3
    # Counters agree with a full count, also for rows removed outright.
    await db.close()
    with sqlite3.connect(tmp_path / "filesd.db") as conn:
        conn.execute("DELETE FROM files WHERE id = 'v'")
        counted = dict(
            conn.execute(
                "SELECT project || '/' || purpose, COUNT(*) FROM files "
                "WHERE deleted_at IS NULL GROUP BY project, purpose"
            ).fetchall()
        )
        kept = dict(
            conn.execute(
                "SELECT project || '/' || purpose, files FROM file_counts WHERE files > 0"
            ).fetchall()
        )
    assert kept == counted == {"p/batch": 2, "q/assistants": 1}


async def test_counters_are_built_for_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a database at schema 2, with files in it
        conn.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
        conn.execute(
            "INSERT INTO files (id, project, filename, purpose, bytes, sha256, created_at) "
            "VALUES ('a', 'p', 'f', 'batch', 1, ?, 1), ('b', 'p', 'f', 'batch', 1, ?, 1)",
            ("0" * 64, "0" * 64),
        )
    db = await Database.open(path)
    try:
        assert (await page(db))[1] == 2
    finally:
        await db.close()


async def test_deleted_expired_and_foreign_rows_are_not_live(db: Database) -> None:
    await db.insert_files([record("live")])
    await db.insert_files([record("other", project="q")])
    await db.insert_files([record("expired", expires_at=1500)])
    await db.insert_files([record("gone", purpose="batch")])
    deleted = await db.mark_deleted("p", "gone", now=1100)
    assert deleted is not None and deleted.id == "gone"
    assert await db.mark_deleted("p", "gone", now=1100) is None
    assert await db.mark_deleted("p", "other", now=1100) is None

    assert (await page(db, now=1000))[1] == 2
    assert (await page(db, now=1500))[1] == 1
    assert (await page(db, now=1000, purpose="batch"))[1] == 0
    assert await db.get_live_file("p", "other", now=0) is None
    assert await db.get_live_file("p", "expired", now=1500) is None
    # A cursor stays valid after its file is deleted, but never crosses projects.
    assert await page(db, after="gone", now=1000) == (["expired", "live"], 2)
    assert (
        await db.list_live_files(
            "p", now=0, purpose=None, descending=True, after="other", limit=1, offset=0
        )
        is None
    )


async def test_blob_references_count_files_not_deleted(db: Database) -> None:
    a, b = "a" * 64, "b" * 64
    await db.insert_files([record("x", sha256=a)])
    await db.insert_files([record("y", sha256=a)])
    await db.insert_files([record("z", sha256=b)])
    await db.mark_deleted("p", "x", now=1)
    assert await db.blob_in_use(a)
    await db.mark_deleted("p", "y", now=1)
    assert not await db.blob_in_use(a)
    assert await db.blobs_in_use([a, b, "c" * 64]) == {b}
