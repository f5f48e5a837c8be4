"""SQLite's schema: the database's name in a data directory and its migrations, in order.

A database records the number of migrations applied in `PRAGMA user_version`; opening one runs
those it lacks, each in its own transaction with its version bump (`SqliteMetadata._migrate`).
Migrations are only ever appended: a released one never changes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

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
    # 11: when each project's batches last started, by index (the claim order lets projects
    # take turns: `rules.claim_order`)
    """
    CREATE INDEX batches_started ON batches (project, in_progress_at);
    """,
)


def database_path(data_dir: Path) -> Path:
    """The SQLite database of a data directory."""
    return data_dir / DB_NAME


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
