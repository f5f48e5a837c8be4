"""Inside SQLite's transactions: the facts `SharedMetadata` decides on and the writes it
decides (`Writes`, `BatchWrites`), and the statements they share with `SqliteMetadata`.

Everything here runs on the one writer connection, inside BEGIN IMMEDIATE, or (a simple
insert) statement by statement under the writer's lock. Failures come out neutral, by SQLite's
result codes (`neutral_error`), never by message text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiosqlite

from ..models import BatchResult, FileRecord, PartRecord
from .base import StorageBusy, StorageFull
from .metadata import InProcessCoordination
from .rules import BatchSums, PartFacts, Usage

COLUMNS = (
    "id, project, filename, purpose, bytes, sha256, created_at, expires_at, status, status_details"
)

# Rows per INSERT and values per IN (...): far below SQLite's limit on bound variables.
CHUNK = 500

# The facts of `insert_part`, in one statement: the upload is pending, its parts' bytes and
# count, and the project's bytes (live files and the parts of its unfinished uploads). Every
# table is searched by an index (uploads by project and status: migration 8), never scanned:
# this runs inside BEGIN IMMEDIATE on the one writer.
PART_FACTS = """
    SELECT u.status = 'pending' AND u.expires_at > :now, u.bytes,
        (SELECT COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = u.id),
        (SELECT COUNT(*) FROM upload_parts WHERE upload_id = u.id),
        CASE WHEN :project_bytes THEN
            (SELECT COALESCE(SUM(bytes), 0) FROM file_counts WHERE project = u.project)
            + (SELECT COALESCE(SUM(p.bytes), 0)
               FROM uploads o CROSS JOIN upload_parts p ON p.upload_id = o.id
               WHERE o.project = u.project AND o.status IN ('pending', 'completing'))
        ELSE 0 END
    FROM uploads u WHERE u.id = :upload_id
"""


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
def neutral_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as error:
        neutral = neutral_error(error)
        if neutral is None:
            raise
        raise neutral from error


async def run(conn: aiosqlite.Connection, sql: str, params: Any = ()) -> list[Any]:
    """All rows a statement returns, in one trip to the connection's thread."""
    with neutral_errors():
        return list(await conn.execute_fetchall(sql, params))


class Writes:
    """`Writes` on the one writer `conn`: inside BEGIN IMMEDIATE, or (`in_transaction` false,
    for a simple insert) statement by statement under the writer's lock `writing`, opening a
    `transaction()` only when one insert takes several statements. Claims are `memory`'s."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        in_transaction: bool,
        writing: asyncio.Lock,
        transaction: Callable[[], AbstractAsyncContextManager[aiosqlite.Connection]],
        memory: InProcessCoordination,
    ) -> None:
        self._conn = conn
        self._in_transaction = in_transaction
        self._writing = writing
        self._transaction = transaction
        self._memory = memory
        # Claims to end once the writes are committed: (digests, instance).
        self.ended: list[tuple[list[str], str]] = []

    async def _run(self, sql: str, params: Any) -> list[Any]:
        if self._in_transaction:
            return await run(self._conn, sql, params)
        async with self._writing:
            return await run(self._conn, sql, params)

    async def claimed(self, instance: str, digests: Sequence[str]) -> set[str]:
        return self._memory.held(instance, digests)

    async def taken(self, ids: Sequence[str]) -> set[str]:
        taken: set[str] = set()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            sql = f"SELECT id FROM files WHERE id IN ({','.join('?' * len(chunk))})"
            taken.update(row[0] for row in await self._run(sql, chunk))
        return taken

    async def usage(
        self, projects: Sequence[str], excluding_uploads: Sequence[str]
    ) -> dict[str, Usage]:
        return await usage(self._run, projects, excluding_uploads)

    async def complete_upload(self, upload_id: str, file_id: str) -> bool:
        sql = (
            "UPDATE uploads SET status = 'completed', owner = NULL "
            "WHERE id = ? AND status = 'completing' AND file_id = ? RETURNING 1"
        )
        return bool(await self._run(sql, (upload_id, file_id)))

    async def insert(self, records: Sequence[FileRecord], *, skip_taken: bool) -> list[str]:
        if self._in_transaction:
            return await insert_files(self._conn, records, skip_taken=skip_taken)
        if len(records) > CHUNK:  # several statements: one transaction
            async with self._transaction() as conn:
                return await insert_files(conn, records, skip_taken=skip_taken)
        async with self._writing:
            return await insert_files(self._conn, records, skip_taken=skip_taken)

    async def part_facts(
        self, upload_id: str, now: int, *, project_bytes: bool
    ) -> PartFacts | None:
        params = {"now": now, "upload_id": upload_id, "project_bytes": project_bytes}
        rows = await self._run(PART_FACTS, params)
        if not rows:
            return None
        return PartFacts(bool(rows[0][0]), *(int(v) for v in rows[0][1:]))

    async def add_part(self, part: PartRecord) -> None:
        await self._run(
            "INSERT INTO upload_parts (id, upload_id, token, bytes, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (part.id, part.upload_id, part.token, part.bytes, part.created_at),
        )

    async def end_claims(self, digests: Sequence[str], instance: str) -> None:
        self.ended.append((list(digests), instance))


class BatchWrites:
    """`BatchWrites` inside BEGIN IMMEDIATE on the one writer (so the status read holds)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def running(self, batch_id: str) -> bool:
        sql = "SELECT 1 FROM batches WHERE id = ? AND status = 'in_progress'"
        return bool(await run(self._conn, sql, (batch_id,)))

    async def record(self, batch_id: str, results: Sequence[BatchResult]) -> list[int]:
        """Per chunk, one UPDATE ... FROM (VALUES ...) whose RETURNING names the rows that
        were still pending."""
        recorded: list[int] = []
        for start in range(0, len(results), CHUNK // 2):
            chunk = results[start : start + CHUNK // 2]
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
            rows = await run(self._conn, sql, [*params, batch_id])
            recorded += [row[0] for row in rows]
        return recorded

    async def add_sums(self, batch_id: str, sums: BatchSums) -> None:
        await run(
            self._conn,
            "UPDATE batches SET completed = completed + ?, failed = failed + ?, "
            "input_tokens = input_tokens + ?, output_tokens = output_tokens + ?, "
            "cached_tokens = cached_tokens + ?, reasoning_tokens = reasoning_tokens + ? "
            "WHERE id = ?",
            (*dataclasses.astuple(sums), batch_id),
        )


async def usage(
    rows: Any, projects: Sequence[str], excluding_uploads: Sequence[str]
) -> dict[str, Usage]:
    """What each project holds (projects holding nothing left out), through `rows(sql,
    params)`: one statement per chunk of projects."""
    excluded = list(excluding_uploads)
    found: dict[str, Usage] = {}
    for start in range(0, len(projects), CHUNK):
        chunk = list(projects[start : start + CHUNK])
        sql = usage_sql(len(chunk), len(excluded))
        for row in await rows(sql, [*chunk, *chunk, *excluded]):
            found[row[0]] = Usage(int(row[1]), int(row[2]))
    return found


def usage_sql(projects: int, excluded: int) -> str:
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


async def insert_files(
    conn: aiosqlite.Connection, records: Sequence[FileRecord], *, skip_taken: bool
) -> list[str]:
    """Insert rows, `CHUNK` per statement; returns the ids inserted. With `skip_taken`, a
    row whose id exists is skipped; without, it fails the statement (IntegrityError)."""
    conflict = " ON CONFLICT (id) DO NOTHING" if skip_taken else ""
    inserted: list[str] = []
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
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
        sql = f"INSERT INTO files ({COLUMNS}) VALUES {marks}{conflict} RETURNING id"
        inserted += [row[0] for row in await run(conn, sql, params)]
    return inserted
