"""SQLite metadata: schema migrations and the queries the store needs.

Three connections, each with its own aiosqlite thread, in WAL mode with `synchronous=FULL` (a
committed row survives power loss, not just a process crash): one for the requests' writes, one
read-only for reads (in WAL, readers never wait for writers, so a read never queues behind a
write or its fsync), and one for background sweeps that does not wait on a busy database, so a
sweep meeting a lock gives up until its next round instead of holding up the requests' writes.

Rows are never removed by the API: a delete sets `deleted_at`. `seq` is the insertion order and
the one ordering of a project's files, so paging by offset or by cursor never skips or repeats a
file, even within one second.
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

    BUSY_TIMEOUT_MS = 5000

    def __init__(
        self,
        conn: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        background: aiosqlite.Connection,
    ) -> None:
        self._conn = conn
        self._reader = reader
        self._background = background

    @classmethod
    async def open(cls, path: Path) -> Database:
        opened: list[aiosqlite.Connection] = []
        try:
            for busy_ms in (cls.BUSY_TIMEOUT_MS, cls.BUSY_TIMEOUT_MS, 0):
                conn = await aiosqlite.connect(path, isolation_level=None)
                opened.append(conn)
                await conn.execute("PRAGMA journal_mode = WAL")
                await conn.execute("PRAGMA synchronous = FULL")
                await conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            db = cls(*opened)
            await db._migrate()
            await opened[1].execute("PRAGMA query_only = ON")
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        return db

    async def close(self) -> None:
        for conn in (self._conn, self._reader, self._background):
            await conn.close()

    async def schema_version(self) -> int:
        rows = await self._rows("PRAGMA user_version")
        return int(rows[0][0])

    async def _rows(self, sql: str, params: Any = ()) -> list[Any]:
        """All rows of a read-only statement, from the reader, in one trip to its thread."""
        return list(await self._reader.execute_fetchall(sql, params))

    async def _write_rows(
        self, sql: str, params: Any = (), *, conn: aiosqlite.Connection | None = None
    ) -> list[Any]:
        """All rows a writing statement returns (RETURNING), in one trip to the writer's thread."""
        return list(await (conn or self._conn).execute_fetchall(sql, params))

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

    async def insert_files(self, records: Sequence[FileRecord]) -> None:
        """Insert rows in one statement: one transaction, one commit, one trip to the thread."""
        marks = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(records))
        params = [
            value
            for r in records
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
        await self._conn.execute(f"INSERT INTO files ({_COLUMNS}) VALUES {marks}", params)

    async def file_exists(self, file_id: str) -> bool:
        """True if a row with this id exists, in any state."""
        return bool(await self._rows("SELECT 1 FROM files WHERE id = ?", (file_id,)))

    async def get_live_file(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        sql = f"SELECT {_COLUMNS} FROM files WHERE id = :id AND project = :project AND {_LIVE}"
        rows = await self._rows(sql, {"id": file_id, "project": project, "now": now})
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
        if after is not None:
            page_where += f" AND seq {'<' if descending else '>'} (SELECT after_seq FROM cursor)"
        order = "DESC" if descending else "ASC"
        sql = f"""
            WITH cursor (after_seq) AS (
                SELECT (SELECT seq FROM files WHERE id = :after AND project = :project)
            ),
            counted (total) AS (
                SELECT COALESCE((SELECT SUM(files) FROM file_counts WHERE {count_where}), 0)
                     - (SELECT COUNT(*) FROM files WHERE {count_where}
                        AND deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= :now)
            ),
            page AS (
                SELECT seq, {_COLUMNS} FROM files WHERE {page_where}
                ORDER BY seq {order} LIMIT :limit OFFSET :offset
            )
            SELECT counted.total, cursor.after_seq, page.*
            FROM counted CROSS JOIN cursor LEFT JOIN page ON 1
            ORDER BY page.seq {order}
        """
        rows = await self._rows(sql, params)
        total, after_seq = rows[0][0], rows[0][1]
        if after is not None and after_seq is None:
            return None
        return [_record(row[3:]) for row in rows if row[2] is not None], int(total)

    async def usage(self, projects: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Live files and bytes of each project (files not yet swept after expiry count)."""
        marks = ",".join("?" * len(projects))
        sql = (
            "SELECT project, SUM(files), SUM(bytes) FROM file_counts "
            f"WHERE project IN ({marks}) GROUP BY project"
        )
        found = {row[0]: (int(row[1]), int(row[2])) for row in await self._rows(sql, projects)}
        return {p: found.get(p, (0, 0)) for p in projects}

    async def mark_deleted(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        """Soft-delete a live file; returns it, or None if there was no such live file."""
        sql = (
            f"UPDATE files SET deleted_at = :now "
            f"WHERE id = :id AND project = :project AND {_LIVE} RETURNING {_COLUMNS}"
        )
        rows = await self._write_rows(sql, {"id": file_id, "project": project, "now": now})
        row = rows[0] if rows else None
        return _record(row) if row is not None else None

    async def delete_expired_files(self, *, now: int, limit: int) -> list[str]:
        """Soft-delete up to `limit` expired files; returns their blob digests."""
        sql = (
            "UPDATE files SET deleted_at = expires_at WHERE seq IN ("
            "  SELECT seq FROM files WHERE deleted_at IS NULL AND expires_at IS NOT NULL"
            "  AND expires_at <= :now LIMIT :limit"
            ") RETURNING sha256"
        )
        rows = await self._write_rows(sql, {"now": now, "limit": limit}, conn=self._background)
        return [row[0] for row in rows]

    async def blob_in_use(self, sha256: str) -> bool:
        """True if any file not deleted refers to this blob (expired ones count until swept)."""
        sql = "SELECT 1 FROM files WHERE sha256 = ? AND deleted_at IS NULL LIMIT 1"
        return bool(await self._rows(sql, (sha256,)))

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
            found.update(row[0] for row in await self._rows(sql, chunk))
        return found

    # --- operator commands ----------------------------------------------------------------------

    async def storage_totals(self) -> tuple[int, int, int, int]:
        """(live files, their bytes, distinct blobs they use, those blobs' bytes)."""
        sql = (
            "SELECT (SELECT COALESCE(SUM(files), 0) FROM file_counts),"
            " (SELECT COALESCE(SUM(bytes), 0) FROM file_counts),"
            " COUNT(*), COALESCE(SUM(bytes), 0) FROM (SELECT sha256, MAX(bytes) AS bytes"
            " FROM files WHERE deleted_at IS NULL GROUP BY sha256)"
        )
        row = (await self._rows(sql))[0]
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    async def project_usage(self) -> list[tuple[str, int, int, int]]:
        """(project, live files, their bytes, bytes of the distinct blobs they use)."""
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
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in await self._rows(sql)]

    async def delete_everything(self, project: str | None) -> tuple[int, list[str]]:
        """Remove the rows of all projects, or of one: files, uploads and parts.

        Returns how many live files went, and the part tokens to remove from disk.
        """
        scope = {"project": project}
        where = ":project IS NULL OR project = :project"
        live = await self._rows(
            f"SELECT COUNT(*) FROM files WHERE deleted_at IS NULL AND ({where})", scope
        )
        tokens = await self._write_rows(
            "DELETE FROM upload_parts WHERE upload_id IN "
            f"(SELECT id FROM uploads WHERE {where}) RETURNING token",
            scope,
        )
        await self._conn.execute(f"DELETE FROM uploads WHERE {where}", scope)
        await self._conn.execute(f"DELETE FROM files WHERE {where}", scope)
        return int(live[0][0]), [row[0] for row in tokens]

    async def live_files(self, project: str | None) -> list[FileRecord]:
        """Every live file (of one project, or of all), in insertion order."""
        sql = (
            f"SELECT {_COLUMNS} FROM files WHERE deleted_at IS NULL "
            "AND (:project IS NULL OR project = :project) ORDER BY seq"
        )
        return [_record(row) for row in await self._rows(sql, {"project": project})]

    async def existing_ids(self, ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = f"SELECT id FROM files WHERE id IN ({','.join('?' * len(chunk))})"
            found += [row[0] for row in await self._rows(sql, chunk)]
        return found

    async def live_digests(self) -> list[str]:
        """Blobs of live files, except files already marked damaged (status `error`)."""
        sql = "SELECT DISTINCT sha256 FROM files WHERE deleted_at IS NULL AND status != 'error'"
        return [row[0] for row in await self._rows(sql)]

    async def mark_blob_damaged(self, sha256: str, details: str) -> int:
        """Set status `error` on the live files of a blob; returns how many."""
        sql = (
            "UPDATE files SET status = 'error', status_details = ? "
            "WHERE sha256 = ? AND deleted_at IS NULL"
        )
        cur = await self._conn.execute(sql, (details, sha256))
        return cur.rowcount

    async def purge_deleted(self, *, before: int) -> int:
        """Remove rows soft-deleted before `before`, and finished uploads created before it."""
        cur = await self._conn.execute(
            "DELETE FROM files WHERE deleted_at IS NOT NULL AND deleted_at < ?", (before,)
        )
        purged = cur.rowcount
        await self._conn.execute(
            "DELETE FROM uploads WHERE status IN ('completed', 'cancelled', 'expired') "
            "AND created_at < ?",
            (before,),
        )
        return purged

    async def insert_key(
        self, key_id: str, key_sha256: str, project: str, hint: str, now: int
    ) -> None:
        await self._conn.execute(
            "INSERT INTO api_keys (id, key_sha256, project, hint, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (key_id, key_sha256, project, hint, now),
        )

    async def keys(self) -> list[tuple[str, str, str, str, int, int | None]]:
        """(id, key_sha256, project, hint, created_at, revoked_at) of every key, oldest first."""
        sql = (
            "SELECT id, key_sha256, project, hint, created_at, revoked_at FROM api_keys "
            "ORDER BY created_at, id"
        )
        return [tuple(row) for row in await self._rows(sql)]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        cur = await self._conn.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id)
        )
        return cur.rowcount == 1

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
        rows = await self._rows(sql, (upload_id, project))
        row = rows[0] if rows else None
        return UploadRecord(*row) if row is not None else None

    async def set_upload_status(
        self, upload_id: str, *, old: str, new: str, file_id: str | None = None
    ) -> bool:
        """Move an upload from status `old` to `new`; False if it was not in `old`."""
        sql = "UPDATE uploads SET status = ?, file_id = ? WHERE id = ? AND status = ?"
        cur = await self._conn.execute(sql, (new, file_id, upload_id, old))
        return cur.rowcount == 1

    async def insert_part(self, part: PartRecord, *, now: int) -> bool:
        """Add a part to a pending, unexpired upload; False (nothing added) otherwise."""
        sql = (
            "INSERT INTO upload_parts (id, upload_id, token, bytes, created_at) "
            "SELECT ?, ?, ?, ?, ? FROM uploads WHERE id = ? AND status = 'pending' "
            "AND expires_at > ?"
        )
        params = (part.id, part.upload_id, part.token, part.bytes, part.created_at)
        cur = await self._conn.execute(sql, (*params, part.upload_id, now))
        return cur.rowcount == 1

    async def get_parts(self, upload_id: str) -> list[PartRecord]:
        sql = "SELECT id, upload_id, token, bytes, created_at FROM upload_parts WHERE upload_id = ?"
        return [PartRecord(*row) for row in await self._rows(sql, (upload_id,))]

    async def delete_parts(self, upload_id: str) -> list[str]:
        """Remove the part rows of an upload; returns their file tokens."""
        sql = "DELETE FROM upload_parts WHERE upload_id = ? RETURNING token"
        return [row[0] for row in await self._write_rows(sql, (upload_id,))]

    async def expire_uploads(self, *, now: int) -> list[str]:
        """Mark pending uploads past their expiry as expired; returns their ids."""
        sql = (
            "UPDATE uploads SET status = 'expired' "
            "WHERE status = 'pending' AND expires_at <= ? RETURNING id"
        )
        return [row[0] for row in await self._write_rows(sql, (now,), conn=self._background)]

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

    async def part_tokens_in_use(self, tokens: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(tokens), 500):
            chunk = tokens[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT token FROM upload_parts WHERE token IN ({marks})"
            found.update(row[0] for row in await self._rows(sql, chunk))
        return found


def _record(row: Iterable[Any] | sqlite3.Row) -> FileRecord:
    return FileRecord(*row)
