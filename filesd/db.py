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

from .models import FileRecord, PartRecord, UploadRecord

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
)

_COLUMNS = (
    "id, project, filename, purpose, bytes, sha256, created_at, expires_at, status, status_details"
)
_LIVE = "deleted_at IS NULL AND (expires_at IS NULL OR expires_at > :now)"
_UPLOAD_COLUMNS = (
    "id, project, filename, purpose, mime_type, bytes, created_at, expires_at, "
    "file_expires_after, status, file_id"
)


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

    async def file_exists(self, file_id: str) -> bool:
        """True if a row with this id exists, in any state."""
        async with self._conn.execute("SELECT 1 FROM files WHERE id = ?", (file_id,)) as cur:
            return await cur.fetchone() is not None

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

    async def delete_expired_files(self, *, now: int, limit: int) -> list[str]:
        """Soft-delete up to `limit` expired files; returns their blob digests."""
        sql = (
            "UPDATE files SET deleted_at = expires_at WHERE seq IN ("
            "  SELECT seq FROM files WHERE deleted_at IS NULL AND expires_at IS NOT NULL"
            "  AND expires_at <= :now LIMIT :limit"
            ") RETURNING sha256"
        )
        async with self._conn.execute(sql, {"now": now, "limit": limit}) as cur:
            return [row[0] for row in await cur.fetchall()]

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

    # --- uploads ------------------------------------------------------------------------------

    async def insert_upload(self, upload: UploadRecord) -> None:
        await self._conn.execute(
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
        async with self._conn.execute(sql, (upload_id, project)) as cur:
            row = await cur.fetchone()
        return UploadRecord(*row) if row is not None else None

    async def set_upload_status(
        self, upload_id: str, *, old: str, new: str, file_id: str | None = None
    ) -> bool:
        """Move an upload from status `old` to `new`; False if it was not in `old`."""
        sql = "UPDATE uploads SET status = ?, file_id = ? WHERE id = ? AND status = ?"
        async with self._conn.execute(sql, (new, file_id, upload_id, old)) as cur:
            return cur.rowcount == 1

    async def insert_part(self, part: PartRecord, *, now: int) -> bool:
        """Add a part to a pending, unexpired upload; False (nothing added) otherwise."""
        sql = (
            "INSERT INTO upload_parts (id, upload_id, token, bytes, created_at) "
            "SELECT ?, ?, ?, ?, ? FROM uploads WHERE id = ? AND status = 'pending' "
            "AND expires_at > ?"
        )
        params = (part.id, part.upload_id, part.token, part.bytes, part.created_at)
        async with self._conn.execute(sql, (*params, part.upload_id, now)) as cur:
            return cur.rowcount == 1

    async def get_parts(self, upload_id: str) -> list[PartRecord]:
        sql = "SELECT id, upload_id, token, bytes, created_at FROM upload_parts WHERE upload_id = ?"
        async with self._conn.execute(sql, (upload_id,)) as cur:
            return [PartRecord(*row) for row in await cur.fetchall()]

    async def delete_parts(self, upload_id: str) -> list[str]:
        """Remove the part rows of an upload; returns their file tokens."""
        sql = "DELETE FROM upload_parts WHERE upload_id = ? RETURNING token"
        async with self._conn.execute(sql, (upload_id,)) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def expire_uploads(self, *, now: int) -> list[str]:
        """Mark pending uploads past their expiry as expired; returns their ids."""
        sql = (
            "UPDATE uploads SET status = 'expired' "
            "WHERE status = 'pending' AND expires_at <= ? RETURNING id"
        )
        async with self._conn.execute(sql, (now,)) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def uploads_in_status(self, status: str) -> list[UploadRecord]:
        sql = f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE status = ?"
        async with self._conn.execute(sql, (status,)) as cur:
            return [UploadRecord(*row) for row in await cur.fetchall()]

    async def part_tokens_in_use(self, tokens: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(tokens), 500):
            chunk = tokens[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT token FROM upload_parts WHERE token IN ({marks})"
            async with self._conn.execute(sql, chunk) as cur:
                found.update(row[0] for row in await cur.fetchall())
        return found


def _record(row: Iterable[Any] | sqlite3.Row) -> FileRecord:
    return FileRecord(*row)
