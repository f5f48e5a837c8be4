"""Operator mistakes and what /metrics costs: totals kept as counters, a data directory whose
database is missing, exports after `fsck --repair`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filesd.api.app import create_app
from filesd.api.health import Readiness
from filesd.cli import main
from filesd.models import StorageTotals
from filesd.services import operator as ops
from filesd.services.core import Services
from filesd.services.errors import DatabaseMissing
from filesd.services.files import Received
from filesd.services.maintenance import Unready
from filesd.services.settings import StoreSettings
from filesd.storage.blobdir import BlobDir
from filesd.storage.sqlite import DB_NAME, SqliteMetadata
from filesd.testing import serve

from .conftest import (
    ALPHA,
    ClientFactory,
    blob_files,
    chunks_of,
    make_config,
    upload,
    wait_until,
)
from .pg_service import start_server

ADMIN_TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
METRICS_TOKEN = "metrics-token-0123456789"
METRICS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


# --- /metrics totals: counters kept with the rows ----------------------------------------------


def scanned_totals(data_dir: Path) -> StorageTotals:
    """The totals as a full scan of the files counts them (the pre-counter query)."""
    with contextlib.closing(sqlite3.connect(data_dir / DB_NAME)) as conn:
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM files WHERE deleted_at IS NULL),"
            " (SELECT COALESCE(SUM(bytes), 0) FROM files WHERE deleted_at IS NULL),"
            " COUNT(*), COALESCE(SUM(bytes), 0) FROM (SELECT sha256, MAX(bytes) AS bytes"
            " FROM files WHERE deleted_at IS NULL GROUP BY sha256)"
        ).fetchone()
    return StorageTotals(*row)


async def stage(store: Services, content: bytes) -> Received:
    return await store.files.receive(chunks_of(content))


async def create(
    store: Services, content: bytes, project: str = "p", expires_after: int | None = None
) -> str:
    staged = await stage(store, content)
    record = await store.files.create(
        project, staged, filename="f.txt", purpose="assistants", expires_after=expires_after
    )
    return record.id


async def test_storage_totals_read_no_file_rows(tmp_path: Path) -> None:
    """A scrape's cost must not grow with the files: no statement it runs touches `files`."""
    db = await SqliteMetadata.open(tmp_path / DB_NAME)
    statements: list[str] = []
    try:
        await db._reader.set_trace_callback(statements.append)
        await db.storage_totals()
        await db._reader.set_trace_callback(None)  # type: ignore[arg-type]
    finally:
        await db.close()
    assert statements
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as conn:
        for sql in statements:
            plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "files" not in plan.replace("FROM totals", ""), (sql, plan)


async def test_totals_stay_right_through_every_change(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    data = tmp_path / "data"
    opened: list[Services] = []

    async def open_store() -> Services:
        settings = StoreSettings(data, deleted_retention=0)
        store = await Services.open(settings, clock=lambda: now[0])
        opened.append(store)
        return store

    async def check(store: Services, expected: tuple[int, int, int, int]) -> None:
        totals = await store.maintenance.storage_totals()
        assert totals == scanned_totals(data) == StorageTotals(*expected)

    store = await open_store()
    try:
        await check(store, (0, 0, 0, 0))
        a = await create(store, b"a" * 10)
        await check(store, (1, 10, 1, 10))
        await create(store, b"a" * 10, project="q")  # dedupe: one blob, two files
        await check(store, (2, 20, 1, 10))
        short = await create(store, b"b" * 7, expires_after=3600)
        await check(store, (3, 27, 2, 17))
        await store.files.delete("p", a)
        await check(store, (2, 17, 2, 17))
        now[0] += 3600  # expired: hidden at once, counted until swept (as before)
        await store.maintenance.sweep_expired()
        await check(store, (1, 10, 1, 10))
        assert short
        now[0] += 1
        report = await store.maintenance.collect()  # purge of the deleted rows
        assert report.purged_rows == 2
        await check(store, (1, 10, 1, 10))
        await create(store, b"c" * 5, project="r")
        await create(store, b"d" * 3, project="r")
        await check(store, (3, 18, 3, 18))
        export = await store.archives.export("r")
        archive = b"".join([chunk async for chunk in export.chunks])
        await store.maintenance.reset("r")
        await check(store, (1, 10, 1, 10))

        async def chunks() -> AsyncIterator[bytes]:
            yield archive

        assert await store.archives.import_(chunks(), ["assistants"]) == 2
        await check(store, (3, 18, 3, 18))
    finally:
        await store.close()
    # fsck --repair marks the files of a corrupt blob damaged: they stay files (as before).
    corrupt = BlobDir(data).path_for(scanned_digest(data, "r"))
    corrupt.write_bytes(b"rot")
    await ops.fsck(StoreSettings(data), repair=True)
    store = await open_store()
    try:
        await check(store, (3, 18, 3, 18))
        await store.maintenance.reset(None)
        await check(store, (0, 0, 0, 0))
    finally:
        await store.close()


def scanned_digest(data_dir: Path, project: str) -> str:
    with contextlib.closing(sqlite3.connect(data_dir / DB_NAME)) as conn:
        row = conn.execute(
            "SELECT sha256 FROM files WHERE project = ? AND deleted_at IS NULL LIMIT 1", (project,)
        ).fetchone()
    return str(row[0])


async def test_totals_are_built_for_an_existing_database(tmp_path: Path) -> None:
    from filesd.storage.sqlite import MIGRATIONS

    path = tmp_path / DB_NAME
    with contextlib.closing(sqlite3.connect(path)) as conn:  # at schema 5, with files in it
        conn.executescript("".join(MIGRATIONS[:5]) + "PRAGMA user_version = 5;")
        conn.executemany(
            "INSERT INTO files (id, project, filename, purpose, bytes, sha256, created_at,"
            " deleted_at) VALUES (?, 'p', 'f', 'batch', ?, ?, 1, ?)",
            [("a", 4, "a" * 64, None), ("b", 4, "a" * 64, None), ("c", 9, "c" * 64, 5)],
        )
        conn.commit()
    db = await SqliteMetadata.open(path)
    try:
        assert await db.storage_totals() == StorageTotals(2, 8, 1, 4)
    finally:
        await db.close()


# --- a data directory whose database is missing ------------------------------------------------


def _data_dir_without_database(tmp_path: Path) -> tuple[Path, set[str]]:
    """A data directory with two files, whose database was then moved aside."""
    data = tmp_path / "data"

    async def fill() -> None:
        store = await Services.open(StoreSettings(data))
        try:
            for content in (b"one", b"two"):
                await create(store, content)
        finally:
            await store.close()

    asyncio.run(fill())
    (data / DB_NAME).rename(tmp_path / "moved-aside.db")
    for suffix in ("-wal", "-shm"):
        (data / (DB_NAME + suffix)).unlink(missing_ok=True)
    return data, {p.name for p in blob_files(data)}


@pytest.mark.slow
@pytest.mark.parametrize("left", ["no file", "an empty file", "a new SQLite file"])
@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "0"],
        ["gc"],
        ["fsck"],
        ["fsck", "--repair"],
        ["keys", "list"],
        ["keys", "create", "--project", "p"],
    ],
    ids=" ".join,
)
def test_no_start_over_blobs_without_a_database(tmp_path: Path, argv: list[str], left: str) -> None:
    data, blobs = _data_dir_without_database(tmp_path)
    assert len(blobs) == 2
    if left == "an empty file":
        (data / DB_NAME).touch()
    elif left == "a new SQLite file":  # a real SQLite file, but no migration ever ran in it
        with contextlib.closing(sqlite3.connect(data / DB_NAME)) as conn:
            conn.execute("CREATE TABLE unrelated (x)")
            conn.commit()
    # A subprocess with a deadline: a refusal that broke would serve forever, not fail.
    done = subprocess.run(
        [sys.executable, "-m", "filesd", *argv, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(data) in done.stderr and "--new-database" in done.stderr
    assert "no database (filesd.db is missing or empty)" in done.stderr
    assert {p.name for p in blob_files(data)} == blobs
    db = data / DB_NAME
    assert not db.exists() or not _has_files_table(db)  # nothing was migrated into it


def _has_files_table(path: Path) -> bool:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sql = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'files'"
        return bool(conn.execute(sql).fetchone()[0])


def test_gc_with_new_database_starts_over_on_purpose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = _data_dir_without_database(tmp_path)
    assert main(["gc", "--new-database", "--data-dir", str(data)]) == 0
    assert "unused blobs reclaimed: 2" in capsys.readouterr().out
    assert blob_files(data) == [] and (data / DB_NAME).exists()


def test_testing_serve_refuses_too_and_can_be_told(tmp_path: Path) -> None:
    data, blobs = _data_dir_without_database(tmp_path)
    with pytest.raises(DatabaseMissing, match="no database") as info, serve(data_dir=data):
        pass
    assert "--new-database" in str(info.value)
    assert {p.name for p in blob_files(data)} == blobs
    with serve(data_dir=data, new_database=True) as server:
        assert server.new_project().openai().files.list().data == []


async def test_a_fresh_or_empty_data_dir_needs_no_flag(tmp_path: Path) -> None:
    store = await Services.open(StoreSettings(tmp_path / "fresh"))
    await store.close()
    (tmp_path / "fresh" / DB_NAME).unlink()  # blob directories, but nothing in them
    store = await Services.open(StoreSettings(tmp_path / "fresh"))
    await store.close()


# --- export after fsck --repair ----------------------------------------------------------------


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


async def test_export_after_fsck_repair_skips_and_reports_damaged_files(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    config = make_config(data, admin={"token": ADMIN_TOKEN})
    client = await aiohttp_client(create_app(config))
    ids = [(await upload(client, content))["id"] for content in (b"good", b"rots", b"also good")]
    await client.close()  # the server stops: fsck needs the data directory to itself
    with contextlib.closing(sqlite3.connect(data / DB_NAME)) as conn:
        (digest,) = conn.execute("SELECT sha256 FROM files WHERE id = ?", (ids[1],)).fetchone()
    BlobDir(data).path_for(digest).write_bytes(b"bit rot")
    report = await ops.fsck(StoreSettings(data), repair=True)
    assert report.corrupt == [digest]

    client = await aiohttp_client(create_app(config))
    resp = await client.get("/admin/export", headers=ADMIN)
    assert resp.status == 200 and resp.headers["X-Filesd-Skipped"] == "1"
    archive = await resp.read()
    members = _members(archive)
    manifest = json.loads(members["filesd-export.json"])
    assert [f["id"] for f in manifest["files"]] == [ids[0], ids[2]]
    assert [s["id"] for s in manifest["skipped"]] == [ids[1]]
    assert "damaged" in manifest["skipped"][0]["reason"]
    assert f"blobs/{digest}" not in members

    fresh = await aiohttp_client(
        create_app(make_config(tmp_path / "fresh", admin={"token": ADMIN_TOKEN}))
    )
    resp = await fresh.post("/admin/import", data=archive, headers=ADMIN)
    assert resp.status == 200 and await resp.json() == {"imported": 2}
    got = await fresh.get(f"/v1/files/{ids[2]}/content", headers=ALPHA)
    assert got.status == 200 and await got.read() == b"also good"


async def test_export_skips_a_file_whose_blob_is_missing(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client = await aiohttp_client(
        create_app(make_config(tmp_path / "data", admin={"token": ADMIN_TOKEN}))
    )
    kept = (await upload(client, b"kept"))["id"]
    gone = (await upload(client, b"gone from disk"))["id"]
    for path in blob_files(tmp_path / "data"):
        if path.read_bytes() == b"gone from disk":
            path.unlink()
    resp = await client.get("/admin/export", headers=ADMIN)
    assert resp.status == 200 and resp.headers["X-Filesd-Skipped"] == "1"
    manifest = json.loads(_members(await resp.read())["filesd-export.json"])
    assert [f["id"] for f in manifest["files"]] == [kept]
    assert manifest["skipped"] == [{"id": gone, "reason": "its content is missing from storage"}]


# --- fsck and files already marked damaged -----------------------------------------------------


async def test_fsck_keeps_a_damaged_files_blob_and_serves_it_again_once_restored(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    store = await Services.open(StoreSettings(data))
    try:
        file_id = await create(store, b"precious bytes")
        digest = (await store.files.get("p", file_id)).sha256
    finally:
        await store.close()
    blob = BlobDir(data).path_for(digest)
    kept = tmp_path / "kept-aside"
    blob.rename(kept)  # lost from the store...
    report = await ops.fsck(StoreSettings(data), repair=True)
    assert report.missing == [digest]  # ...so its file is marked damaged
    kept.rename(blob)  # the operator puts the bytes back

    report = await ops.fsck(StoreSettings(data), repair=False)
    assert report.orphaned == [], "a damaged file's blob is not an orphan"
    assert report.restored == [digest] and not report.ok
    report = await ops.fsck(StoreSettings(data), repair=True)
    assert blob.read_bytes() == b"precious bytes"
    assert (await ops.fsck(StoreSettings(data), repair=False)).ok

    store = await Services.open(StoreSettings(data))
    try:
        record = await store.files.get("p", file_id)
        assert (record.status, record.status_details) == ("processed", None)
    finally:
        await store.close()


# --- readiness that cannot hang --------------------------------------------------------------


async def test_a_hanging_readiness_check_answers_not_ready_in_time() -> None:
    never = asyncio.Event()

    async def hangs() -> list[Unready]:
        await never.wait()
        return []

    readiness = Readiness(hangs, timeout=0.05)
    problems = await readiness.problems()
    assert problems and "took over" in problems[0].what
    never.set()  # the check that went on finishes: the next probes are ready again

    async def ready() -> bool:
        return await readiness.problems() == []

    await wait_until(ready, what="ready once the check finished")


async def test_a_keyless_probe_is_not_told_where_the_database_is(
    aiohttp_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL gone: a keyless /readyz says what is wrong in general words; the error with
    the server's host and port goes to the log, and to a probe carrying the metrics token."""
    caplog.set_level(logging.WARNING, logger="filesd.api.health")
    server = start_server()  # a cluster of this test's own, to stop
    try:
        data = tmp_path / "data"
        config = make_config(
            data,
            storage={"data_dir": str(data), "database": server.dsn()},
            metrics={"token": METRICS_TOKEN},
        )
        client = await aiohttp_client(create_app(config))
        assert (await client.get("/readyz")).status == 200
        server.stop()

        async def port_told_to_the_token() -> bool:
            resp = await client.get("/readyz", headers=METRICS)
            return (
                resp.status == 503 and str(server.port) in (await resp.json())["error"]["message"]
            )

        await wait_until(port_told_to_the_token, timeout=60, what="the refusal told in detail")
        for headers in ({}, ALPHA, {"Authorization": "Bearer not-the-metrics-token-0123"}):
            resp = await client.get("/readyz", headers=headers)
            assert resp.status == 503
            error = (await resp.json())["error"]
            assert error == {
                "message": "Not ready: the database is not usable",
                "type": "server_error",
                "param": None,
                "code": "not_ready",
            }
        logged = [r.getMessage() for r in caplog.records if r.name == "filesd.api.health"]
        assert any(str(server.port) in line for line in logged), logged
    finally:
        server.stop()
