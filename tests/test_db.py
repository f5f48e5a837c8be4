"""The SQLite metadata store, through its `MetadataStore` protocol, without HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filesd.models import FileRecord, KeyRecord
from filesd.storage.base import MetadataStore, SchemaTooNew, StorageBusy
from filesd.storage.sqlite import DB_NAME, MIGRATIONS, SqliteMetadata


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
async def db(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    database = await SqliteMetadata.open(tmp_path / DB_NAME)
    yield database
    await database.close()


async def test_migrations_set_the_version_and_run_once(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    db = await SqliteMetadata.open(path)
    assert await db.schema_version() == len(MIGRATIONS)
    await db.insert_files([record("a")])
    await db.close()
    db = await SqliteMetadata.open(path)  # reopening migrates nothing and keeps the rows
    assert await db.get_live_file("p", "a", now=0) is not None
    await db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew):
        await SqliteMetadata.open(path)


async def page(db: MetadataStore, **kw: object) -> tuple[list[str], int]:
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


async def test_listing_orders_by_insertion_within_one_second(db: MetadataStore) -> None:
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
    db: MetadataStore, tmp_path: Path
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
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
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
    db = await SqliteMetadata.open(path)
    try:
        assert (await page(db))[1] == 2
    finally:
        await db.close()


async def test_deleted_expired_and_foreign_rows_are_not_live(db: MetadataStore) -> None:
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


async def test_blob_references_count_files_not_deleted(db: MetadataStore) -> None:
    a, b = "a" * 64, "b" * 64
    await db.insert_files([record("x", sha256=a)])
    await db.insert_files([record("y", sha256=a)])
    await db.insert_files([record("z", sha256=b)])
    await db.mark_deleted("p", "x", now=1)
    assert await db.blob_in_use(a)
    await db.mark_deleted("p", "y", now=1)
    assert not await db.blob_in_use(a)
    assert await db.blobs_in_use([a, b, "c" * 64]) == {b}


# --- transactions and neutral errors --------------------------------------------------------


def _refuse(tmp_path: Path, table: str) -> None:
    """From now on, deleting a row of `table` fails (as a full disk or a bug would midway)."""
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse_{table} BEFORE DELETE ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )


async def _upload_with_part(db: MetadataStore) -> None:
    from filesd.models import PartRecord, UploadRecord

    await db.insert_upload(
        UploadRecord("u", "p", "f", "batch", "text/plain", 2, 1, 10**10, None, "pending")
    )
    part = PartRecord("part", "u", "a" * 32, 2, 1)
    assert await db.insert_part(part, now=1, max_project_bytes=0) == "added"


async def test_delete_everything_is_all_or_nothing(db: MetadataStore, tmp_path: Path) -> None:
    await db.insert_files([record("a"), record("b", project="q")])
    await _upload_with_part(db)
    # The parts go first, then the uploads: refusing the second step must undo the first.
    _refuse(tmp_path, "uploads")
    with pytest.raises(sqlite3.IntegrityError):
        await db.delete_everything(None)
    assert [p.token for p in await db.get_parts("u")] == ["a" * 32]
    assert len(await db.live_files(None)) == 2
    # The writer is usable afterwards (no transaction left open).
    await db.insert_files([record("c")])
    assert len(await db.live_files(None)) == 3


async def test_purge_deleted_is_all_or_nothing(db: MetadataStore, tmp_path: Path) -> None:
    await db.insert_files([record("gone")])
    await db.mark_deleted("p", "gone", now=5)
    await _upload_with_part(db)
    assert await db.set_upload_status("u", old="pending", new="cancelled")
    _refuse(tmp_path, "uploads")
    with pytest.raises(sqlite3.IntegrityError):
        await db.purge_deleted(before=10**10)
    assert await db.file_exists("gone")  # the first statement was rolled back
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("DROP TRIGGER refuse_uploads")
    assert await db.purge_deleted(before=10**10) == 1
    assert not await db.file_exists("gone")


async def test_import_is_all_or_nothing(db: MetadataStore) -> None:
    await db.insert_files([record("taken")])
    # Many rows (several statements inside the transaction); a duplicate near the end.
    rows = [record(f"f{i}") for i in range(1200)]
    with pytest.raises(sqlite3.IntegrityError):
        await db.import_files([*rows, record("f3")])
    assert not await db.file_exists("f0")
    assert await db.import_files([record("new"), record("taken")]) == ["taken"]
    assert not await db.file_exists("new")
    assert await db.import_files(rows) == []
    assert len(await db.live_files("p")) == 1201


async def test_a_lock_held_too_long_is_storage_busy(db: MetadataStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME, isolation_level=None) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            # The background connection does not wait: busy at once, decided by the error code.
            with pytest.raises(StorageBusy):
                await db.delete_expired_files(now=0, limit=1)
        finally:
            other.execute("ROLLBACK")


def test_neutral_errors_come_from_error_codes_not_messages() -> None:
    from filesd.storage.base import StorageFull
    from filesd.storage.sqlite import neutral_error

    def error(code: int, message: str) -> sqlite3.Error:
        e = sqlite3.OperationalError(message)
        e.sqlite_errorcode = code  # type: ignore[attr-defined]
        return e

    assert isinstance(neutral_error(error(sqlite3.SQLITE_FULL, "whatever")), StorageFull)
    assert isinstance(neutral_error(error(sqlite3.SQLITE_BUSY, "x")), StorageBusy)
    assert isinstance(neutral_error(error(sqlite3.SQLITE_LOCKED, "x")), StorageBusy)
    assert isinstance(neutral_error(error(517, "x")), StorageBusy)  # SQLITE_BUSY_SNAPSHOT
    # A message that merely says "full" or "locked" is not one of them.
    assert neutral_error(error(sqlite3.SQLITE_ERROR, "table full of locked rows")) is None


async def test_keys_are_records(db: MetadataStore) -> None:
    await db.insert_key(KeyRecord("key_1", "0" * 64, "p", "abcd", 5))
    assert await db.revoke_key("key_1", 6)
    assert not await db.revoke_key("key_1", 7)
    assert await db.keys() == [KeyRecord("key_1", "0" * 64, "p", "abcd", 5, 6)]


async def test_a_cancelled_transaction_stays_cancelled_and_leaves_no_transaction_open(
    db: MetadataStore,
) -> None:
    # Cancelled at every point of BEGIN ... COMMIT: the caller sees CancelledError (never a
    # SQLite error in its place, which a background loop would swallow and go on), and the
    # next transaction starts cleanly.
    for steps in range(12):
        task = asyncio.create_task(db.purge_deleted(before=0))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled() or task.exception() is None
        assert await db.purge_deleted(before=0) == 0
