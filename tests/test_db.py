"""The metadata stores through their `MetadataStore` protocol, without HTTP: every contract test
runs against SQLite and against a real PostgreSQL; what only one engine has (PRAGMAs, a file
that can vanish, several processes at once) is tested on that one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from filesd.models import FileRecord, KeyRecord, PartRecord, UploadRecord, UploadStatus
from filesd.storage.base import (
    MetadataStore,
    SchemaTooNew,
    StorageBusy,
    StorageFull,
    StorageUnavailable,
)
from filesd.storage.postgres import MIGRATIONS as PG_MIGRATIONS
from filesd.storage.postgres import PostgresMetadata, lock_key
from filesd.storage.rules import Quota
from filesd.storage.sqlite import DB_NAME, MIGRATIONS, SqliteMetadata

from .conftest import wait_until
from .pg_service import PostgresServer


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


def upload_record(
    upload_id: str, *, project: str = "p", declared: int = 100, status: UploadStatus = "pending"
) -> UploadRecord:
    return UploadRecord(
        upload_id, project, "f", "batch", "text/plain", declared, 1, 10**10, None, status
    )


_parts = itertools.count(1)


def part(upload_id: str, size: int) -> PartRecord:
    n = next(_parts)
    return PartRecord(f"part_{n}", upload_id, f"{n:032x}", size, 1)


@dataclass
class Backend:
    """A store under test, and a way to reach its database from outside it."""

    name: str
    db: MetadataStore
    sql: Callable[[str], Awaitable[None]]  # runs SQL on a connection of its own
    integrity_error: type[BaseException]  # what a duplicate key raises
    trigger_error: type[BaseException]  # what a trigger refusing a change raises


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / DB_NAME

        async def sqlite_sql(text: str) -> None:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.executescript(text)

        database: MetadataStore = await SqliteMetadata.open(path)
        yield Backend(
            "sqlite", database, sqlite_sql, sqlite3.IntegrityError, sqlite3.IntegrityError
        )
    else:
        dsn = request.getfixturevalue("postgres_dsn")

        async def postgres_sql(text: str) -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(text)
            finally:
                await conn.close()

        database = await PostgresMetadata.open(dsn)
        yield Backend(
            "postgres", database, postgres_sql, asyncpg.UniqueViolationError, asyncpg.RaiseError
        )
    await database.close()


@pytest.fixture
def db(backend: Backend) -> MetadataStore:
    return backend.db


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
    project = str(args.pop("project", "p"))
    found = await db.list_live_files(project, **args)  # type: ignore[arg-type]
    assert found is not None
    rows, total = found
    return [r.id for r in rows], total


# --- files: both engines ------------------------------------------------------------------


async def test_listing_orders_by_insertion_within_one_second(db: MetadataStore) -> None:
    assert (
        await db.insert_files([record(f"f{i}", created_at=1000) for i in range(5)])
        == ["inserted"] * 5
    )
    assert await page(db) == (["f4", "f3", "f2", "f1", "f0"], 5)
    assert await page(db, descending=False, limit=2, offset=1) == (["f1", "f2"], 5)
    assert await page(db, after="f2") == (["f1", "f0"], 5)
    assert await page(db, after="f2", descending=False) == (["f3", "f4"], 5)
    assert await page(db, offset=10) == ([], 5)
    assert await page(db, project="empty") == ([], 0)
    assert (
        await db.list_live_files(
            "p", now=0, purpose=None, descending=True, after="nope", limit=1, offset=0
        )
        is None
    )


async def test_totals_follow_every_change(db: MetadataStore) -> None:
    await db.insert_files(
        [record(f"b{i}", purpose="batch") for i in range(3)]
        + [record("v", purpose="vision"), record("e", purpose="batch", expires_at=1500)]
        + [record("q", project="q")]
    )
    assert (await page(db, now=1000))[1] == 5
    assert (await page(db, now=1000, purpose="batch"))[1] == 4
    assert await page(db, now=1000, purpose="vision", after="b0", descending=False) == (["v"], 1)
    # An expired file stops counting at once, before any sweep.
    assert (await page(db, now=1500, purpose="batch"))[1] == 3
    await db.mark_deleted("p", "b0", now=1000)
    assert (await page(db, now=1000))[1] == 4
    assert await db.delete_expired_files(now=1500, limit=10) == ["0" * 64]
    assert await db.delete_expired_files(now=1500, limit=10) == []
    assert (await page(db, now=1500))[1] == 3


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
    assert await db.get_live_file("p", "expired", now=1499) == record("expired", expires_at=1500)
    # A cursor stays valid after its file is deleted, but never crosses projects.
    assert await page(db, after="gone", now=1000) == (["expired", "live"], 2)
    assert (
        await db.list_live_files(
            "p", now=0, purpose=None, descending=True, after="other", limit=1, offset=0
        )
        is None
    )
    assert await db.file_exists("gone") and not await db.file_exists("never")
    assert sorted(await db.existing_ids(["gone", "live", "never"])) == ["gone", "live"]


async def test_blob_references_count_files_not_deleted(db: MetadataStore) -> None:
    a, b = "a" * 64, "b" * 64
    await db.insert_files([record("x", sha256=a)])
    await db.insert_files([record("y", sha256=a)])
    await db.insert_files([record("z", sha256=b)])
    await db.mark_deleted("p", "x", now=1)
    assert await db.blobs_in_use([a]) == {a}
    await db.mark_deleted("p", "y", now=1)
    assert await db.blobs_in_use([a]) == set()
    assert await db.blobs_in_use([a, b, "c" * 64]) == {b}


async def test_storage_totals_and_project_usage_count_blobs_once(db: MetadataStore) -> None:
    a, b = "a" * 64, "b" * 64
    await db.insert_files(
        [
            record("x", sha256=a, bytes=10),
            record("y", sha256=a, bytes=10),
            record("z", sha256=b, bytes=3),
            record("w", project="q", sha256=a, bytes=10),
            record("d", project="r", sha256=b, bytes=3),
        ]
    )
    await db.mark_deleted("r", "d", now=1)
    totals = await db.storage_totals()
    assert (totals.files, totals.logical_bytes, totals.blobs, totals.physical_bytes) == (
        4,
        33,
        2,
        13,
    )
    usage = [(u.project, u.files, u.bytes, u.physical_bytes) for u in await db.project_usage()]
    assert usage == [("p", 3, 23, 13), ("q", 1, 10, 10)]


async def test_damage_marks_follow_blobs(db: MetadataStore) -> None:
    a, b = "a" * 64, "b" * 64
    await db.insert_files([record("x", sha256=a), record("y", sha256=a), record("z", sha256=b)])
    assert await db.mark_blob_damaged(a, "bytes missing") == 2
    live = await db.get_live_file("p", "x", now=0)
    assert live is not None and (live.status, live.status_details) == ("error", "bytes missing")
    assert await db.live_digests() == [b]
    assert await db.live_digests(damaged=True) == [a]
    assert await db.clear_blob_damage(a) == 2
    assert await db.clear_blob_damage(a) == 0
    assert sorted(await db.live_digests()) == [a, b]
    assert [f.id for f in await db.live_files("p")] == ["x", "y", "z"]
    assert await db.live_files("q") == []
    assert len(await db.live_files(None)) == 3


async def test_generations_count_from_zero(db: MetadataStore) -> None:
    assert [await db.next_generation("ids") for _ in range(3)] == [0, 1, 2]
    assert await db.next_generation("other") == 0


async def test_keys_are_records(db: MetadataStore) -> None:
    await db.insert_key(KeyRecord("key_1", "0" * 64, "p", "abcd", 5))
    assert await db.revoke_key("key_1", 6)
    assert not await db.revoke_key("key_1", 7)
    assert await db.keys() == [KeyRecord("key_1", "0" * 64, "p", "abcd", 5, 6)]


# --- insert verdicts and quotas -------------------------------------------------------------


async def test_taken_ids_are_refused_alone(db: MetadataStore) -> None:
    await db.insert_files([record("a")])
    verdicts = await db.insert_files([record("b"), record("a"), record("c"), record("b")])
    assert verdicts == ["inserted", "taken", "inserted", "taken"]
    assert [f.id for f in await db.live_files("p")] == ["a", "b", "c"]


async def test_file_quota_counts_earlier_records_of_the_call(db: MetadataStore) -> None:
    await db.insert_files([record("a")])
    batch = [record("b"), record("c"), record("d")]
    assert await db.insert_files(batch, quota=Quota(files=3)) == [
        "inserted",
        "inserted",
        "over_files",
    ]
    # Another project has its own count; deleted files stop counting.
    assert await db.insert_files([record("x", project="q")], quota=Quota(files=1)) == ["inserted"]
    await db.mark_deleted("p", "a", now=1)
    assert await db.insert_files([record("d")], quota=Quota(files=3)) == ["inserted"]
    # Files count before bytes.
    assert await db.insert_files([record("e", bytes=10**9)], quota=Quota(files=3, bytes=5)) == [
        "over_files"
    ]


async def test_byte_quota_counts_parts_of_unfinished_uploads(db: MetadataStore) -> None:
    await db.insert_upload(upload_record("u", project="q"))
    assert await db.insert_part(part("u", 5), now=1, max_project_bytes=0) == "added"
    quota = Quota(bytes=20)
    batch = [record("x", project="q", bytes=10), record("y", project="q", bytes=10)]
    batch.append(record("z", project="q", bytes=1))
    # 5 held by the part, +10 = 15, +10 would be 25: refused, and not counted for the next.
    assert await db.insert_files(batch, quota=quota) == ["inserted", "over_bytes", "inserted"]
    assert await db.usage(["q", "none"]) == {"q": (2, 16), "none": (0, 0)}
    assert await db.usage(["q"], excluding_uploads=["u"]) == {"q": (2, 11)}
    # The upload being completed is left out: its parts are about to become the file.
    big = record("big", project="q", bytes=9)
    assert await db.insert_files([big], quota=quota) == ["over_bytes"]
    assert await db.set_upload_status("u", old="pending", new="completing", owner="i")
    assert await db.insert_files([big], quota=quota) == ["over_bytes"]  # completing: held
    assert await db.insert_files([big], quota=quota, excluding_uploads=["u"]) == ["inserted"]
    # A finished upload's parts hold nothing.
    assert await db.set_upload_status("u", old="completing", new="completed", file_id="big")
    assert await db.usage(["q"]) == {"q": (3, 20)}


async def test_a_taken_record_uses_no_quota(backend: Backend) -> None:
    # "counting ... the records inserted before it": a record refused as `taken` is not one.
    db = backend.db
    await db.insert_files([record("a")])
    assert await db.insert_files([record("a"), record("b")], quota=Quota(files=2)) == [
        "taken",
        "inserted",
    ]


# --- uploads --------------------------------------------------------------------------------


async def test_part_verdicts_in_order(db: MetadataStore) -> None:
    await db.insert_upload(upload_record("u", declared=10))
    assert await db.insert_part(part("nope", 1), now=1, max_project_bytes=0) == "not_pending"
    assert await db.insert_part(part("u", 4), now=1, max_project_bytes=0, max_parts=2) == "added"
    assert await db.insert_part(part("u", 7), now=1, max_project_bytes=0) == "over_declared"
    assert await db.insert_part(part("u", 4), now=1, max_project_bytes=0, max_parts=2) == "added"
    assert (
        await db.insert_part(part("u", 1), now=1, max_project_bytes=0, max_parts=2)
        == "too_many_parts"
    )
    # Project bytes: its live files and the parts of its unfinished uploads.
    await db.insert_files([record("f", bytes=5)])
    await db.insert_upload(upload_record("v", declared=10))
    assert await db.insert_part(part("v", 2), now=1, max_project_bytes=15) == "added"
    assert await db.insert_part(part("v", 1), now=1, max_project_bytes=15) == "over_quota"
    assert await db.insert_part(part("v", 1), now=1, max_project_bytes=16) == "added"
    # Expired (by time) or no longer pending: refused before any other check.
    assert await db.insert_part(part("v", 99), now=10**10, max_project_bytes=1) == "not_pending"
    assert await db.set_upload_status("v", old="pending", new="cancelled")
    assert await db.insert_part(part("v", 1), now=1, max_project_bytes=0) == "not_pending"
    sizes = [p.bytes for p in await db.get_parts("u")]
    assert sizes == [4, 4]


async def test_upload_lifecycle(db: MetadataStore) -> None:
    await db.insert_upload(upload_record("u"))
    await db.insert_upload(upload_record("old"))
    assert await db.get_upload("p", "u") == upload_record("u")
    assert await db.get_upload("q", "u") is None
    added = [part("u", 1), part("u", 2), part("u", 3)]
    for p in added:
        assert await db.insert_part(p, now=1, max_project_bytes=0) == "added"
    assert await db.get_parts("u") == added  # in the order they came
    assert await db.part_tokens_in_use([added[0].token, "f" * 32]) == {added[0].token}
    assert await db.note_failed_completion("u") == 1
    assert await db.note_failed_completion("u") == 2
    assert await db.note_failed_completion("nope") == 0
    assert not await db.set_upload_status("u", old="completing", new="completed")
    assert await db.set_upload_status("u", old="pending", new="completing", owner="i")
    completing = await db.get_upload("p", "u")
    assert completing is not None and completing.status == "completing"
    assert await db.set_upload_status("u", old="completing", new="completed", file_id="file-x")
    done = await db.get_upload("p", "u")
    assert done is not None and (done.status, done.file_id) == ("completed", "file-x")
    assert await db.finished_uploads_with_parts() == ["u"]
    assert sorted(await db.delete_parts("u")) == sorted(p.token for p in added)
    assert await db.finished_uploads_with_parts() == []
    # Expiry: only pending uploads past their time.
    assert await db.expire_uploads(now=10**10 - 1) == []
    assert await db.expire_uploads(now=10**10) == ["old"]
    assert await db.expire_uploads(now=10**10) == []


async def test_abandoned_completions_are_those_of_owners_not_alive(db: MetadataStore) -> None:
    for upload_id in ("mine", "theirs", "ghosts", "waiting"):
        await db.insert_upload(upload_record(upload_id))
    await db.heartbeat("i", now=100, ttl=10)
    await db.heartbeat("j", now=100, ttl=10)
    for upload_id, owner in (("mine", "i"), ("theirs", "j"), ("ghosts", "ghost")):
        assert await db.set_upload_status(upload_id, old="pending", new="completing", owner=owner)

    async def abandoned(instance: str, now: int) -> set[str]:
        return {u.id for u in await db.abandoned_completions(instance, now=now)}

    assert await abandoned("i", 105) == {"ghosts"}  # its owner never had a heartbeat
    assert await abandoned("j", 105) == {"ghosts"}
    # Leaving `completing` (settled, or given back) ends it; a new owner takes it over.
    assert await db.set_upload_status("ghosts", old="completing", new="pending")
    assert await abandoned("i", 105) == set()
    assert await db.set_upload_status("ghosts", old="pending", new="completing", owner="i")
    assert await abandoned("j", 105) == set()


# --- coordination ---------------------------------------------------------------------------


A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64


async def test_leases_have_one_holder_until_they_expire(db: MetadataStore) -> None:
    assert await db.take_lease("gc", "i", now=100, ttl=10)
    assert not await db.take_lease("gc", "j", now=105, ttl=10)
    assert await db.take_lease("gc", "i", now=105, ttl=10)  # renewed: until 115
    assert not await db.take_lease("gc", "j", now=114, ttl=10)
    assert await db.take_lease("other", "j", now=114, ttl=10)  # each lease on its own
    assert await db.take_lease("gc", "j", now=115, ttl=10)  # expired: taken over
    assert not await db.take_lease("gc", "i", now=116, ttl=10)


async def test_a_claimed_blob_is_not_reclaimed(db: MetadataStore) -> None:
    await db.heartbeat("i", now=100, ttl=10)
    await db.heartbeat("j", now=100, ttl=10)
    assert await db.claim_blobs([A], "i", now=100) == set()
    assert await db.begin_reclaim([A, B], "j", now=101) == [B]
    # The insert ends the claim; the file then keeps the blob.
    assert await db.insert_files([record("x", sha256=A)], instance="i") == ["inserted"]
    assert await db.begin_reclaim([A], "j", now=102) == []
    await db.mark_deleted("p", "x", now=102)
    assert await db.begin_reclaim([A], "j", now=102) == [A]
    # Claims are counted: two uploads of the same bytes, one ends, the other still holds.
    assert await db.claim_blobs([C, C], "i", now=103) == set()
    await db.release_claims([C], "i")
    assert await db.begin_reclaim([C], "j", now=103) == []
    await db.release_claims([C], "i")
    assert await db.begin_reclaim([C], "j", now=103) == [C]


async def test_a_blob_being_reclaimed_is_not_claimed(db: MetadataStore) -> None:
    await db.heartbeat("i", now=100, ttl=10)
    await db.heartbeat("j", now=100, ttl=10)
    assert await db.begin_reclaim([A, B], "j", now=100) == [A, B]
    assert await db.claim_blobs([A, C], "i", now=101) == {A}
    assert await db.begin_reclaim([A], "i", now=101) == []  # another live instance has it
    assert await db.begin_reclaim([A], "j", now=101) == [A]  # its own: begun again
    await db.end_reclaim([A], "j")
    assert await db.claim_blobs([A], "i", now=102) == set()
    assert await db.begin_reclaim([A, B], "j", now=102) == [B]


async def test_an_insert_without_its_claim_is_refused(db: MetadataStore) -> None:
    await db.heartbeat("i", now=100, ttl=10)
    assert await db.claim_blobs([B], "i", now=100) == set()
    verdicts = await db.insert_files([record("x", sha256=A), record("y", sha256=B)], instance="i")
    assert verdicts == ["unclaimed", "inserted"]
    assert not await db.file_exists("x")
    # A reclaim begins only for a live instance.
    assert await db.begin_reclaim([D], "ghost", now=100) == []


async def test_an_import_needs_its_claims(db: MetadataStore) -> None:
    await db.heartbeat("i", now=100, ttl=10)
    assert await db.claim_blobs([A], "i", now=100) == set()
    with pytest.raises(StorageBusy):
        await db.import_files([record("x", sha256=A), record("y", sha256=B)], instance="i")
    assert not await db.file_exists("x")
    # Its claims ended all the same: a reclaim may begin.
    await db.heartbeat("j", now=100, ttl=10)
    assert await db.begin_reclaim([A], "j", now=100) == [A]
    await db.end_reclaim([A], "j")
    assert await db.claim_blobs([A], "i", now=101) == set()
    assert await db.import_files([record("x", sha256=A)], instance="i") == []
    assert await db.file_exists("x")


# --- transactions and neutral errors ------------------------------------------------------


async def _refuse(backend: Backend, table: str) -> None:
    """From now on, deleting a row of `table` fails (as a full disk or a bug would midway)."""
    if backend.name == "sqlite":
        await backend.sql(
            f"CREATE TRIGGER refuse_{table} BEFORE DELETE ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    else:
        await backend.sql(
            "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused'; END $$;"
            f"CREATE TRIGGER refuse_{table} BEFORE DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


async def _allow(backend: Backend, table: str) -> None:
    on = f" ON {table}" if backend.name == "postgres" else ""
    await backend.sql(f"DROP TRIGGER refuse_{table}{on}")


async def _upload_with_part(db: MetadataStore) -> None:
    await db.insert_upload(upload_record("u", declared=2))
    added = await db.insert_part(
        PartRecord("part", "u", "a" * 32, 2, 1), now=1, max_project_bytes=0
    )
    assert added == "added"


async def test_delete_everything_is_all_or_nothing(backend: Backend) -> None:
    db = backend.db
    await db.insert_files([record("a"), record("b", project="q")])
    await _upload_with_part(db)
    # The parts go first, then the uploads: refusing the second step must undo the first.
    await _refuse(backend, "uploads")
    with pytest.raises(backend.trigger_error):
        await db.delete_everything(None)
    assert [p.token for p in await db.get_parts("u")] == ["a" * 32]
    assert len(await db.live_files(None)) == 2
    # The writer is usable afterwards (no transaction left open).
    await db.insert_files([record("c")])
    assert len(await db.live_files(None)) == 3
    await _allow(backend, "uploads")
    assert await db.delete_everything("q") == (1, [])
    assert await db.delete_everything(None) == (2, ["a" * 32])
    assert await db.live_files(None) == []


async def test_purge_deleted_is_all_or_nothing(backend: Backend) -> None:
    db = backend.db
    await db.insert_files([record("gone")])
    await db.mark_deleted("p", "gone", now=5)
    await _upload_with_part(db)
    assert await db.set_upload_status("u", old="pending", new="cancelled")
    await _refuse(backend, "uploads")
    with pytest.raises(backend.trigger_error):
        await db.purge_deleted(before=10**10)
    assert await db.file_exists("gone")  # the first statement was rolled back
    await _allow(backend, "uploads")
    assert await db.purge_deleted(before=5) == 0  # deleted at 5: not before 5
    assert await db.purge_deleted(before=10**10) == 1
    assert not await db.file_exists("gone")
    assert await db.get_upload("p", "u") is None


async def test_import_is_all_or_nothing(backend: Backend) -> None:
    db = backend.db
    await db.insert_files([record("taken")])
    # Many rows (several statements inside the transaction); a duplicate near the end.
    rows = [record(f"f{i}") for i in range(1200)]
    with pytest.raises(backend.integrity_error):
        await db.import_files([*rows, record("f3")])
    assert not await db.file_exists("f0")
    assert await db.import_files([record("new"), record("taken")]) == ["taken"]
    assert not await db.file_exists("new")
    assert await db.import_files(rows) == []
    assert len(await db.live_files("p")) == 1201


async def test_a_cancelled_transaction_stays_cancelled_and_leaves_no_transaction_open(
    db: MetadataStore,
) -> None:
    # Cancelled at every point of BEGIN ... COMMIT: the caller sees CancelledError (never a
    # database error in its place, which a background loop would swallow and go on), and the
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


# --- SQLite only ----------------------------------------------------------------------------


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[SqliteMetadata]:
    database = await SqliteMetadata.open(tmp_path / DB_NAME)
    yield database
    await database.close()


async def test_sqlite_migrations_set_the_version_and_run_once(tmp_path: Path) -> None:
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


async def test_sqlite_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew):
        await SqliteMetadata.open(path)


async def test_sqlite_counters_agree_with_a_full_count(
    sqlite_db: SqliteMetadata, tmp_path: Path
) -> None:
    db = sqlite_db
    await db.insert_files(
        [record(f"b{i}", purpose="batch") for i in range(3)]
        + [record("v", purpose="vision"), record("e", purpose="batch", expires_at=1500)]
        + [record("q", project="q")]
    )
    await db.mark_deleted("p", "b0", now=1000)
    await db.delete_expired_files(now=1500, limit=10)
    # Counters agree with a full count, also for rows removed outright.
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


async def test_sqlite_counters_are_built_for_an_existing_database(tmp_path: Path) -> None:
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


async def test_sqlite_a_lock_held_too_long_is_storage_busy(
    sqlite_db: SqliteMetadata, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / DB_NAME, isolation_level=None) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            # The background connection does not wait: busy at once, decided by the error code.
            with pytest.raises(StorageBusy):
                await sqlite_db.delete_expired_files(now=0, limit=1)
        finally:
            other.execute("ROLLBACK")


def test_sqlite_neutral_errors_come_from_error_codes_not_messages() -> None:
    from filesd.storage.sqlite import neutral_error

    def error(code: int, message: str) -> sqlite3.Error:
        e = sqlite3.OperationalError(message)
        e.sqlite_errorcode = code
        return e

    assert isinstance(neutral_error(error(sqlite3.SQLITE_FULL, "whatever")), StorageFull)
    assert isinstance(neutral_error(error(sqlite3.SQLITE_BUSY, "x")), StorageBusy)
    assert isinstance(neutral_error(error(sqlite3.SQLITE_LOCKED, "x")), StorageBusy)
    assert isinstance(neutral_error(error(517, "x")), StorageBusy)  # SQLITE_BUSY_SNAPSHOT
    # A message that merely says "full" or "locked" is not one of them.
    assert neutral_error(error(sqlite3.SQLITE_ERROR, "table full of locked rows")) is None


async def test_sqlite_is_not_shared(sqlite_db: SqliteMetadata) -> None:
    assert not sqlite_db.shared
    assert await sqlite_db.vanished() is None


# --- heartbeats running out (both backends) ---------------------------------------------------


async def test_completions_are_abandoned_when_heartbeats_run_out(
    backend: Backend,
) -> None:
    db = backend.db
    for upload_id in ("mine", "theirs"):
        await db.insert_upload(upload_record(upload_id))
    await db.heartbeat("i", now=100, ttl=10)
    await db.heartbeat("j", now=100, ttl=10)
    for upload_id, owner in (("mine", "i"), ("theirs", "j")):
        assert await db.set_upload_status(upload_id, old="pending", new="completing", owner=owner)

    async def abandoned(instance: str, now: int) -> set[str]:
        return {u.id for u in await db.abandoned_completions(instance, now=now)}

    assert await abandoned("i", 109) == set()
    assert await abandoned("i", 110) == {"theirs"}  # j's heartbeat ran out (until 110)
    assert await abandoned("j", 110) == {"mine"}
    await db.heartbeat("j", now=110, ttl=10)
    assert await abandoned("i", 115) == set()


async def test_a_dead_instance_reclaim_gives_way_to_a_claim(
    backend: Backend,
) -> None:
    db = backend.db
    await db.heartbeat("i", now=100, ttl=10)
    await db.heartbeat("j", now=100, ttl=10)
    assert await db.begin_reclaim([B], "j", now=100) == [B]
    assert await db.claim_blobs([B], "i", now=109) == {B}
    assert await db.claim_blobs([B], "i", now=110) == set()  # j died at 110: given up
    await db.heartbeat("i", now=110, ttl=10)
    await db.heartbeat("j", now=110, ttl=10)
    assert await db.begin_reclaim([B], "j", now=111) == []  # i's claim holds it now
    assert await db.begin_reclaim([D], "j", now=120) == []  # j's own heartbeat ran out


async def test_a_dead_instance_claim_is_dropped_and_its_insert_fenced(
    backend: Backend,
) -> None:
    db = backend.db
    await db.heartbeat("i", now=100, ttl=10)
    await db.heartbeat("j", now=100, ttl=10)
    assert await db.claim_blobs([A, B, C], "i", now=100) == set()
    assert await db.begin_reclaim([A], "j", now=105) == []  # i is alive
    await db.heartbeat("j", now=120, ttl=10)
    # i's heartbeat ran out at 110: its claim no longer counts, and is dropped.
    assert await db.begin_reclaim([A, C], "j", now=120) == [A, C]
    # i was only paused; it comes back and tries to insert rows for blobs being deleted.
    await db.heartbeat("i", now=121, ttl=10)
    verdicts = await db.insert_files([record("x", sha256=A), record("y", sha256=B)], instance="i")
    assert verdicts == ["unclaimed", "inserted"]
    assert not await db.file_exists("x")
    with pytest.raises(StorageBusy):
        await db.import_files([record("z", sha256=C)], instance="i")
    assert not await db.file_exists("z")


def test_postgres_neutral_errors_come_from_sqlstates_not_messages() -> None:
    from filesd.storage.postgres import neutral_error

    assert isinstance(neutral_error(asyncpg.DiskFullError("whatever")), StorageFull)
    assert isinstance(neutral_error(asyncpg.QueryCanceledError("x")), StorageBusy)
    assert isinstance(neutral_error(asyncpg.LockNotAvailableError("x")), StorageBusy)
    assert isinstance(neutral_error(asyncpg.SerializationError("x")), StorageBusy)
    assert isinstance(neutral_error(asyncpg.DeadlockDetectedError("x")), StorageBusy)
    assert isinstance(neutral_error(asyncpg.ConnectionDoesNotExistError("x")), StorageBusy)
    assert isinstance(neutral_error(ConnectionResetError()), StorageBusy)
    # A message that merely says "disk full" or "timeout" is not one of them.
    assert neutral_error(asyncpg.PostgresSyntaxError("disk full: statement timeout")) is None
    assert neutral_error(asyncpg.UniqueViolationError("x")) is None


# --- PostgreSQL only ------------------------------------------------------------------------


async def test_postgres_migrations_run_once_when_instances_start_together(
    postgres_dsn: str,
) -> None:
    stores = await asyncio.gather(*(PostgresMetadata.open(postgres_dsn) for _ in range(4)))
    try:
        assert [await s.schema_version() for s in stores] == [len(PG_MIGRATIONS)] * 4
        assert await stores[0].insert_files([record("a")]) == ["inserted"]
        assert await stores[3].get_live_file("p", "a", now=0) is not None
        assert stores[0].shared and await stores[0].vanished() is None
    finally:
        for store in stores:
            await store.close()
    store = await PostgresMetadata.open(postgres_dsn)  # reopening keeps the rows
    try:
        assert await store.file_exists("a")
    finally:
        await store.close()


async def test_postgres_a_newer_schema_is_refused(postgres_dsn: str) -> None:
    store = await PostgresMetadata.open(postgres_dsn)
    await store.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", len(PG_MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(SchemaTooNew):
        await PostgresMetadata.open(postgres_dsn)


async def test_postgres_a_lock_held_too_long_is_storage_busy(postgres_dsn: str) -> None:
    store = await PostgresMetadata.open(postgres_dsn, statement_timeout_ms=300)
    other = await asyncpg.connect(postgres_dsn)
    try:
        # Another instance is inserting into project p (it holds the project's lock).
        await other.execute("SELECT pg_advisory_lock($1)", lock_key("project", "p"))
        with pytest.raises(StorageBusy):
            await store.insert_files([record("a")])
        assert await store.insert_files([record("b", project="q")]) == ["inserted"]
        await other.execute("SELECT pg_advisory_unlock_all()")
        assert await store.insert_files([record("a")]) == ["inserted"]
    finally:
        await other.close()
        await store.close()


async def test_postgres_a_part_never_lands_beside_a_status_change(postgres_dsn: str) -> None:
    # Another instance moves the upload into `completing` (and will read its parts next): a
    # part arriving meanwhile waits for that change, then is refused; it is never added after
    # the completion read the parts.
    store = await PostgresMetadata.open(postgres_dsn)
    other = await asyncpg.connect(postgres_dsn)
    try:
        await store.insert_upload(upload_record("u"))
        completing = other.transaction()
        await completing.start()
        await other.execute("UPDATE uploads SET status = 'completing' WHERE id = 'u'")
        adding = asyncio.create_task(store.insert_part(part("u", 1), now=1, max_project_bytes=0))

        async def part_waits() -> bool:
            waiting = await other.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return adding.done() or waiting > 0

        await wait_until(part_waits, what="the part waits for the status change")
        await completing.commit()
        assert await adding == "not_pending"
        assert await store.get_parts("u") == []
    finally:
        await other.close()
        await store.close()


async def test_postgres_a_lease_taken_meanwhile_by_an_earlier_release_is_not_overwritten(
    postgres_dsn: str,
) -> None:
    # During a rolling upgrade an instance of an earlier release takes leases with one
    # statement and none of this release's advisory locks: between reading an expired lease
    # and writing it, this instance must not overwrite what that one wrote (two holders).
    store = await PostgresMetadata.open(postgres_dsn)
    other = await asyncpg.connect(postgres_dsn)
    try:
        assert await store.take_lease("upkeep", "a", now=100, ttl=10)
        earlier = other.transaction()
        await earlier.start()
        await other.execute("SELECT * FROM leases WHERE name = 'upkeep' FOR UPDATE")
        taking = asyncio.create_task(store.take_lease("upkeep", "b", now=200, ttl=10))

        async def take_waits() -> bool:
            waiting = await other.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return taking.done() or waiting > 0

        await wait_until(take_waits, what="the take waits for the earlier release's write")
        await other.execute(
            "UPDATE leases SET holder = 'earlier', until = 300 WHERE name = 'upkeep'"
        )
        await earlier.commit()
        assert await taking is False
        holder = await other.fetchrow("SELECT holder, until FROM leases WHERE name = 'upkeep'")
        assert tuple(holder) == ("earlier", 300)
        assert await store.take_lease("upkeep", "b", now=300, ttl=10)  # expired: taken over
    finally:
        await other.close()
        await store.close()


async def test_postgres_a_lost_connection_is_storage_busy_then_recovers(postgres_dsn: str) -> None:
    # The server ends filesd's sessions (a restart, a failover, an operator): a call meeting
    # the dead connection is a StorageBusy (a 503 to retry; never the driver's own error),
    # and the next one gets a new connection.
    store = await PostgresMetadata.open(postgres_dsn, max_connections=1)
    other = await asyncpg.connect(postgres_dsn)
    try:
        await store.insert_files([record("a")])
        for _ in range(5):
            ended = await other.fetchval(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'filesd' AND datname = current_database()"
            )
            assert ended == 1
            with contextlib.suppress(StorageBusy):  # or the pool noticed first and reconnected
                await store.get_live_file("p", "a", now=0)
            assert await store.get_live_file("p", "a", now=0) is not None
    finally:
        await other.close()
        await store.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("postgresql://filesd:{pw}@127.0.0.1:{closed}/filesd", "connection refused"),
        ("postgresql://filesd:{pw}@no-such-host.invalid:5432/filesd", "unknown host"),
        ("postgresql://postgres:{pw}@127.0.0.1:{port}/no_such_db", "does not exist"),
        ("postgresql://nobody:{pw}@127.0.0.1:{port}/postgres", "refused the credentials"),
    ],
    ids=["refused", "unknown-host", "missing-database", "unknown-user"],
)
async def test_postgres_unusable_databases_are_named_without_the_password(
    postgres_server: PostgresServer, dsn: str, says: str
) -> None:
    password = "s3cret-pass"
    url = dsn.format(pw=password, closed=_closed_port(), port=postgres_server.port)
    with pytest.raises(StorageUnavailable) as caught:
        await PostgresMetadata.open(url)
    assert caught.value.setting == "storage.database"
    assert says in str(caught.value)
    assert str(caught.value).startswith("storage.database: ")
    assert password not in str(caught.value)
    assert caught.value.__cause__ is None  # nothing chained that could print the URL


@pytest.fixture
async def password_role(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A role that must give its password (`scram-sha-256` in pg_hba.conf, for this role
    alone: the rest of the cluster stays `trust`); yields its name."""
    role = f"pw_{os.getpid()}"
    hba = postgres_server.data / "pg_hba.conf"
    original = hba.read_text()
    admin = await asyncpg.connect(postgres_server.dsn())
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'the-right-password'")
        hba.write_text(f"host all {role} {postgres_server.host}/32 scram-sha-256\n{original}")
        await admin.execute("SELECT pg_reload_conf()")
        yield role
    finally:
        hba.write_text(original)
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


# Passwords the old masking (every occurrence replaced by "***") garbled the server's message
# with, telling a reader the password: parts of `role "filesd" does not exist`, of `password
# authentication failed for user ...`, and the user name itself.
PASSWORDS = ["x", "e", "ole", "filesd", "s3cret-pass", "pw_"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("given", ["in-url", "PGPASSWORD"])
async def test_postgres_refused_credentials_read_as_the_server_said_them(
    postgres_server: PostgresServer,
    password_role: str,
    monkeypatch: pytest.MonkeyPatch,
    password: str,
    given: str,
) -> None:
    host, port = postgres_server.host, postgres_server.port
    in_url = f":{password}" if given == "in-url" else ""
    if given == "PGPASSWORD":
        monkeypatch.setenv("PGPASSWORD", password)
    # No such role; a role whose password is another. The expected messages are the server's
    # words and the URL's parts, whatever the password: nothing of it, nothing masked.
    for user, says in [
        ("filesd", 'SQLSTATE 28000: role "filesd" does not exist'),
        (
            password_role,
            f'SQLSTATE 28P01: password authentication failed for user "{password_role}"',
        ),
    ]:
        url = f"postgresql://{user}{in_url}@{host}:{port}/postgres"
        with pytest.raises(StorageUnavailable) as caught:
            await PostgresMetadata.open(url)
        assert str(caught.value) == (
            f"storage.database: PostgreSQL {user}@{host}:{port}, database 'postgres': "
            f"the server refused the credentials ({says})"
        )
        assert "***" not in str(caught.value)
        assert caught.value.__cause__ is None


async def test_postgres_urls_the_driver_cannot_use_are_named_without_its_words(
    postgres_server: PostgresServer,
) -> None:
    # The driver quotes the URL's pieces in such errors: here a piece of an unencoded password.
    host, port = postgres_server.host, postgres_server.port
    url = f"postgresql://postgres@{host}:{port}/postgres?password=a&s3cret"
    with pytest.raises(StorageUnavailable) as caught:
        await PostgresMetadata.open(url)
    assert str(caught.value) == (
        f"storage.database: PostgreSQL postgres@{host}:{port}, database 'postgres': the "
        "PostgreSQL driver cannot use this URL (ValueError; its message is not shown, as it "
        "may quote the URL): check its parameters"
    )


def test_postgres_refused_at_start_up_exits_2_with_the_servers_words(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The review's case: `PGPASSWORD=x filesd serve` read `role "filesd" does not e***ist`."""
    host, port = postgres_server.host, postgres_server.port
    config = tmp_path / "filesd.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'database = "postgresql://filesd@{host}:{port}/postgres"\n'
    )
    started = subprocess.run(
        [sys.executable, "-m", "filesd", "serve", "--port", "0", "--config", str(config)],
        env={**os.environ, "PGPASSWORD": "x"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 2, started.stdout + started.stderr
    assert started.stderr == (
        f"filesd: configuration from {config} (--config)\n"
        f"filesd: storage.database: PostgreSQL filesd@{host}:{port}, database 'postgres': the "
        'server refused the credentials (SQLSTATE 28000: role "filesd" does not exist)\n'
    )


async def _stores(dsn: str, count: int) -> list[PostgresMetadata]:
    return list(await asyncio.gather(*(PostgresMetadata.open(dsn) for _ in range(count))))


@pytest.mark.slow
async def test_postgres_after_paging_never_skips_nor_repeats_while_instances_insert(
    postgres_dsn: str,
) -> None:
    # Two instances (two pools) insert into one project, 20 writers at once; a third pages
    # ascending by `after` over and over. A row that commits after a later one would be
    # skipped by a reader that passed it already: the per-project lock makes rows commit in
    # `seq` order.
    one, two, reader = await _stores(postgres_dsn, 3)
    writers, inserts = 20, 30
    seen: list[str] = []
    done = asyncio.Event()

    async def write(w: int) -> None:
        # As an upload does: claim the blob, insert (which ends the claim in its transaction).
        store, instance = (one, "i") if w % 2 else (two, "j")
        digest = f"{w:064x}"
        for i in range(inserts):
            assert await store.claim_blobs([digest], instance, now=0) == set()
            verdicts = await store.insert_files(
                [record(f"w{w}-{i}", sha256=digest)], instance=instance
            )
            assert verdicts == ["inserted"]

    async def read() -> None:
        after: str | None = None
        while True:
            finished = done.is_set()
            kw = {"now": 0, "purpose": None, "descending": False, "offset": 0, "limit": 7}
            found = await reader.list_live_files("p", after=after, **kw)  # type: ignore[arg-type]
            assert found is not None
            rows = found[0]
            seen.extend(r.id for r in rows)
            if rows:
                after = rows[-1].id
            elif finished:
                return

    try:
        reading = asyncio.create_task(read())
        await asyncio.gather(*(write(w) for w in range(writers)))
        done.set()
        await reading
        everything = [f.id for f in await reader.live_files("p")]
        assert len(everything) == writers * inserts
        assert len(seen) == len(set(seen)), "a file was listed twice"
        assert seen == everything, f"skipped: {sorted(set(everything) - set(seen))[:10]}"
    finally:
        for store in (one, two, reader):
            await store.close()


@pytest.mark.slow
async def test_postgres_quotas_hold_across_instances(postgres_dsn: str) -> None:
    # Files and parts race on two instances against one project's limits: never over.
    one, two = await _stores(postgres_dsn, 2)
    limit_files, limit_bytes = 25, 60
    quota = Quota(files=limit_files, bytes=limit_bytes)
    await one.insert_upload(upload_record("u", declared=10**6))
    added: list[str] = []

    async def write(w: int) -> None:
        store = one if w % 2 else two
        for i in range(6):
            if w % 4 == 3:  # some writers add parts instead of files
                verdict = await store.insert_part(
                    part("u", 2), now=1, max_project_bytes=limit_bytes
                )
                assert verdict in ("added", "over_quota")
            else:
                [result] = await store.insert_files([record(f"w{w}-{i}", bytes=1)], quota=quota)
                assert result in ("inserted", "over_files", "over_bytes")
                if result == "inserted":
                    added.append(f"w{w}-{i}")

    try:
        await asyncio.gather(*(write(w) for w in range(20)))
        files, held = (await one.usage(["p"]))["p"]
        assert files == len(added) <= limit_files
        assert held <= limit_bytes
        assert files == limit_files or held > limit_bytes - 2  # the limits were reached
    finally:
        for store in (one, two):
            await store.close()


@pytest.mark.slow
async def test_postgres_claims_and_reclaims_race_safely_across_instances(
    postgres_dsn: str,
) -> None:
    # One instance claims blobs and inserts (then deletes) files of them, over and over; two
    # others keep reclaiming them. While a reclaim is under way (its blob being deleted), no
    # claim may be held on that blob and no file not deleted may refer to it.
    one, two, three = await _stores(postgres_dsn, 3)
    digests = [f"{n:064x}" for n in range(2)]
    now = 1000
    for store, instance in ((one, "i"), (two, "j"), (three, "k")):
        await store.heartbeat(instance, now=now, ttl=10**6)
    violations: list[str] = []
    reclaims = 0
    stop = asyncio.Event()

    async def uploader(n: int) -> None:
        for i in range(40):
            digest = digests[(n + i) % len(digests)]
            if await one.claim_blobs([digest], "i", now=now):
                continue  # being reclaimed: an upload would retry
            file_id = f"u{n}-{i}"
            [verdict] = await one.insert_files([record(file_id, sha256=digest)], instance="i")
            assert verdict == "inserted"  # i is alive: its claim cannot have been dropped
            await one.mark_deleted("p", file_id, now=now)

    async def reclaimer(store: PostgresMetadata, instance: str) -> None:
        watcher = await asyncpg.connect(postgres_dsn)
        try:
            await reclaim(store, instance, watcher)
        finally:
            await watcher.close()

    async def reclaim(store: PostgresMetadata, instance: str, watcher: asyncpg.Connection) -> None:
        nonlocal reclaims
        while not stop.is_set():
            begun = await store.begin_reclaim(digests, instance, now=now)
            for digest in begun:  # "deleting" the blob: look at what refers to it meanwhile
                claims = await watcher.fetchval(
                    "SELECT COUNT(*) FROM blob_claims WHERE sha256 = $1", digest
                )
                if claims or await store.blobs_in_use([digest]):
                    violations.append(f"{instance} reclaims {digest[-1]} while it is in use")
            reclaims += len(begun)
            await store.end_reclaim(begun, instance)

    try:
        reclaiming = [
            asyncio.create_task(reclaimer(two, "j")),
            asyncio.create_task(reclaimer(three, "k")),
        ]
        await asyncio.gather(*(uploader(n) for n in range(8)))
        stop.set()
        await asyncio.gather(*reclaiming)
        assert violations == []
        assert reclaims > 0
    finally:
        for store in (one, two, three):
            await store.close()


async def test_only_its_own_completion_is_moved_on(backend: Backend) -> None:
    # A completion settled by another instance meanwhile, then started again with another
    # file, is not the first attempt's to finish (nor to reopen).
    db = backend.db
    await db.insert_upload(upload_record("u"))
    assert await db.set_upload_status("u", old="pending", new="completing", file_id="f1", owner="i")
    assert await db.set_upload_status("u", old="completing", new="pending", attempt="f1")
    assert await db.set_upload_status("u", old="pending", new="completing", file_id="f2", owner="j")
    for new in ("completed", "pending"):
        assert not await db.set_upload_status(
            "u", old="completing", new=new, file_id="f1", attempt="f1"
        )
    assert await db.set_upload_status(
        "u", old="completing", new="completed", file_id="f2", attempt="f2"
    )


async def test_a_file_completing_an_upload_settled_elsewhere_is_abandoned(backend: Backend) -> None:
    # Instance i took the upload into completing with f1, then looked dead: another settled
    # it and a new completion started with f2. i's file must not be stored, f2's must, and the
    # upload becomes completed in the same transaction as f2's row.
    db = backend.db
    await db.insert_upload(upload_record("u"))
    assert await db.set_upload_status("u", old="pending", new="completing", file_id="f1", owner="i")
    assert await db.set_upload_status("u", old="completing", new="pending", attempt="f1")
    assert await db.set_upload_status("u", old="pending", new="completing", file_id="f2", owner="j")
    assert await db.insert_files([record("f1")], completions={"f1": "u"}) == ["abandoned"]
    assert not await db.file_exists("f1")
    assert await db.insert_files([record("f2")], completions={"f2": "u"}) == ["inserted"]
    upload = await db.get_upload("p", "u")
    assert upload is not None and (upload.status, upload.file_id) == ("completed", "f2")


# --- PostgreSQL counters (file_counts) --------------------------------------------------------

Counts = dict[tuple[str, str], tuple[int, int]]


async def _pg_counts(dsn: str) -> tuple[Counts, Counts]:
    """(the counters, a full count of the live rows), per project and purpose; counter rows
    left at zero are left out."""
    conn = await asyncpg.connect(dsn)
    try:
        kept = await conn.fetch(
            "SELECT project, purpose, files, bytes FROM file_counts WHERE files <> 0 OR bytes <> 0"
        )
        counted = await conn.fetch(
            "SELECT project, purpose, COUNT(*), SUM(bytes) FROM files WHERE deleted_at IS NULL "
            "GROUP BY project, purpose"
        )
    finally:
        await conn.close()
    return (
        {(r[0], r[1]): (int(r[2]), int(r[3])) for r in kept},
        {(r[0], r[1]): (int(r[2]), int(r[3])) for r in counted},
    )


async def _pg_exact(dsn: str) -> Counts:
    kept, counted = await _pg_counts(dsn)
    assert kept == counted
    return kept


async def test_postgres_counters_follow_every_write_path(postgres_dsn: str) -> None:
    dsn = postgres_dsn
    db = await PostgresMetadata.open(dsn)
    other = await asyncpg.connect(dsn)
    try:
        inserted = await db.insert_files(
            [record(f"b{i}", purpose="batch", bytes=10) for i in range(3)]
            + [record("v", purpose="vision", bytes=7), record("b0", purpose="batch")]
            + [record("e", purpose="batch", bytes=5, expires_at=1500)]
            + [record("x", bytes=3)],
            quota=Quota(files=5),
        )
        # A taken id and a record over the quota leave the counters alone.
        assert inserted == ["inserted"] * 4 + ["taken", "inserted", "over_files"]
        assert await _pg_exact(dsn) == {("p", "batch"): (4, 35), ("p", "vision"): (1, 7)}
        assert await db.import_files([record("i", purpose="batch"), record("v")]) == ["v"]
        assert await db.import_files([record("i", purpose="batch", bytes=2)]) == []
        assert (await _pg_exact(dsn))[("p", "batch")] == (5, 37)
        assert await db.usage(["p", "none"]) == {"p": (6, 44), "none": (0, 0)}

        # Soft deletes, once each: by the API, by expiry (the listing stops counting an
        # expired file at once; quotas, as in SQLite, only once it is swept).
        assert await db.mark_deleted("p", "b0", now=1000) is not None
        assert await db.mark_deleted("p", "b0", now=1000) is None
        assert (await page(db, now=1500))[1] == 4
        assert (await db.usage(["p"]))["p"] == (5, 34)
        assert await db.delete_expired_files(now=1500, limit=10) == ["0" * 64]
        assert await db.delete_expired_files(now=1500, limit=10) == []
        assert await _pg_exact(dsn) == {("p", "batch"): (3, 22), ("p", "vision"): (1, 7)}
        assert (await page(db, now=1500))[1] == 4

        # Updates that change no liveness touch nothing; purging removes deleted rows only.
        assert await db.mark_blob_damaged("0" * 64, "gone") == 4
        assert await db.clear_blob_damage("0" * 64) == 4
        assert await db.purge_deleted(before=10**10) == 2
        assert await _pg_exact(dsn) == {("p", "batch"): (3, 22), ("p", "vision"): (1, 7)}

        # SQL written by hand keeps them too: an update moving live bytes between counters,
        # a live row removed outright.
        await other.execute("UPDATE files SET purpose = 'vision', bytes = 1 WHERE id = 'b1'")
        await other.execute("DELETE FROM files WHERE id = 'b2'")
        assert await _pg_exact(dsn) == {("p", "batch"): (1, 2), ("p", "vision"): (2, 8)}

        await db.insert_files([record("r", project="q", bytes=4)])
        assert await db.delete_everything("q") == (1, [])
        assert await _pg_exact(dsn) == {("p", "batch"): (1, 2), ("p", "vision"): (2, 8)}
        assert await db.delete_everything(None) == (3, [])
        assert await _pg_exact(dsn) == {}
        assert await db.usage(["p", "q"]) == {"p": (0, 0), "q": (0, 0)}

        await db.insert_files([record("t")])
        await other.execute("TRUNCATE files")
        assert await other.fetchval("SELECT COUNT(*) FROM file_counts") == 0
        assert await db.insert_files([record("t")]) == ["inserted"]
        assert await _pg_exact(dsn) == {("p", "assistants"): (1, 1)}
    finally:
        await other.close()
        await db.close()


async def test_postgres_counters_are_built_for_an_existing_database(postgres_dsn: str) -> None:
    # A database at schema 1 (before the counters), with files in it, live and deleted.
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            "CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 0), "
            "version INTEGER NOT NULL); INSERT INTO schema_version VALUES (0, 1);"
        )
        await conn.execute(PG_MIGRATIONS[0])
        await conn.execute(
            "INSERT INTO files (id, project, filename, purpose, bytes, sha256, created_at, "
            "deleted_at) SELECT 'f' || n, 'p', 'f', CASE WHEN n % 2 = 0 THEN 'batch' "
            "ELSE 'vision' END, n, $1, 1, CASE WHEN n % 5 = 0 THEN 2 END "
            "FROM generate_series(1, 100) AS n",
            "0" * 64,
        )
    finally:
        await conn.close()
    db = await PostgresMetadata.open(postgres_dsn)
    try:
        assert await db.schema_version() == len(PG_MIGRATIONS)
        # 80 live: 40 of each purpose; bytes: 1..100 less the multiples of 5.
        assert await _pg_exact(postgres_dsn) == {
            ("p", "batch"): (40, 2550 - 550),
            ("p", "vision"): (40, 2500 - 500),
        }
        assert (await page(db))[1] == 80
        assert (await page(db, purpose="vision"))[1] == 40
        assert await db.usage(["p"]) == {"p": (80, 4000)}
    finally:
        await db.close()


@pytest.mark.slow
async def test_postgres_counters_stay_exact_while_instances_insert_and_delete(
    postgres_dsn: str,
) -> None:
    # Two instances hammer one project (and a second one): batches of files of several
    # purposes (some under a quota, some expiring), imports, deletes racing the inserts of the
    # very files they delete, expiry sweeps racing those deletes, purges, and resets of the
    # second project racing its inserts. Nothing may fail (no deadlock between counter rows),
    # and at the end the counters are a full count of the rows.
    one, two = await _stores(postgres_dsn, 2)
    stores = (one, two)
    purposes = ("assistants", "batch", "vision")
    done = asyncio.Event()
    deleted: list[str] = []

    def batch(w: int, i: int) -> list[FileRecord]:
        return [
            record(
                f"w{w}-{i}-{k}",
                project="q" if k == 3 else "p",
                purpose=purposes[(w + i + k) % 3],
                bytes=1 + (w * 7 + i * 3 + k) % 11,
                expires_at=1500 if (i + k) % 4 == 0 else None,
            )
            for k in range(4)
        ]

    inserting = [asyncio.Event() for _ in range(8)]  # set once writer w has finished

    async def insert(w: int) -> None:
        store = stores[w % 2]
        for i in range(25):
            records = batch(w, i)
            if i % 5 == 4:
                assert await store.import_files(records) == []
            else:
                quota = Quota(files=10**6) if i % 2 else Quota()
                verdicts = await store.insert_files(records, quota=quota)
                assert verdicts == ["inserted"] * 4
        inserting[w].set()

    async def delete(w: int) -> None:
        # Deletes two of each batch of writer w on the other instance, pass after pass while
        # the writer inserts them, at a time before their expiry so they race the sweeps too.
        store = stores[(w + 1) % 2]
        last = False
        while not last:
            last = inserting[w].is_set()
            for i in range(25):
                for k in range(2):
                    found = await store.mark_deleted("p", f"w{w}-{i}-{k}", now=1000)
                    if found is not None:
                        deleted.append(found.id)

    async def sweep(store: PostgresMetadata) -> None:
        while not done.is_set():
            await store.delete_expired_files(now=1500, limit=7)
            await store.purge_deleted(before=10**10)
            await store.delete_everything("q")
            await asyncio.sleep(0)

    try:
        sweeping = [asyncio.create_task(sweep(s)) for s in stores]
        await asyncio.gather(*(insert(w) for w in range(8)), *(delete(w) for w in range(8)))
        done.set()
        await asyncio.gather(*sweeping)
        kept = await _pg_exact(postgres_dsn)
        assert deleted, "no delete met a file"
        live = {f.id for f in await one.live_files("p")}
        assert sum(files for (project, _), (files, _) in kept.items() if project == "p") == len(
            live
        )
        assert not live & set(deleted)
        expired = await one.delete_expired_files(now=1500, limit=10**6)
        assert (await page(one, now=1000))[1] == len(live) - len(expired)
        await _pg_exact(postgres_dsn)
    finally:
        for store in stores:
            await store.close()


# --- PostgreSQL point reads ---------------------------------------------------------------


async def _waiting_on_locks(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name = 'filesd' AND datname = current_database()"
        )
    )


async def test_postgres_point_reads_waiting_together_go_out_together(postgres_dsn: str) -> None:
    # While two reads are held up (another session locks the table), forty more arrive: they
    # take no connection of their own, and go out in one statement once the first are back,
    # each with its own answer (project, deletion and expiry as a single read decides them).
    store = await PostgresMetadata.open(postgres_dsn)
    other = await asyncpg.connect(postgres_dsn)
    # Watches from outside the locking transaction (which sees one snapshot of the activity).
    watcher = await asyncpg.connect(postgres_dsn)
    try:
        await store.insert_files(
            [record("a"), record("b"), record("c", expires_at=1500), record("d", project="q")]
        )
        await store.mark_deleted("p", "b", now=1000)
        expected = {
            ("p", "a", 1000): record("a"),
            ("p", "b", 1000): None,
            ("p", "c", 1000): record("c", expires_at=1500),
            ("p", "c", 1500): None,
            ("p", "d", 1000): None,
            ("q", "d", 1000): record("d", project="q"),
            ("p", "nope", 1000): None,
        }
        asks = [key for _ in range(6) for key in expected]
        locked = other.transaction()
        await locked.start()
        await other.execute("LOCK TABLE files IN ACCESS EXCLUSIVE MODE")
        first = [
            asyncio.create_task(store.get_live_file("p", "a", now=1000)),
            asyncio.create_task(store.get_live_file("q", "d", now=1000)),
        ]

        async def two_wait() -> bool:
            return await _waiting_on_locks(watcher) == 2

        await wait_until(two_wait, what="the first two reads wait for the lock")
        reads = [asyncio.create_task(store.get_live_file(p, f, now=n)) for p, f, n in asks]
        cancelled = asyncio.create_task(store.get_live_file("p", "a", now=1000))
        for _ in range(5):
            await asyncio.sleep(0)
        cancelled.cancel()
        assert await _waiting_on_locks(watcher) == 2  # the others wait inside filesd
        assert not any(r.done() for r in reads)
        await locked.commit()
        assert await asyncio.gather(*first) == [record("a"), record("d", project="q")]
        assert await asyncio.gather(*reads) == [expected[key] for key in asks]
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # Forty reads at once took no more connections than the two statements in flight.
        connections = await watcher.fetchval(
            "SELECT COUNT(*) FROM pg_stat_activity "
            "WHERE application_name = 'filesd' AND datname = current_database()"
        )
        assert connections == 2
        # A delete acknowledged before a read is seen by it, batched or not.
        await store.mark_deleted("p", "a", now=1000)
        again = await asyncio.gather(
            *(store.get_live_file("p", f, now=1000) for f in ("a", "c") * 10)
        )
        assert again == [None, record("c", expires_at=1500)] * 10
    finally:
        await watcher.close()
        await other.close()
        await store.close()


@pytest.mark.slow
async def test_postgres_a_failed_batch_of_reads_fails_each_read(postgres_dsn: str) -> None:
    store = await PostgresMetadata.open(postgres_dsn, statement_timeout_ms=300)
    other = await asyncpg.connect(postgres_dsn)
    try:
        await store.insert_files([record("a")])
        locked = other.transaction()
        await locked.start()
        await other.execute("LOCK TABLE files IN ACCESS EXCLUSIVE MODE")
        async with asyncio.timeout(60):  # a read left unanswered would hang here
            found = await asyncio.gather(
                *(store.get_live_file("p", "a", now=0) for _ in range(12)),
                return_exceptions=True,
            )
        assert all(isinstance(f, StorageBusy) for f in found), found
        await locked.rollback()
        assert await store.get_live_file("p", "a", now=0) == record("a")
    finally:
        await other.close()
        await store.close()


async def test_sqlite_a_read_too_long_for_the_loop_is_finished_on_the_reader(
    sqlite_db: SqliteMetadata,
) -> None:
    # Files expired but not swept yet stay in the live index: a page walks past all of them,
    # far more steps than a read may take on the event loop. The same read then runs on the
    # reader's thread.
    records = [record(f"f{i:05}", created_at=i, expires_at=500) for i in range(3000)]
    for start in range(0, len(records), 500):
        await sqlite_db.insert_files(records[start : start + 500])
    assert await page(sqlite_db, now=1000) == ([], 0)
    assert await page(sqlite_db, now=0, limit=2) == (["f02999", "f02998"], 3000)
    # An interrupted read leaves no transaction open: later reads see later writes at once.
    await sqlite_db.insert_files([record("late", created_at=9999)])
    assert await sqlite_db.get_live_file("p", "late", now=1000) == record("late", created_at=9999)
    assert await page(sqlite_db, now=1000) == (["late"], 1)
    assert await sqlite_db.mark_deleted("p", "late", now=1000) is not None
    assert await sqlite_db.get_live_file("p", "late", now=1000) is None
    assert await page(sqlite_db, now=1000) == ([], 0)
