"""PostgreSQL's schema: filesd's migrations, in order.

A database records the migrations applied in `schema_version`; opening one runs those it
lacks, all in one transaction under an advisory lock (`PostgresMetadata._migrate`), so
instances starting together migrate once. Migrations are only ever appended.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: everything of filesd 0.1 (the SQLite schema's 9 migrations, without its counters),
    # and the tables that coordinate instances.
    """
    CREATE TABLE files (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        status TEXT NOT NULL DEFAULT 'processed',
        status_details TEXT,
        deleted_at BIGINT
    );
    -- Pages, by project (and purpose) in `seq` order.
    CREATE INDEX files_live_by_project ON files (project, seq) WHERE deleted_at IS NULL;
    CREATE INDEX files_live_by_purpose ON files (project, purpose, seq) WHERE deleted_at IS NULL;
    -- The listing's total: key columns only, so that B-tree deduplication packs a project's
    -- entries into a few pages and the count is a short index-only scan (no INCLUDE columns,
    -- which would turn deduplication off).
    CREATE INDEX files_live_count ON files (project, purpose) WHERE deleted_at IS NULL;
    -- Quotas: a project's live files and bytes, by an index-only scan.
    CREATE INDEX files_live_bytes ON files (project) INCLUDE (bytes) WHERE deleted_at IS NULL;
    -- The files expired but not swept yet (few), subtracted from that count; and the sweep.
    CREATE INDEX files_live_expiring ON files (project, expires_at)
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
    CREATE INDEX files_live_by_expiry ON files (expires_at)
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
    CREATE INDEX files_live_by_blob ON files (sha256) WHERE deleted_at IS NULL;
    CREATE INDEX files_deleted ON files (deleted_at) WHERE deleted_at IS NOT NULL;

    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        file_expires_after BIGINT,
        status TEXT NOT NULL,
        file_id TEXT,
        failed_completions INTEGER NOT NULL DEFAULT 0,
        owner TEXT
    );
    CREATE INDEX uploads_pending_by_expiry ON uploads (expires_at) WHERE status = 'pending';
    CREATE INDEX uploads_by_project_status ON uploads (project, status);
    CREATE INDEX uploads_by_status ON uploads (status);
    -- No foreign key to uploads: as in SQLite (which does not enforce one), purging a finished
    -- upload does not wait for the sweep that removes its parts' rows.
    CREATE TABLE upload_parts (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id TEXT PRIMARY KEY,
        upload_id TEXT NOT NULL,
        token TEXT NOT NULL UNIQUE,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX upload_parts_by_upload ON upload_parts (upload_id, seq) INCLUDE (bytes);

    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_sha256 TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        hint TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );

    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        alive_until BIGINT NOT NULL
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until BIGINT NOT NULL
    );
    -- `claims` counts an instance's claims on a digest (two uploads of the same bytes).
    CREATE TABLE blob_claims (
        sha256 TEXT NOT NULL,
        instance TEXT NOT NULL,
        claims INTEGER NOT NULL,
        PRIMARY KEY (sha256, instance)
    );
    CREATE INDEX blob_claims_by_instance ON blob_claims (instance);
    CREATE TABLE reclaims (
        sha256 TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        started_at BIGINT NOT NULL
    );
    """,
    # 2: live files and bytes per project and purpose, kept by triggers in the transactions
    # that change the rows (every write path keeps them, SQL written by hand too), so that a
    # listing's `total` and a quota check read a few rows instead of counting the project's.
    # Statement triggers with transition tables: one upsert per statement and counter row,
    # however many rows the statement changed, taking the counter rows' locks in key order
    # (two statements changing several counters never wait for each other in a cycle).
    # Counter rows are never deleted (a project's rows stay at 0), as in SQLite.
    """
    -- No writer may commit between the backfill below and the triggers: an instance of the
    -- previous version writing meanwhile waits for this transaction, then fires them.
    LOCK TABLE files IN SHARE ROW EXCLUSIVE MODE;
    CREATE TABLE file_counts (
        project TEXT NOT NULL,
        purpose TEXT NOT NULL,
        files BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY (project, purpose)
    );
    INSERT INTO file_counts (project, purpose, files, bytes)
        SELECT project, purpose, COUNT(*), SUM(bytes) FROM files WHERE deleted_at IS NULL
        GROUP BY project, purpose;

    -- The rows a statement made live (+1) or no longer live (-1): not deleted is live, as
    -- for quotas (an expired file counts until swept; the listing subtracts those).
    CREATE FUNCTION file_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO file_counts AS c (project, purpose, files, bytes)
            SELECT project, purpose, COUNT(*), SUM(bytes) FROM new_rows
            WHERE deleted_at IS NULL GROUP BY project, purpose ORDER BY project, purpose
            ON CONFLICT (project, purpose)
            DO UPDATE SET files = c.files + excluded.files, bytes = c.bytes + excluded.bytes;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO file_counts AS c (project, purpose, files, bytes)
            SELECT project, purpose, -COUNT(*), -SUM(bytes) FROM old_rows
            WHERE deleted_at IS NULL GROUP BY project, purpose ORDER BY project, purpose
            ON CONFLICT (project, purpose)
            DO UPDATE SET files = c.files + excluded.files, bytes = c.bytes + excluded.bytes;
        ELSE
            -- Any update: what it made live less what it made not live, per counter; an
            -- update that changes no liveness (status, damage marks) touches no counter.
            INSERT INTO file_counts AS c (project, purpose, files, bytes)
            SELECT project, purpose, SUM(n), SUM(b) FROM (
                SELECT project, purpose, 1 AS n, bytes AS b FROM new_rows
                WHERE deleted_at IS NULL
                UNION ALL
                SELECT project, purpose, -1, -bytes FROM old_rows WHERE deleted_at IS NULL
            ) d GROUP BY project, purpose HAVING SUM(n) <> 0 OR SUM(b) <> 0
            ORDER BY project, purpose
            ON CONFLICT (project, purpose)
            DO UPDATE SET files = c.files + excluded.files, bytes = c.bytes + excluded.bytes;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER file_counts_insert AFTER INSERT ON files
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION file_counts_apply();
    CREATE TRIGGER file_counts_update AFTER UPDATE ON files
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION file_counts_apply();
    CREATE TRIGGER file_counts_delete AFTER DELETE ON files
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION file_counts_apply();
    CREATE FUNCTION file_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM file_counts;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER file_counts_truncate AFTER TRUNCATE ON files
        FOR EACH STATEMENT EXECUTE FUNCTION file_counts_clear();

    -- What only counting needed: every insert and delete kept them up to date for nothing.
    DROP INDEX files_live_count;
    DROP INDEX files_live_bytes;
    """,  # 3: batches (the Batch API) and the state of each of their requests
    """
    CREATE TABLE batches (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        metadata TEXT,
        output_expires_after BIGINT,
        model TEXT,
        errors TEXT,
        in_progress_at BIGINT,
        finalizing_at BIGINT,
        completed_at BIGINT,
        failed_at BIGINT,
        expired_at BIGINT,
        cancelling_at BIGINT,
        cancelled_at BIGINT,
        total BIGINT NOT NULL DEFAULT 0,
        completed BIGINT NOT NULL DEFAULT 0,
        failed BIGINT NOT NULL DEFAULT 0,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cached_tokens BIGINT NOT NULL DEFAULT 0,
        reasoning_tokens BIGINT NOT NULL DEFAULT 0,
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
    );
    """,
    # 4: when each project's batches last started, by index (the claim order lets projects
    # take turns: `rules.claim_order`)
    """
    CREATE INDEX batches_started ON batches (project, in_progress_at);
    """,
)
