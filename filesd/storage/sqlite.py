"""SQLite metadata (the default `MetadataStore`): schema migrations and every SQL statement.

Three connections, each with its own aiosqlite thread, in WAL mode with `synchronous=FULL` (a
committed row survives power loss, not just a process crash): one for the requests' writes, one
read-only for reads (in WAL, readers never wait for writers, so a read never queues behind a
write or its fsync), and one for background sweeps that does not wait on a busy database, so a
sweep meeting a lock gives up until its next round instead of holding up the requests' writes.

A fourth, read-only and without a thread, serves the hot indexed reads (a file by id, a page of
a listing) on the event loop itself: a trip to a thread and back costs ~90 µs of CPU, the read
itself ~5 µs. It is bounded: SQLite interrupts it after ON_LOOP_STEPS steps of its virtual
machine (about a quarter of a millisecond) and it never waits for a lock; then the same read runs
on the reader's thread instead.

Rows are never removed by the API: a delete sets `deleted_at`. `seq` is the insertion order and
the one ordering of a project's files, so paging by offset or by cursor never skips or repeats a
file, even within one second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ..models import (
    FileRecord,
    KeyRecord,
    PartRecord,
    ProjectUsage,
    StorageTotals,
    UploadRecord,
)
from .base import (
    BATCH_ACTIVE,
    BATCH_COLUMNS,
    BATCH_MUTABLE,
    NO_QUOTA,
    BatchRecord,
    BatchResult,
    InsertVerdict,
    PartVerdict,
    Quota,
    SchemaTooNew,
    StorageBusy,
    StorageFull,
    rows_within,
)

# The database's name inside a data directory.
DB_NAME = "filesd.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: files
    """
    CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        status TEXT NOT NULL DEFAULT 'processed',
        status_details TEXT,
        deleted_at INTEGER
    );
    CREATE INDEX files_live_by_project ON files (project, seq) WHERE deleted_at IS NULL;
    CREATE INDEX files_live_by_purpose ON files (project, purpose, seq)
        WHERE deleted_at IS NULL;
    CREATE INDEX files_live_by_blob ON files (sha256) WHERE deleted_at IS NULL;
    """,
    # 2: uploads in parts, and the expiry sweep
    """
    CREATE INDEX files_live_by_expiry ON files (expires_at)
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        file_expires_after INTEGER,
        status TEXT NOT NULL,
        file_id TEXT
    );
    CREATE INDEX uploads_pending_by_expiry ON uploads (expires_at) WHERE status = 'pending';
    CREATE TABLE upload_parts (
        id TEXT PRIMARY KEY,
        upload_id TEXT NOT NULL REFERENCES uploads (id),
        token TEXT NOT NULL UNIQUE,
        bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX upload_parts_by_upload ON upload_parts (upload_id);
    """,
    # 3: live-file counters, kept by triggers so every write path keeps them right, so that a
    # listing's `total` costs no scan of the project's files.
    """
    CREATE TABLE file_counts (
        project TEXT NOT NULL,
        purpose TEXT NOT NULL,
        files INTEGER NOT NULL,
        PRIMARY KEY (project, purpose)
    ) WITHOUT ROWID;
    INSERT INTO file_counts (project, purpose, files)
        SELECT project, purpose, COUNT(*) FROM files WHERE deleted_at IS NULL
        GROUP BY project, purpose;
    CREATE TRIGGER file_counts_insert AFTER INSERT ON files WHEN NEW.deleted_at IS NULL
    BEGIN
        INSERT INTO file_counts (project, purpose, files) VALUES (NEW.project, NEW.purpose, 1)
            ON CONFLICT (project, purpose) DO UPDATE SET files = files + 1;
    END;
    CREATE TRIGGER file_counts_delete AFTER UPDATE OF deleted_at ON files
        WHEN OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL
    BEGIN
        UPDATE file_counts SET files = files - 1
            WHERE project = OLD.project AND purpose = OLD.purpose;
    END;
    CREATE TRIGGER file_counts_purge AFTER DELETE ON files WHEN OLD.deleted_at IS NULL
    BEGIN
        UPDATE file_counts SET files = files - 1
            WHERE project = OLD.project AND purpose = OLD.purpose;
    END;
    DROP INDEX files_live_by_expiry;
    CREATE INDEX files_live_by_expiry ON files (project, expires_at)
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
    """,
    # 4: live bytes beside live files, for quotas
    """
    ALTER TABLE file_counts ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE file_counts SET bytes = (
        SELECT COALESCE(SUM(bytes), 0) FROM files
        WHERE files.project = file_counts.project AND files.purpose = file_counts.purpose
        AND deleted_at IS NULL
    );
    DROP TRIGGER file_counts_insert;
    DROP TRIGGER file_counts_delete;
    DROP TRIGGER file_counts_purge;
    CREATE TRIGGER file_counts_insert AFTER INSERT ON files WHEN NEW.deleted_at IS NULL
    BEGIN
        INSERT INTO file_counts (project, purpose, files, bytes)
            VALUES (NEW.project, NEW.purpose, 1, NEW.bytes)
            ON CONFLICT (project, purpose)
            DO UPDATE SET files = files + 1, bytes = bytes + NEW.bytes;
    END;
    CREATE TRIGGER file_counts_delete AFTER UPDATE OF deleted_at ON files
        WHEN OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL
    BEGIN
        UPDATE file_counts SET files = files - 1, bytes = bytes - OLD.bytes
            WHERE project = OLD.project AND purpose = OLD.purpose;
    END;
    CREATE TRIGGER file_counts_purge AFTER DELETE ON files WHEN OLD.deleted_at IS NULL
    BEGIN
        UPDATE file_counts SET files = files - 1, bytes = bytes - OLD.bytes
            WHERE project = OLD.project AND purpose = OLD.purpose;
    END;
    """,
    # 5: API keys made with `filesd keys create` (kept as digests only)
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_sha256 TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    """,
    # 6: named counters (the generation of seeded ids, so that they continue after a restart),
    # and the checksum mismatches of each upload (a completion may fail only so often)
    """
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE uploads ADD COLUMN failed_completions INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: storage totals kept by triggers, so that /metrics reads one row instead of scanning
    # every live file: the live references of each blob, and one row of totals (live files,
    # their bytes, distinct blobs they use, those blobs' bytes). A blob's row goes when its
    # last live file does (soft delete, or a purge/reset of a file never soft-deleted).
    """
    CREATE TABLE blob_refs (
        sha256 TEXT PRIMARY KEY,
        bytes INTEGER NOT NULL,
        refs INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        files INTEGER NOT NULL,
        logical_bytes INTEGER NOT NULL,
        blobs INTEGER NOT NULL,
        physical_bytes INTEGER NOT NULL
    );
    INSERT INTO blob_refs (sha256, bytes, refs)
        SELECT sha256, MAX(bytes), COUNT(*) FROM files WHERE deleted_at IS NULL GROUP BY sha256;
    INSERT INTO totals (id, files, logical_bytes, blobs, physical_bytes)
        SELECT 0,
            (SELECT COUNT(*) FROM files WHERE deleted_at IS NULL),
            (SELECT COALESCE(SUM(bytes), 0) FROM files WHERE deleted_at IS NULL),
            COUNT(*), COALESCE(SUM(bytes), 0)
        FROM blob_refs;
    CREATE TRIGGER blob_refs_new AFTER INSERT ON blob_refs
    BEGIN
        UPDATE totals SET blobs = blobs + 1, physical_bytes = physical_bytes + NEW.bytes;
    END;
    CREATE TRIGGER blob_refs_gone AFTER DELETE ON blob_refs
    BEGIN
        UPDATE totals SET blobs = blobs - 1, physical_bytes = physical_bytes - OLD.bytes;
    END;
    CREATE TRIGGER totals_insert AFTER INSERT ON files WHEN NEW.deleted_at IS NULL
    BEGIN
        INSERT INTO blob_refs (sha256, bytes, refs) VALUES (NEW.sha256, NEW.bytes, 1)
            ON CONFLICT (sha256) DO UPDATE SET refs = refs + 1;
        UPDATE totals SET files = files + 1, logical_bytes = logical_bytes + NEW.bytes;
    END;
    CREATE TRIGGER totals_delete AFTER UPDATE OF deleted_at ON files
        WHEN OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL
    BEGIN
        UPDATE blob_refs SET refs = refs - 1 WHERE sha256 = OLD.sha256;
        DELETE FROM blob_refs WHERE sha256 = OLD.sha256 AND refs <= 0;
        UPDATE totals SET files = files - 1, logical_bytes = logical_bytes - OLD.bytes;
    END;
    CREATE TRIGGER totals_purge AFTER DELETE ON files WHEN OLD.deleted_at IS NULL
    BEGIN
        UPDATE blob_refs SET refs = refs - 1 WHERE sha256 = OLD.sha256;
        DELETE FROM blob_refs WHERE sha256 = OLD.sha256 AND refs <= 0;
        UPDATE totals SET files = files - 1, logical_bytes = logical_bytes - OLD.bytes;
    END;
    """,
    # 8: a project's unfinished uploads found by index, for the byte quota (which counts their
    # parts) without scanning every project's uploads
    """
    CREATE INDEX uploads_by_project_status ON uploads (project, status);
    """,
    # 9: the instance that took an upload into `completing` (see `abandoned_completions`)
    """
    ALTER TABLE uploads ADD COLUMN owner TEXT;
    """,  # 10: batches (the Batch API) and the state of each of their requests
    """
    CREATE TABLE batches (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        metadata TEXT,
        output_expires_after INTEGER,
        model TEXT,
        errors TEXT,
        in_progress_at INTEGER,
        finalizing_at INTEGER,
        completed_at INTEGER,
        failed_at INTEGER,
        expired_at INTEGER,
        cancelling_at INTEGER,
        cancelled_at INTEGER,
        total INTEGER NOT NULL DEFAULT 0,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        output_file_id TEXT,
        error_file_id TEXT
    );
    CREATE INDEX batches_by_project ON batches (project, seq);
    CREATE INDEX batches_active ON batches (status)
        WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');
    CREATE TABLE batch_requests (
        batch_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        custom_id TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        result TEXT,
        PRIMARY KEY (batch_id, line)
    ) WITHOUT ROWID;
    """,
)


_COLUMNS = (
    "id, project, filename, purpose, bytes, sha256, created_at, expires_at, status, status_details"
)
_LIVE = "deleted_at IS NULL AND (expires_at IS NULL OR expires_at > :now)"
_UPLOAD_COLUMNS = (
    "id, project, filename, purpose, mime_type, bytes, created_at, expires_at, "
    "file_expires_after, status, file_id"
)
_KEY_COLUMNS = "id, key_sha256, project, hint, created_at, revoked_at"
# The most a read on the event loop may take, in steps of SQLite's virtual machine (~75 a µs on
# this kind of machine): a file by id takes ~30, a page of 20 with its total ~500. They are
# counted in rounds of ON_LOOP_ROUND steps.
ON_LOOP_STEPS = 20_000
ON_LOOP_ROUND = 1_000
# The longest page read on the event loop (~0.35 ms for 100 rows on the benchmark machine).
ON_LOOP_MAX_ROWS = 100
# Rows per INSERT and values per IN (...): far below SQLite's limit on bound variables.
_CHUNK = 500

# The checks of `insert_part`, in one statement: the upload is pending, its parts' bytes and
# count, and the project's bytes (live files and the parts of its unfinished uploads). Every
# table is searched by an index (uploads by project and status: migration 8), never scanned:
# this runs inside BEGIN IMMEDIATE on the one writer.
_PART_CHECK = """
    SELECT u.status = 'pending' AND u.expires_at > :now, u.bytes,
        (SELECT COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = u.id),
        (SELECT COUNT(*) FROM upload_parts WHERE upload_id = u.id),
        CASE WHEN :max_bytes > 0 THEN
            (SELECT COALESCE(SUM(bytes), 0) FROM file_counts WHERE project = u.project)
            + (SELECT COALESCE(SUM(p.bytes), 0)
               FROM uploads o CROSS JOIN upload_parts p ON p.upload_id = o.id
               WHERE o.project = u.project AND o.status IN ('pending', 'completing'))
        ELSE 0 END
    FROM uploads u WHERE u.id = :upload_id
"""


def _seq(row: Sequence[Any]) -> int:
    return int(row[2])


class _OnLoopReader:
    """The connection of `_hot_rows`: read-only, never waiting for a lock, and interrupting a
    statement once it has run ON_LOOP_STEPS steps. Opened in a thread, used on the loop only."""

    def __init__(self, path: Path) -> None:
        self._rounds_left = 0
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            self.conn.execute("PRAGMA query_only = ON")
            # SQLite counts steps per prepared statement across its uses (and they are cached),
            # so the handler counts the rounds of each use itself; a true answer interrupts.
            self.conn.set_progress_handler(self._progress, ON_LOOP_ROUND)
        except BaseException:
            self.conn.close()
            raise

    def _progress(self) -> bool:
        self._rounds_left -= 1
        return self._rounds_left < 0

    def rows(self, sql: str, params: Any) -> list[Any]:
        """All rows of the statement; raises SQLITE_INTERRUPT past its budget."""
        self._rounds_left = ON_LOOP_STEPS // ON_LOOP_ROUND
        return self.conn.execute(sql, params).fetchall()


def database_path(data_dir: Path) -> Path:
    """The SQLite database of a data directory."""
    return data_dir / DB_NAME


def neutral_error(error: sqlite3.Error) -> Exception | None:
    """The neutral error for a SQLite failure, by its result code: `StorageFull` for
    SQLITE_FULL, `StorageBusy` for SQLITE_BUSY / SQLITE_LOCKED; None for anything else."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF  # extended codes keep the primary code in the low byte
    if primary == sqlite3.SQLITE_FULL:
        return StorageFull(f"database: {error}")
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StorageBusy(f"database: {error}")
    return None


@contextlib.contextmanager
def _neutral_errors() -> Any:
    try:
        yield
    except sqlite3.Error as error:
        neutral = neutral_error(error)
        if neutral is None:
            raise
        raise neutral from error


class SqliteMetadata:
    """The metadata database. Create with `await SqliteMetadata.open(path)`.

    All writes of the requests go through one connection, each under `_writing`: a
    transaction of several statements holds it throughout, so no other write can land
    inside it (aiosqlite runs each statement as its own trip to the connection's thread).
    """

    BUSY_TIMEOUT_MS = 5000

    def __init__(
        self,
        conn: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        background: aiosqlite.Connection,
        on_loop: _OnLoopReader,
    ) -> None:
        self._conn = conn
        self._reader = reader
        self._background = background
        self._on_loop = on_loop
        self._writing = asyncio.Lock()
        self._path: Path | None = None
        self._identity: tuple[int, int] | None = None
        # Coordination lives in memory: only this process can open the database (the data
        # dir's lock), so its instances are the only ones there are, and a restart ends them.
        self._alive: dict[str, int] = {}  # instance -> alive until
        self._leases: dict[str, tuple[str, int]] = {}  # name -> holder, until
        self._claims: dict[str, collections.Counter[str]] = {}  # digest -> instances' claims
        self._reclaims: dict[str, str] = {}  # digest -> instance reclaiming it
        # Held across "is the blob referred to?" and "mark it reclaimed", and across "is the
        # claim held?" and "insert the row": the two must not interleave (see Coordination).
        self._coordinating = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteMetadata:
        opened: list[aiosqlite.Connection] = []
        on_loop: _OnLoopReader | None = None
        try:
            with _neutral_errors():
                for busy_ms in (cls.BUSY_TIMEOUT_MS, cls.BUSY_TIMEOUT_MS, 0):
                    conn = await aiosqlite.connect(path, isolation_level=None)
                    opened.append(conn)
                    await conn.execute("PRAGMA journal_mode = WAL")
                    await conn.execute("PRAGMA synchronous = FULL")
                    await conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
                on_loop = await asyncio.to_thread(_OnLoopReader, path)
                db = cls(opened[0], opened[1], opened[2], on_loop)
                await db._migrate()
                await opened[1].execute("PRAGMA query_only = ON")
            db._path = path
            db._identity = await asyncio.to_thread(_identity, path)
        except BaseException:
            for conn in opened:
                await conn.close()
            if on_loop is not None:
                on_loop.conn.close()
            raise
        return db

    async def close(self) -> None:
        for conn in (self._conn, self._reader, self._background):
            await conn.close()
        self._on_loop.conn.close()

    async def vanished(self) -> str | None:
        """Why the database file this store opened is no longer at its path, or None.

        SQLite goes on working on an open file that was renamed or deleted (and a new file at
        the path would not be the one written to), so nothing else notices: the path's
        (st_dev, st_ino) is compared with the one opened at start.
        """
        if self._path is None:
            return None
        try:
            now = await asyncio.to_thread(_identity, self._path)
        except FileNotFoundError:
            # No path in the answer: /readyz is keyless, and the layout of the server's disk is
            # nobody else's business (the operator's log has it).
            return (
                f"{DB_NAME} was moved or deleted while the server runs (it still writes to the "
                "old file): put it back, then restart"
            )
        if now != self._identity:
            return f"{DB_NAME} is no longer the file opened at start (replaced): restart"
        return None

    async def holds_nothing(self) -> bool:
        sql = "SELECT NOT EXISTS (SELECT 1 FROM files) AND NOT EXISTS (SELECT 1 FROM uploads)"
        return bool((await self._rows(sql))[0][0])

    async def schema_version(self) -> int:
        rows = await self._rows("PRAGMA user_version")
        return int(rows[0][0])

    # --- plumbing -------------------------------------------------------------------------------

    async def _rows(self, sql: str, params: Any = ()) -> list[Any]:
        """All rows of a read-only statement, from the reader, in one trip to its thread."""
        with _neutral_errors():
            return list(await self._reader.execute_fetchall(sql, params))

    async def _hot_rows(self, sql: str, params: Any = ()) -> list[Any]:
        """All rows of a read-only statement that an index makes cheap, read on the event loop
        if it finishes within ON_LOOP_STEPS and without waiting for a lock, else (the same
        statement, the same answer) from the reader's thread.

        Like the reader's, each read is its own transaction: it sees every commit made
        before it began (the statement is stepped to its end, which ends the transaction).
        """
        try:
            return self._on_loop.rows(sql, params)
        except sqlite3.Error as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            if code not in (sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                with _neutral_errors():
                    raise
        return await self._rows(sql, params)

    async def _write(self, sql: str, params: Any = ()) -> list[Any]:
        """One writing statement on its own; the rows it returns (RETURNING). To count the
        rows a statement changed, it returns one row for each (`RETURNING 1`)."""
        async with self._writing:
            return await self._run(self._conn, sql, params)

    @staticmethod
    async def _run(conn: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
        """All rows a statement returns, in one trip to the connection's thread."""
        with _neutral_errors():
            return list(await conn.execute_fetchall(sql, params))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the writer, ROLLBACK if anything inside fails."""
        async with self._writing:
            try:
                # Inside the try: a cancel while BEGIN runs (it runs all the same) rolls back.
                await self._run(self._conn, "BEGIN IMMEDIATE")
                yield self._conn
                await self._run(self._conn, "COMMIT")
            except BaseException:
                # Shielded: a cancelled caller must not leave the writer inside a transaction.
                # When the cancel came during COMMIT, the COMMIT still ran (in the thread) and
                # there is nothing to roll back: that error must not replace the original one.
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(self._conn.execute("ROLLBACK"))
                raise

    async def _migrate(self) -> None:
        version = await self.schema_version()
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"database schema version {version} is newer than this filesd supports "
                f"({len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits on its own, so the version bump is part of the script:
            # a crash mid-migration rolls back both.
            await self._conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    async def _chunked_rows(self, sql: str, values: Sequence[str]) -> list[Any]:
        """Rows of `sql` (with `{marks}` for an IN list) over `values`, a chunk at a time."""
        rows: list[Any] = []
        for start in range(0, len(values), _CHUNK):
            chunk = values[start : start + _CHUNK]
            rows += await self._rows(sql.format(marks=",".join("?" * len(chunk))), chunk)
        return rows

    # --- files ----------------------------------------------------------------------------------

    async def insert_files(
        self,
        records: Sequence[FileRecord],
        *,
        instance: str | None = None,
        quota: Quota = NO_QUOTA,
        excluding_uploads: Sequence[str] = (),
        completions: Mapping[str, str] | None = None,
    ) -> list[InsertVerdict]:
        """Insert rows: one statement (one commit) when they fit and no quota or completion
        applies, else
        one transaction that decides the quotas and inserts (on the one writer, so no other
        write lands between the two).

        A row whose id is taken already is skipped, alone (`ON CONFLICT DO NOTHING`): the
        others of the group are inserted all the same.
        """
        async with self._coordinating:
            verdicts: list[InsertVerdict] = ["inserted"] * len(records)
            if instance is not None:
                for i, r in enumerate(records):
                    if self._claims.get(r.sha256, collections.Counter())[instance] <= 0:
                        verdicts[i] = "unclaimed"
            try:
                if len(records) <= _CHUNK and not quota and not completions:
                    async with self._writing:
                        inserted = await _insert_files(
                            self._conn, _pick(records, verdicts), skip_taken=True
                        )
                else:
                    async with self._transaction() as conn:
                        if quota:
                            await self._check_quota(
                                conn, records, verdicts, quota, excluding_uploads
                            )
                        if completions:
                            await self._complete_uploads(conn, records, verdicts, completions)
                        inserted = await _insert_files(
                            conn, _pick(records, verdicts), skip_taken=True
                        )
            finally:
                if instance is not None:
                    self._release(sorted({r.sha256 for r in records}), instance)
        # RETURNING names the rows inserted; of two records with one id, the first is.
        left = collections.Counter(inserted)
        for i, record in enumerate(records):
            if verdicts[i] != "inserted":
                continue
            if left[record.id] <= 0:
                verdicts[i] = "taken"
            left[record.id] -= 1
        return verdicts

    async def _complete_uploads(
        self,
        conn: aiosqlite.Connection,
        records: Sequence[FileRecord],
        verdicts: list[InsertVerdict],
        completions: Mapping[str, str],
    ) -> None:
        """Move the uploads these records complete to `completed`, in the inserting
        transaction; a record whose upload is no longer completing with it is `abandoned`."""
        for i, record in enumerate(records):
            upload_id = completions.get(record.id)
            if verdicts[i] != "inserted" or upload_id is None:
                continue
            if await self._run(conn, "SELECT 1 FROM files WHERE id = ?", (record.id,)):
                verdicts[i] = "taken"
                continue
            moved = await self._run(
                conn,
                "UPDATE uploads SET status = 'completed', owner = NULL "
                "WHERE id = ? AND status = 'completing' AND file_id = ? RETURNING 1",
                (upload_id, record.id),
            )
            if not moved:
                verdicts[i] = "abandoned"

    async def _check_quota(
        self,
        conn: aiosqlite.Connection,
        records: Sequence[FileRecord],
        verdicts: list[InsertVerdict],
        quota: Quota,
        excluding_uploads: Sequence[str],
    ) -> None:
        """Mark the records that would take their project over `quota` (in order: each
        accepted record counts against the next). Inside the inserting transaction."""
        projects = sorted({r.project for r in records})
        held: dict[str, tuple[int, int]] = {}
        for start in range(0, len(projects), _CHUNK):
            chunk = projects[start : start + _CHUNK]
            sql = _usage_sql(len(chunk), len(excluding_uploads))
            for row in await self._run(conn, sql, [*chunk, *chunk, *excluding_uploads]):
                held[row[0]] = (int(row[1]), int(row[2]))
        # A record whose id is taken is refused as `taken`, using no quota.
        ids = [r.id for r in records]
        taken: set[str] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            sql = f"SELECT id FROM files WHERE id IN ({','.join('?' * len(chunk))})"
            taken.update(row[0] for row in await self._run(conn, sql, chunk))
        for i, record in enumerate(records):
            if verdicts[i] != "inserted":
                continue
            if record.id in taken:
                verdicts[i] = "taken"
                continue
            taken.add(record.id)
            files, size = held.get(record.project, (0, 0))
            if quota.files and files + 1 > quota.files:
                verdicts[i] = "over_files"
            elif quota.bytes and size + record.bytes > quota.bytes:
                verdicts[i] = "over_bytes"
            else:
                held[record.project] = (files + 1, size + record.bytes)

    async def import_files(
        self, records: Sequence[FileRecord], *, instance: str | None = None
    ) -> list[str]:
        digests = sorted({r.sha256 for r in records})
        async with self._coordinating:
            try:
                if instance is not None and any(
                    self._claims.get(d, collections.Counter())[instance] <= 0 for d in digests
                ):
                    raise StorageBusy("the claims on the imported blobs were lost")
                async with self._transaction() as conn:
                    taken: list[str] = []
                    ids = [r.id for r in records]
                    for start in range(0, len(ids), _CHUNK):
                        chunk = ids[start : start + _CHUNK]
                        sql = f"SELECT id FROM files WHERE id IN ({','.join('?' * len(chunk))})"
                        taken += [row[0] for row in await self._run(conn, sql, chunk)]
                    if not taken:
                        await _insert_files(conn, records, skip_taken=False)
            finally:
                if instance is not None:
                    self._release(digests, instance)
        return taken

    async def existing_ids(self, ids: Sequence[str]) -> list[str]:
        rows = await self._chunked_rows("SELECT id FROM files WHERE id IN ({marks})", ids)
        return [row[0] for row in rows]

    async def file_exists(self, file_id: str) -> bool:
        """True if a row with this id exists, in any state."""
        return bool(await self._hot_rows("SELECT 1 FROM files WHERE id = ?", (file_id,)))

    async def get_live_file(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        sql = f"SELECT {_COLUMNS} FROM files WHERE id = :id AND project = :project AND {_LIVE}"
        rows = await self._hot_rows(sql, {"id": file_id, "project": project, "now": now})
        return _record(rows[0]) if rows else None

    async def list_live_files(
        self,
        project: str,
        *,
        now: int,
        purpose: str | None,
        descending: bool,
        after: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[FileRecord], int] | None:
        """A page of live files and the number of all live matches, in one statement.

        `after` is the id of any file of the project, deleted or not (a cursor stays valid);
        returns None if no such file exists. `total` comes from the counters, less the files
        that expired but are not swept yet (few: the sweeper runs every minute or so).
        """
        params: dict[str, Any] = {
            "project": project,
            "now": now,
            "limit": limit,
            "offset": offset,
            "after": after,
        }
        page_where = f"project = :project AND {_LIVE}"
        count_where = "project = :project"
        if purpose is not None:
            page_where += " AND purpose = :purpose"
            count_where += " AND purpose = :purpose"
            params["purpose"] = purpose
        cursor = "(SELECT seq FROM files WHERE id = :after AND project = :project)"
        if after is not None:
            page_where += f" AND seq {'<' if descending else '>'} {cursor}"
        order = "DESC" if descending else "ASC"
        # The total and the cursor's row in a first row, the page in the rows after it: one
        # statement (one snapshot), and no join or second sort of the page (a CTE joined to
        # the totals cost ~twice the time of the page alone).
        padding = ", NULL" * _COLUMNS.count(",")
        sql = f"""
            SELECT COALESCE((SELECT SUM(files) FROM file_counts WHERE {count_where}), 0)
                     - (SELECT COUNT(*) FROM files WHERE {count_where}
                        AND deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= :now),
                   {cursor}, NULL, NULL{padding}
            UNION ALL
            SELECT * FROM (
                SELECT NULL, NULL, seq, {_COLUMNS} FROM files WHERE {page_where}
                ORDER BY seq {order} LIMIT :limit OFFSET :offset
            )
        """
        # An offset walks the index up to it, and a long page costs more to turn into Python
        # rows than its steps tell: neither on the event loop.
        on_loop = not offset and limit <= ON_LOOP_MAX_ROWS
        rows = await (self._hot_rows(sql, params) if on_loop else self._rows(sql, params))
        # Told apart by `seq` (NULL only in the totals' row), ordered here: SQL promises no
        # order for the rows of a compound statement.
        total, after_seq = next((row[0], row[1]) for row in rows if row[2] is None)
        if after is not None and after_seq is None:
            return None
        page = sorted((row for row in rows if row[2] is not None), key=_seq, reverse=descending)
        return [_record(row[3:]) for row in page], int(total)

    async def usage(
        self, projects: Sequence[str], *, excluding_uploads: Sequence[str] = ()
    ) -> dict[str, tuple[int, int]]:
        """Live files of each project and the bytes it holds: its live files' (files not yet
        swept after expiry count) and its unfinished uploads' parts, but for the uploads in
        `excluding_uploads`. One statement per chunk of projects, by index."""
        excluded = list(excluding_uploads)
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(projects), _CHUNK):
            chunk = list(projects[start : start + _CHUNK])
            sql = _usage_sql(len(chunk), len(excluded))
            for row in await self._rows(sql, [*chunk, *chunk, *excluded]):
                found[row[0]] = (int(row[1]), int(row[2]))
        return {p: found.get(p, (0, 0)) for p in projects}

    async def mark_deleted(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        """Soft-delete a live file; returns it, or None if there was no such live file."""
        sql = (
            f"UPDATE files SET deleted_at = :now "
            f"WHERE id = :id AND project = :project AND {_LIVE} RETURNING {_COLUMNS}"
        )
        rows = await self._write(sql, {"id": file_id, "project": project, "now": now})
        return _record(rows[0]) if rows else None

    async def delete_expired_files(self, *, now: int, limit: int) -> list[str]:
        """Soft-delete up to `limit` expired files; returns their blob digests.

        On the background connection, which does not wait for a busy database.
        """
        sql = (
            "UPDATE files SET deleted_at = expires_at WHERE seq IN ("
            "  SELECT seq FROM files WHERE deleted_at IS NULL AND expires_at IS NOT NULL"
            "  AND expires_at <= :now LIMIT :limit"
            ") RETURNING sha256"
        )
        rows = await self._run(self._background, sql, {"now": now, "limit": limit})
        return [row[0] for row in rows]

    async def blob_in_use(self, sha256: str) -> bool:
        """True if any file not deleted refers to this blob (expired ones count until swept)."""
        sql = "SELECT 1 FROM files WHERE sha256 = ? AND deleted_at IS NULL LIMIT 1"
        return bool(await self._rows(sql, (sha256,)))

    async def blobs_in_use(self, digests: Sequence[str]) -> set[str]:
        """The subset of `digests` that some file not deleted refers to."""
        sql = "SELECT DISTINCT sha256 FROM files WHERE deleted_at IS NULL AND sha256 IN ({marks})"
        return {row[0] for row in await self._chunked_rows(sql, digests)}

    # --- operator views and maintenance ---------------------------------------------------------

    async def storage_totals(self) -> StorageTotals:
        """Live files, their bytes, the distinct blobs they use and those blobs' bytes: one
        row kept by triggers (migration 6), so the cost does not grow with the files."""
        sql = "SELECT files, logical_bytes, blobs, physical_bytes FROM totals WHERE id = 0"
        row = (await self._rows(sql))[0]
        return StorageTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def project_usage(self) -> list[ProjectUsage]:
        sql = (
            "SELECT c.project, SUM(c.files), SUM(c.bytes), COALESCE(p.physical, 0) "
            "FROM file_counts c LEFT JOIN ("
            "  SELECT project, SUM(bytes) AS physical FROM ("
            "    SELECT project, sha256, MAX(bytes) AS bytes FROM files"
            "    WHERE deleted_at IS NULL GROUP BY project, sha256"
            "  ) GROUP BY project"
            ") p ON p.project = c.project "
            "GROUP BY c.project HAVING SUM(c.files) > 0 ORDER BY c.project"
        )
        return [ProjectUsage(r[0], int(r[1]), int(r[2]), int(r[3])) for r in await self._rows(sql)]

    async def delete_everything(self, project: str | None) -> tuple[int, list[str]]:
        """Remove the rows of all projects, or of one: files, uploads and parts, batches and
        their requests, in one transaction. Returns how many live files went, and the part
        tokens to remove."""
        scope = {"project": project}
        where = ":project IS NULL OR project = :project"
        async with self._transaction() as conn:
            live = await self._run(
                conn, f"SELECT COUNT(*) FROM files WHERE deleted_at IS NULL AND ({where})", scope
            )
            tokens = await self._run(
                conn,
                "DELETE FROM upload_parts WHERE upload_id IN "
                f"(SELECT id FROM uploads WHERE {where}) RETURNING token",
                scope,
            )
            await self._run(conn, f"DELETE FROM uploads WHERE {where}", scope)
            await self._run(conn, f"DELETE FROM files WHERE {where}", scope)
            await self._run(
                conn,
                "DELETE FROM batch_requests WHERE batch_id IN "
                f"(SELECT id FROM batches WHERE {where})",
                scope,
            )
            await self._run(conn, f"DELETE FROM batches WHERE {where}", scope)
        return int(live[0][0]), [row[0] for row in tokens]

    async def live_files(self, project: str | None) -> list[FileRecord]:
        """Every live file (of one project, or of all), in insertion order."""
        sql = (
            f"SELECT {_COLUMNS} FROM files WHERE deleted_at IS NULL "
            "AND (:project IS NULL OR project = :project) ORDER BY seq"
        )
        return [_record(row) for row in await self._rows(sql, {"project": project})]

    async def live_digests(self, *, damaged: bool = False) -> list[str]:
        """Blobs of live files: those not marked damaged (status `error`), or with `damaged`
        only those of files marked damaged."""
        sql = "SELECT DISTINCT sha256 FROM files WHERE deleted_at IS NULL AND " + (
            "status = 'error'" if damaged else "status != 'error'"
        )
        return [row[0] for row in await self._rows(sql)]

    async def clear_blob_damage(self, sha256: str) -> int:
        """Status `processed` again for the live files of a blob marked damaged (its bytes are
        back and verified); returns how many."""
        sql = (
            "UPDATE files SET status = 'processed', status_details = NULL "
            "WHERE sha256 = ? AND deleted_at IS NULL AND status = 'error' RETURNING 1"
        )
        return len(await self._write(sql, (sha256,)))

    async def mark_blob_damaged(self, sha256: str, details: str) -> int:
        """Set status `error` on the live files of a blob; returns how many."""
        sql = (
            "UPDATE files SET status = 'error', status_details = ? "
            "WHERE sha256 = ? AND deleted_at IS NULL RETURNING 1"
        )
        return len(await self._write(sql, (details, sha256)))

    async def purge_deleted(self, *, before: int) -> int:
        """Remove rows soft-deleted before `before`, and finished uploads created before it,
        in one transaction."""
        async with self._transaction() as conn:
            await self._run(
                conn, "DELETE FROM files WHERE deleted_at IS NOT NULL AND deleted_at < ?", (before,)
            )
            purged = int((await self._run(conn, "SELECT changes()"))[0][0])
            await self._run(
                conn,
                "DELETE FROM uploads WHERE status IN ('completed', 'cancelled', 'expired') "
                "AND created_at < ?",
                (before,),
            )
        return purged

    async def next_generation(self, name: str) -> int:
        """Bump the counter `name` and return its new value: 0 the first time, then 1, 2..."""
        sql = (
            "INSERT INTO counters (name, value) VALUES (?, 0) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
        )
        return int((await self._write(sql, (name,)))[0][0])

    # --- API keys -------------------------------------------------------------------------------

    async def insert_key(self, key: KeyRecord) -> None:
        await self._write(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.key_sha256, key.project, key.hint, key.created_at, key.revoked_at),
        )

    async def keys(self) -> list[KeyRecord]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        return [KeyRecord(*row) for row in await self._rows(sql)]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        sql = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING 1"
        return len(await self._write(sql, (now, key_id))) == 1

    # --- uploads --------------------------------------------------------------------------------

    async def insert_upload(self, upload: UploadRecord) -> None:
        await self._write(
            f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                upload.id,
                upload.project,
                upload.filename,
                upload.purpose,
                upload.mime_type,
                upload.bytes,
                upload.created_at,
                upload.expires_at,
                upload.file_expires_after,
                upload.status,
                upload.file_id,
            ),
        )

    async def get_upload(self, project: str, upload_id: str) -> UploadRecord | None:
        sql = f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = ? AND project = ?"
        rows = await self._hot_rows(sql, (upload_id, project))
        return UploadRecord(*rows[0]) if rows else None

    async def set_upload_status(
        self,
        upload_id: str,
        *,
        old: str,
        new: str,
        file_id: str | None = None,
        owner: str | None = None,
        attempt: str | None = None,
    ) -> bool:
        """Move an upload from status `old` to `new`; False if it was not in `old` (or, with
        `attempt`, if its completion is another's)."""
        sql = (
            "UPDATE uploads SET status = ?, file_id = ?, owner = ? "
            "WHERE id = ? AND status = ? AND (? IS NULL OR file_id = ?) RETURNING 1"
        )
        owner = owner if new == "completing" else None
        params = (new, file_id, owner, upload_id, old, attempt, attempt)
        return len(await self._write(sql, params)) == 1

    async def insert_part(
        self, part: PartRecord, *, now: int, max_project_bytes: int, max_parts: int = 0
    ) -> PartVerdict:
        """Add a part to a pending, unexpired upload if it fits, deciding and inserting in
        one transaction on the one writer, so two parts racing cannot both pass a check."""
        params = {"now": now, "upload_id": part.upload_id, "max_bytes": max_project_bytes}
        async with self._transaction() as conn:
            rows = await self._run(conn, _PART_CHECK, params)
            if not rows or not rows[0][0]:
                return "not_pending"
            declared, held, count, project_bytes = (int(v) for v in rows[0][1:])
            if max_parts and count >= max_parts:
                return "too_many_parts"
            if held + part.bytes > declared:
                return "over_declared"
            if max_project_bytes and project_bytes + part.bytes > max_project_bytes:
                return "over_quota"
            await self._run(
                conn,
                "INSERT INTO upload_parts (id, upload_id, token, bytes, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (part.id, part.upload_id, part.token, part.bytes, part.created_at),
            )
        return "added"

    async def note_failed_completion(self, upload_id: str) -> int:
        """Count a failed completion of an upload; returns how many it has had."""
        sql = (
            "UPDATE uploads SET failed_completions = failed_completions + 1 "
            "WHERE id = ? RETURNING failed_completions"
        )
        rows = await self._write(sql, (upload_id,))
        return int(rows[0][0]) if rows else 0

    async def get_parts(self, upload_id: str) -> list[PartRecord]:
        sql = "SELECT id, upload_id, token, bytes, created_at FROM upload_parts WHERE upload_id = ?"
        return [PartRecord(*row) for row in await self._rows(sql, (upload_id,))]

    async def delete_parts(self, upload_id: str) -> list[str]:
        """Remove the part rows of an upload; returns their file tokens."""
        sql = "DELETE FROM upload_parts WHERE upload_id = ? RETURNING token"
        return [row[0] for row in await self._write(sql, (upload_id,))]

    async def expire_uploads(self, *, now: int) -> list[str]:
        """Mark pending uploads past their expiry as expired; returns their ids."""
        sql = (
            "UPDATE uploads SET status = 'expired' "
            "WHERE status = 'pending' AND expires_at <= ? RETURNING id"
        )
        return [row[0] for row in await self._run(self._background, sql, (now,))]

    async def finished_uploads_with_parts(self) -> list[str]:
        """Uploads no longer pending whose parts are still recorded (a sweep was cut short)."""
        sql = (
            "SELECT DISTINCT upload_id FROM upload_parts JOIN uploads ON uploads.id = upload_id "
            "WHERE uploads.status IN ('completed', 'cancelled', 'expired')"
        )
        return [row[0] for row in await self._rows(sql)]

    async def uploads_in_status(self, status: str) -> list[UploadRecord]:
        sql = f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE status = ?"
        return [UploadRecord(*row) for row in await self._rows(sql, (status,))]

    async def abandoned_completions(self, instance: str, *, now: int) -> list[UploadRecord]:
        sql = f"SELECT {_UPLOAD_COLUMNS}, owner FROM uploads WHERE status = 'completing'"
        return [
            UploadRecord(*row[:-1])
            for row in await self._rows(sql)
            if row[-1] != instance and not self._is_alive(row[-1], now)
        ]

    # --- coordination (in memory: see __init__) -------------------------------------------------

    @property
    def shared(self) -> bool:
        return False

    def _is_alive(self, instance: str | None, now: int) -> bool:
        return instance is not None and self._alive.get(instance, 0) > now

    async def heartbeat(self, instance: str, *, now: int, ttl: int) -> None:
        self._alive[instance] = now + ttl

    async def take_lease(self, name: str, instance: str, *, now: int, ttl: int) -> bool:
        holder, until = self._leases.get(name, (instance, 0))
        if holder != instance and until > now:
            return False
        self._leases[name] = (instance, now + ttl)
        return True

    async def claim_blobs(self, digests: Sequence[str], instance: str, *, now: int) -> set[str]:
        refused: set[str] = set()
        for digest in digests:
            reclaimer = self._reclaims.get(digest)
            if reclaimer is not None and self._is_alive(reclaimer, now):
                refused.add(digest)
                continue
            self._reclaims.pop(digest, None)
            self._claims.setdefault(digest, collections.Counter())[instance] += 1
        return refused

    async def release_claims(self, digests: Sequence[str], instance: str) -> None:
        self._release(digests, instance)

    def _release(self, digests: Sequence[str], instance: str) -> None:
        for digest in digests:
            claims = self._claims.get(digest)
            if claims is None:
                continue
            claims[instance] -= 1
            if claims[instance] <= 0:
                del claims[instance]
            if not claims:
                del self._claims[digest]

    async def begin_reclaim(self, digests: Sequence[str], instance: str, *, now: int) -> list[str]:
        if not self._is_alive(instance, now):
            return []
        async with self._coordinating:
            in_use = await self.blobs_in_use(digests)
            begun = []
            for digest in dict.fromkeys(digests):
                if digest in in_use:
                    continue
                claims = self._claims.get(digest, collections.Counter())
                live = [i for i in claims if self._is_alive(i, now)]
                if live:
                    continue
                self._claims.pop(digest, None)
                reclaimer = self._reclaims.get(digest)
                if (
                    reclaimer is not None
                    and reclaimer != instance
                    and self._is_alive(reclaimer, now)
                ):
                    continue
                self._reclaims[digest] = instance
                begun.append(digest)
            return begun

    async def end_reclaim(self, digests: Sequence[str], instance: str) -> None:
        for digest in digests:
            if self._reclaims.get(digest) == instance:
                del self._reclaims[digest]

    async def part_tokens_in_use(self, tokens: Sequence[str]) -> set[str]:
        sql = "SELECT token FROM upload_parts WHERE token IN ({marks})"
        return {row[0] for row in await self._chunked_rows(sql, tokens)}

    # --- batches (the Batch API; see BatchMetadata) ---------------------------------------------

    async def insert_batch(self, batch: BatchRecord) -> None:
        values = dataclasses.astuple(batch)
        marks = ",".join("?" * len(values))
        await self._write(f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES ({marks})", values)

    async def get_batch(self, batch_id: str, project: str | None = None) -> BatchRecord | None:
        sql = f"SELECT {BATCH_COLUMNS} FROM batches WHERE id = ? AND (? IS NULL OR project = ?)"
        rows = await self._rows(sql, (batch_id, project, project))
        return BatchRecord(*rows[0]) if rows else None

    async def list_batches(
        self, project: str, *, after: str | None, limit: int
    ) -> list[BatchRecord] | None:
        before = 2**63 - 1
        if after is not None:
            rows = await self._rows(
                "SELECT seq FROM batches WHERE id = ? AND project = ?", (after, project)
            )
            if not rows:
                return None
            before = rows[0][0]
        sql = (
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE project = ? AND seq < ? "
            "ORDER BY seq DESC LIMIT ?"
        )
        return [BatchRecord(*row) for row in await self._rows(sql, (project, before, limit))]

    async def update_batch(
        self, batch_id: str, changes: Mapping[str, object], *, statuses: Sequence[str] = ()
    ) -> bool:
        names = list(changes)
        if not names or not BATCH_MUTABLE.issuperset(names):
            raise ValueError(f"not columns update_batch may change: {names}")
        sets = ", ".join(f"{name} = ?" for name in names)
        sql = f"UPDATE batches SET {sets} WHERE id = ?"
        params: list[object] = [changes[name] for name in names] + [batch_id]
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            params += statuses
        return bool(await self._write(sql + " RETURNING 1", params))

    async def active_batches(self, statuses: Sequence[str] = BATCH_ACTIVE) -> list[str]:
        marks = ",".join("?" * len(statuses))
        sql = f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY seq"
        return [row[0] for row in await self._rows(sql, tuple(statuses))]

    async def add_batch_requests(self, batch_id: str, requests: Sequence[tuple[int, str]]) -> None:
        sql = "INSERT OR IGNORE INTO batch_requests (batch_id, line, custom_id) VALUES (?, ?, ?)"
        async with self._transaction() as conn:
            with _neutral_errors():
                await conn.executemany(sql, [(batch_id, line, cid) for line, cid in requests])

    async def clear_batch_requests(self, batch_id: str) -> None:
        await self._write("DELETE FROM batch_requests WHERE batch_id = ?", (batch_id,))

    async def pending_batch_requests(
        self, batch_id: str, *, after_line: int, limit: int
    ) -> list[tuple[int, str]]:
        sql = (
            "SELECT line, custom_id FROM batch_requests WHERE batch_id = ? AND line > ? "
            "AND state = 'pending' ORDER BY line LIMIT ?"
        )
        return [(row[0], row[1]) for row in await self._rows(sql, (batch_id, after_line, limit))]

    async def record_batch_results(self, batch_id: str, results: Sequence[BatchResult]) -> int:
        """Per chunk, one UPDATE ... FROM (VALUES ...) whose RETURNING names the rows that
        were still pending; the batch's counts grow by exactly those, in the same
        transaction, which first checks that the batch is still `in_progress`."""
        by_line = {result.line: result for result in results}
        done = failed = 0
        usage = [0, 0, 0, 0]
        async with self._transaction() as conn:
            running = await self._run(
                conn, "SELECT 1 FROM batches WHERE id = ? AND status = 'in_progress'", (batch_id,)
            )
            if not running:
                return 0
            rows = list(by_line.values())
            for start in range(0, len(rows), _CHUNK // 2):
                chunk = rows[start : start + _CHUNK // 2]
                values = ",".join(["(?, ?, ?)"] * len(chunk))
                sql = (
                    f"WITH given(line, state, result) AS (VALUES {values}) "
                    "UPDATE batch_requests SET state = given.state, result = given.result "
                    "FROM given WHERE batch_requests.batch_id = ? "
                    "AND batch_requests.line = given.line AND batch_requests.state = 'pending' "
                    "RETURNING batch_requests.line"
                )
                params: list[object] = []
                for result in chunk:
                    params += (result.line, "done" if result.ok else "failed", result.result)
                for (line,) in await self._run(conn, sql, [*params, batch_id]):
                    result = by_line[line]
                    if result.ok:
                        done += 1
                    else:
                        failed += 1
                    usage = [a + b for a, b in zip(usage, result.usage, strict=True)]
            if done or failed:
                await self._run(
                    conn,
                    "UPDATE batches SET completed = completed + ?, failed = failed + ?, "
                    "input_tokens = input_tokens + ?, output_tokens = output_tokens + ?, "
                    "cached_tokens = cached_tokens + ?, reasoning_tokens = reasoning_tokens + ? "
                    "WHERE id = ?",
                    (done, failed, *usage, batch_id),
                )
        return done + failed

    async def forget_batch(self, batch_id: str, lease: str) -> None:
        await self._write(
            "UPDATE batch_requests SET result = NULL WHERE batch_id = ? AND result IS NOT NULL",
            (batch_id,),
        )
        self._leases.pop(lease, None)

    async def batch_results(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int, max_bytes: int | None = None
    ) -> list[tuple[int, str]]:
        state = "done" if ok else "failed"
        if max_bytes is not None:
            # The sizes first (no result leaves the database), then the rows that fit.
            sizes = await self._rows(
                "SELECT line, length(CAST(result AS BLOB)) FROM batch_requests "
                "WHERE batch_id = ? AND line > ? AND state = ? ORDER BY line LIMIT ?",
                (batch_id, after_line, state, limit),
            )
            limit = rows_within(sizes, max_bytes)
        sql = (
            "SELECT line, result FROM batch_requests WHERE batch_id = ? AND line > ? "
            "AND state = ? ORDER BY line LIMIT ?"
        )
        return [
            (row[0], row[1]) for row in await self._rows(sql, (batch_id, after_line, state, limit))
        ]


def _usage_sql(projects: int, excluded: int) -> str:
    """Live files and bytes held per project (params: the projects twice, then the uploads
    excluded): its files (counters) and the parts of its unfinished uploads."""
    marks = ",".join("?" * projects)
    return (
        "SELECT project, SUM(files), SUM(bytes) FROM ("
        f"  SELECT project, files, bytes FROM file_counts WHERE project IN ({marks})"
        "   UNION ALL"
        "   SELECT o.project, 0, p.bytes"
        "   FROM uploads o CROSS JOIN upload_parts p ON p.upload_id = o.id"
        f"  WHERE o.project IN ({marks}) AND o.status IN ('pending', 'completing')"
        f"  AND o.id NOT IN ({','.join('?' * excluded)})"
        ") GROUP BY project"
    )


def _pick(records: Sequence[FileRecord], verdicts: Sequence[InsertVerdict]) -> list[FileRecord]:
    return [r for r, v in zip(records, verdicts, strict=True) if v == "inserted"]


async def _insert_files(
    conn: aiosqlite.Connection, records: Sequence[FileRecord], *, skip_taken: bool
) -> list[str]:
    """Insert rows, `_CHUNK` per statement; returns the ids inserted. With `skip_taken`, a
    row whose id exists is skipped; without, it fails the statement (IntegrityError)."""
    conflict = " ON CONFLICT (id) DO NOTHING" if skip_taken else ""
    inserted: list[str] = []
    for start in range(0, len(records), _CHUNK):
        chunk = records[start : start + _CHUNK]
        marks = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        params = [
            value
            for r in chunk
            for value in (
                r.id,
                r.project,
                r.filename,
                r.purpose,
                r.bytes,
                r.sha256,
                r.created_at,
                r.expires_at,
                r.status,
                r.status_details,
            )
        ]
        sql = f"INSERT INTO files ({_COLUMNS}) VALUES {marks}{conflict} RETURNING id"
        inserted += [row[0] for row in await SqliteMetadata._run(conn, sql, params)]
    return inserted


def database_initialized(path: Path) -> bool:
    """True if `path` is a filesd database: it exists and migrations have run in it.

    A missing file, an empty one, or a SQLite file no migration ran in (user_version 0) is
    none: opening it would start a new, empty store. Blocking; never creates the file.
    """
    if not path.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0]) > 0
    except sqlite3.DatabaseError:
        return True  # not readable as SQLite: let opening it fail loudly, not start anew


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _record(row: Iterable[Any] | sqlite3.Row) -> FileRecord:
    return FileRecord.from_row(row)


# --- backup (a consistent copy taken while a server may be running) ----------------------------


def snapshot_database(source: Path, dest: Path) -> list[str]:
    """Copy the database at `source` to `dest` with SQLite's backup API (one consistent
    snapshot); returns the blob digests the copy's live files refer to. Blocking."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(dest)) as copy,
    ):
        src.backup(copy)
        sql = "SELECT DISTINCT sha256 FROM files WHERE deleted_at IS NULL"
        return [row[0] for row in copy.execute(sql)]


def finish_snapshot(dest: Path, gone: Sequence[str], *, now: int) -> int:
    """Make a snapshot a state to start from, in one transaction: files whose blobs were
    reclaimed meanwhile are marked deleted, uploads in progress expired (their parts are not
    copied). Returns the live files left. Blocking."""
    with contextlib.closing(sqlite3.connect(dest, isolation_level=None)) as copy:
        copy.execute("BEGIN IMMEDIATE")
        try:
            copy.executemany(
                "UPDATE files SET deleted_at = ? WHERE sha256 = ? AND deleted_at IS NULL",
                [(now, digest) for digest in gone],
            )
            copy.execute("DELETE FROM upload_parts")
            copy.execute(
                "UPDATE uploads SET status = 'expired' WHERE status IN ('pending', 'completing')"
            )
            files = copy.execute("SELECT COUNT(*) FROM files WHERE deleted_at IS NULL").fetchone()
            copy.execute("COMMIT")
        except BaseException:
            copy.execute("ROLLBACK")
            raise
    return int(files[0])
