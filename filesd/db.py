"""SQLite metadata: schema migrations and the queries the store needs.

One connection (aiosqlite runs it in its own thread), WAL mode, `synchronous=FULL` so a committed
row survives power loss, not just a process crash. Rows are never removed by the API: a delete
sets `deleted_at`. `seq` is the insertion order and the one ordering of a project's files, so
paging by offset or by cursor never skips or repeats a file, even within one second.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from .models import FileRecord

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
)

_COLUMNS = (
    "id, project, filename, purpose, bytes, sha256, created_at, expires_at, status, status_details"
)
_LIVE = "deleted_at IS NULL AND (expires_at IS NULL OR expires_at > :now)"


class SchemaTooNew(Exception):
    """The database was written by a newer filesd than this one."""


class Database:
    """The metadata database. Create with `await Database.open(path)`."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> Database:
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = FULL")
            await conn.execute("PRAGMA busy_timeout = 5000")
            db = cls(conn)
            await db._migrate()
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def schema_version(self) -> int:
        async with self._conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

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

    async def insert_file(self, record: FileRecord) -> None:
        await self._conn.execute(
            f"INSERT INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.project,
                record.filename,
                record.purpose,
                record.bytes,
                record.sha256,
                record.created_at,
                record.expires_at,
                record.status,
                record.status_details,
            ),
        )

    async def get_live_file(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        sql = f"SELECT {_COLUMNS} FROM files WHERE id = :id AND project = :project AND {_LIVE}"
        async with self._conn.execute(sql, {"id": file_id, "project": project, "now": now}) as cur:
            row = await cur.fetchone()
        return _record(row) if row is not None else None

    async def file_seq(self, project: str, file_id: str) -> int | None:
        """The position of any file of the project, deleted or not (a cursor stays valid)."""
        sql = "SELECT seq FROM files WHERE id = ? AND project = ?"
        async with self._conn.execute(sql, (file_id, project)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None else None

    async def list_live_files(
        self,
        project: str,
        *,
        now: int,
        purpose: str | None,
        descending: bool,
        after_seq: int | None,
        limit: int,
        offset: int,
    ) -> list[FileRecord]:
        where = [f"project = :project AND {_LIVE}"]
        params: dict[str, Any] = {"project": project, "now": now, "limit": limit, "offset": offset}
        if purpose is not None:
            where.append("purpose = :purpose")
            params["purpose"] = purpose
        if after_seq is not None:
            where.append("seq < :after" if descending else "seq > :after")
            params["after"] = after_seq
        sql = (
            f"SELECT {_COLUMNS} FROM files WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'DESC' if descending else 'ASC'} LIMIT :limit OFFSET :offset"
        )
        async with self._conn.execute(sql, params) as cur:
            rows = await cur.fetchall()
        return [_record(row) for row in rows]

    async def count_live_files(self, project: str, *, now: int, purpose: str | None) -> int:
        sql = f"SELECT COUNT(*) FROM files WHERE project = :project AND {_LIVE}"
        params: dict[str, Any] = {"project": project, "now": now}
        if purpose is not None:
            sql += " AND purpose = :purpose"
            params["purpose"] = purpose
        async with self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def mark_deleted(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        """Soft-delete a live file; returns it, or None if there was no such live file."""
        sql = (
            f"UPDATE files SET deleted_at = :now "
            f"WHERE id = :id AND project = :project AND {_LIVE} RETURNING {_COLUMNS}"
        )
        async with self._conn.execute(sql, {"id": file_id, "project": project, "now": now}) as cur:
            row = await cur.fetchone()
        return _record(row) if row is not None else None

    async def blob_in_use(self, sha256: str) -> bool:
        """True if any file not deleted refers to this blob (expired ones count until swept)."""
        sql = "SELECT 1 FROM files WHERE sha256 = ? AND deleted_at IS NULL LIMIT 1"
        async with self._conn.execute(sql, (sha256,)) as cur:
            return await cur.fetchone() is not None

    async def blobs_in_use(self, digests: Sequence[str]) -> set[str]:
        """The subset of `digests` that some file not deleted refers to."""
        found: set[str] = set()
        for start in range(0, len(digests), 500):
            chunk = digests[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT DISTINCT sha256 FROM files "
                f"WHERE deleted_at IS NULL AND sha256 IN ({marks})"
            )
            async with self._conn.execute(sql, chunk) as cur:
                found.update(row[0] for row in await cur.fetchall())
        return found


def _record(row: Iterable[Any] | sqlite3.Row) -> FileRecord:
    return FileRecord(*row)
