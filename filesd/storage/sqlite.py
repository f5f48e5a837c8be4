"""SQLite metadata (the default `MetadataStore`): its connections and every SQL statement.

The decisions of the contract (verdicts, quotas, claims, leases) are `SharedMetadata`'s; this
module gives it the primitives (`_file_writes`, `_coordination`, ...) and runs the plain
statements. Instances, leases, claims and reclaims are kept in memory (`InProcessCoordination`):
only this process can open the database (the data dir's lock), so its instances are the only
ones, and no claim costs a write. The schema is in `sqlite_schema.py`.

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
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ..models import (
    BatchRecord,
    FileRecord,
    KeyRecord,
    PartRecord,
    ProjectUsage,
    StorageTotals,
    UploadRecord,
)
from .base import BATCH_COLUMNS, BATCH_MUTABLE, SchemaTooNew
from .metadata import CoordinationState, InProcessCoordination, SharedMetadata
from .rules import Usage
from .sqlite_schema import DB_NAME, MIGRATIONS, database_initialized, database_path
from .sqlite_writes import (
    CHUNK,
    COLUMNS,
    BatchWrites,
    Writes,
    neutral_error,
    neutral_errors,
    run,
    usage,
)

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "SqliteMetadata",
    "database_initialized",
    "database_path",
    "finish_snapshot",
    "neutral_error",
    "snapshot_database",
]

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


class SqliteMetadata(SharedMetadata):
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
        self._memory = InProcessCoordination()
        # Held across "is the blob referred to?" and "mark it reclaimed", and across "is the
        # claim held?" and "insert the row": the two must not interleave (see Coordination).
        self._coordinating = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteMetadata:
        opened: list[aiosqlite.Connection] = []
        on_loop: _OnLoopReader | None = None
        try:
            with neutral_errors():
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

    @property
    def shared(self) -> bool:
        return False

    # --- plumbing -------------------------------------------------------------------------------

    async def _rows(self, sql: str, params: Any = ()) -> list[Any]:
        """All rows of a read-only statement, from the reader, in one trip to its thread."""
        with neutral_errors():
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
                with neutral_errors():
                    raise
        return await self._rows(sql, params)

    async def _write(self, sql: str, params: Any = ()) -> list[Any]:
        """One writing statement on its own; the rows it returns (RETURNING). To count the
        rows a statement changed, it returns one row for each (`RETURNING 1`)."""
        async with self._writing:
            return await run(self._conn, sql, params)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT on the writer, ROLLBACK if anything inside fails."""
        async with self._writing:
            try:
                # Inside the try: a cancel while BEGIN runs (it runs all the same) rolls back.
                await run(self._conn, "BEGIN IMMEDIATE")
                yield self._conn
                await run(self._conn, "COMMIT")
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
        for start in range(0, len(values), CHUNK):
            chunk = values[start : start + CHUNK]
            rows += await self._rows(sql.format(marks=",".join("?" * len(chunk))), chunk)
        return rows

    # --- the primitives of SharedMetadata -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _file_writes(
        self, projects: Collection[str], digests: Collection[str], *, simple: bool
    ) -> AsyncIterator[Writes]:
        """Under `_coordinating` (claims are checked in memory); a simple insert runs as its own
        statement(s), anything else inside BEGIN IMMEDIATE on the one writer. Claims ended in
        it end once it has committed."""
        async with self._coordinating:
            if simple:
                writes = self._writes(in_transaction=False)
                yield writes
            else:
                async with self._transaction():
                    writes = self._writes(in_transaction=True)
                    yield writes
            for ended, instance in writes.ended:
                self._memory.remove(collections.Counter(ended), instance)

    def _writes(self, *, in_transaction: bool) -> Writes:
        return Writes(
            self._conn,
            in_transaction=in_transaction,
            writing=self._writing,
            transaction=self._transaction,
            memory=self._memory,
        )

    @contextlib.asynccontextmanager
    async def _part_writes(self, upload_id: str) -> AsyncIterator[Writes]:
        async with self._transaction():
            yield self._writes(in_transaction=True)

    @contextlib.asynccontextmanager
    async def _coordination(
        self, digests: Collection[str] = (), *, lease: str | None = None
    ) -> AsyncIterator[CoordinationState]:
        async with self._coordinating:
            yield self._memory.bind(self.blobs_in_use)

    @contextlib.asynccontextmanager
    async def _batch_writes(self, batch_id: str) -> AsyncIterator[BatchWrites]:
        async with self._transaction() as conn:
            yield BatchWrites(conn)

    async def _completing_uploads(self) -> list[tuple[UploadRecord, str | None]]:
        sql = f"SELECT {_UPLOAD_COLUMNS}, owner FROM uploads WHERE status = 'completing'"
        return [(UploadRecord(*row[:-1]), row[-1]) for row in await self._rows(sql)]

    async def _result_sizes(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int
    ) -> list[tuple[int, int | None]]:
        sql = (
            "SELECT line, length(CAST(result AS BLOB)) FROM batch_requests "
            "WHERE batch_id = ? AND line > ? AND state = ? ORDER BY line LIMIT ?"
        )
        params = (batch_id, after_line, "done" if ok else "failed", limit)
        return [(row[0], row[1]) for row in await self._rows(sql, params)]

    async def _results(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int
    ) -> list[tuple[int, str]]:
        sql = (
            "SELECT line, result FROM batch_requests WHERE batch_id = ? AND line > ? "
            "AND state = ? ORDER BY line LIMIT ?"
        )
        params = (batch_id, after_line, "done" if ok else "failed", limit)
        return [(row[0], row[1]) for row in await self._rows(sql, params)]

    async def _forget_results(self, batch_id: str) -> None:
        await self._write(
            "UPDATE batch_requests SET result = NULL WHERE batch_id = ? AND result IS NOT NULL",
            (batch_id,),
        )

    # --- files ----------------------------------------------------------------------------------

    async def existing_ids(self, ids: Sequence[str]) -> list[str]:
        rows = await self._chunked_rows("SELECT id FROM files WHERE id IN ({marks})", ids)
        return [row[0] for row in rows]

    async def file_exists(self, file_id: str) -> bool:
        """True if a row with this id exists, in any state."""
        return bool(await self._hot_rows("SELECT 1 FROM files WHERE id = ?", (file_id,)))

    async def get_live_file(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        sql = f"SELECT {COLUMNS} FROM files WHERE id = :id AND project = :project AND {_LIVE}"
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
        padding = ", NULL" * COLUMNS.count(",")
        sql = f"""
            SELECT COALESCE((SELECT SUM(files) FROM file_counts WHERE {count_where}), 0)
                     - (SELECT COUNT(*) FROM files WHERE {count_where}
                        AND deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= :now),
                   {cursor}, NULL, NULL{padding}
            UNION ALL
            SELECT * FROM (
                SELECT NULL, NULL, seq, {COLUMNS} FROM files WHERE {page_where}
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
    ) -> dict[str, Usage]:
        """What each project holds against its quota (see `Usage`), not counting the parts
        of `excluding_uploads`. One statement per chunk of projects, by index."""
        found = await usage(self._rows, projects, excluding_uploads)
        return {p: found.get(p, Usage()) for p in projects}

    async def mark_deleted(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        """Soft-delete a live file; returns it, or None if there was no such live file."""
        sql = (
            f"UPDATE files SET deleted_at = :now "
            f"WHERE id = :id AND project = :project AND {_LIVE} RETURNING {COLUMNS}"
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
        rows = await run(self._background, sql, {"now": now, "limit": limit})
        return [row[0] for row in rows]

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
            live = await run(
                conn, f"SELECT COUNT(*) FROM files WHERE deleted_at IS NULL AND ({where})", scope
            )
            tokens = await run(
                conn,
                "DELETE FROM upload_parts WHERE upload_id IN "
                f"(SELECT id FROM uploads WHERE {where}) RETURNING token",
                scope,
            )
            await run(conn, f"DELETE FROM uploads WHERE {where}", scope)
            await run(conn, f"DELETE FROM files WHERE {where}", scope)
            await run(
                conn,
                "DELETE FROM batch_requests WHERE batch_id IN "
                f"(SELECT id FROM batches WHERE {where})",
                scope,
            )
            await run(conn, f"DELETE FROM batches WHERE {where}", scope)
        return int(live[0][0]), [row[0] for row in tokens]

    async def live_files(self, project: str | None) -> list[FileRecord]:
        """Every live file (of one project, or of all), in insertion order."""
        sql = (
            f"SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL "
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
            await run(
                conn, "DELETE FROM files WHERE deleted_at IS NOT NULL AND deleted_at < ?", (before,)
            )
            purged = int((await run(conn, "SELECT changes()"))[0][0])
            await run(
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
        params = (new, file_id, owner, upload_id, old, attempt, attempt)
        return len(await self._write(sql, params)) == 1

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
        return [row[0] for row in await run(self._background, sql, (now,))]

    async def finished_uploads_with_parts(self) -> list[str]:
        """Uploads no longer pending whose parts are still recorded (a sweep was cut short)."""
        sql = (
            "SELECT DISTINCT upload_id FROM upload_parts JOIN uploads ON uploads.id = upload_id "
            "WHERE uploads.status IN ('completed', 'cancelled', 'expired')"
        )
        return [row[0] for row in await self._rows(sql)]

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

    async def _active_batches(self, statuses: Sequence[str]) -> list[tuple[str, str]]:
        marks = ",".join("?" * len(statuses))
        sql = f"SELECT id, project FROM batches WHERE status IN ({marks}) ORDER BY seq"
        return [(row[0], row[1]) for row in await self._rows(sql, tuple(statuses))]

    async def _last_started(self, projects: Collection[str]) -> dict[str, int]:
        sql = (
            "SELECT p.value, (SELECT max(in_progress_at) FROM batches WHERE project = p.value) "
            "FROM json_each(?) AS p"
        )
        rows = await self._rows(sql, (json.dumps(sorted(projects)),))
        return {row[0]: int(row[1]) for row in rows if row[1] is not None}

    async def add_batch_requests(self, batch_id: str, requests: Sequence[tuple[int, str]]) -> None:
        sql = "INSERT OR IGNORE INTO batch_requests (batch_id, line, custom_id) VALUES (?, ?, ?)"
        async with self._transaction() as conn:
            with neutral_errors():
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
