"""Inside PostgreSQL's transactions: the facts `SharedMetadata` decides on and the writes it
decides, as the statements of `Writes`, `CoordinationState` and `BatchWrites`.

Each runs on the connection of a transaction `PostgresMetadata` opened with the advisory locks
that keep those facts true until the commit (see `PostgresMetadata._coordination`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..models import BatchResult, FileRecord, PartRecord
from .rules import BatchSums, PartFacts, Usage


def status_count(status: str) -> int:
    """The row count of a command tag ("DELETE 3" -> 3)."""
    return int(status.rsplit(" ", 1)[-1])


# asyncpg has no type information: its connections are Any here.
Connection = Any

COLUMNS = (
    "id, project, filename, purpose, bytes, sha256, created_at, expires_at, status, status_details"
)


UNFINISHED = "('pending', 'completing')"


# Live files and bytes held per project ($1: projects, $2: uploads left out): files not
# deleted (expired ones count until swept, as in SQLite; from the counters) and the parts of
# unfinished uploads.
USAGE = f"""
    SELECT project, SUM(files)::bigint, SUM(bytes)::bigint FROM (
        SELECT project, files, bytes FROM file_counts WHERE project = ANY($1::text[])
        UNION ALL
        SELECT o.project, 0, COALESCE(SUM(p.bytes), 0)
        FROM uploads o JOIN upload_parts p ON p.upload_id = o.id
        WHERE o.project = ANY($1::text[]) AND o.status IN {UNFINISHED}
        AND NOT (o.id = ANY($2::text[]))
        GROUP BY o.project
    ) held GROUP BY project
"""


# The facts of `insert_part` ($1 upload, $2 now, $3 whether the project's bytes are wanted),
# as in SQLite. The upload's row is locked (FOR SHARE): a status change (e.g. into
# `completing`) waits until the part is in, or the part sees the new status; never a part
# added after a completion read the parts.
PART_FACTS = f"""
    SELECT u.status = 'pending' AND u.expires_at > $2, u.bytes,
        (SELECT COALESCE(SUM(bytes), 0) FROM upload_parts WHERE upload_id = u.id),
        (SELECT COUNT(*) FROM upload_parts WHERE upload_id = u.id),
        CASE WHEN $3::bool THEN
            (SELECT COALESCE(SUM(bytes), 0) FROM file_counts WHERE project = u.project)
            + (SELECT COALESCE(SUM(p.bytes), 0)
               FROM uploads o JOIN upload_parts p ON p.upload_id = o.id
               WHERE o.project = u.project AND o.status IN {UNFINISHED})
        ELSE 0 END
    FROM uploads u WHERE u.id = $1 FOR SHARE OF u
"""

# Ends claims ($1 digests, with repeats counted; $2 instance). Rows that reach 0 go: deleted
# and decremented by two disjoint statements (one statement may not change a row twice).
RELEASE = """
    WITH wanted AS (SELECT d AS sha256, COUNT(*) AS n FROM unnest($1::text[]) AS d GROUP BY d),
    gone AS (
        DELETE FROM blob_claims c USING wanted w
        WHERE c.sha256 = w.sha256 AND c.instance = $2 AND c.claims <= w.n
    )
    UPDATE blob_claims c SET claims = c.claims - w.n FROM wanted w
    WHERE c.sha256 = w.sha256 AND c.instance = $2 AND c.claims > w.n
"""


FILE_ARRAYS = (
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], "
    "$7::bigint[], $8::bigint[], $9::text[], $10::text[]"
)


def file_arrays(records: Sequence[FileRecord]) -> list[list[Any]]:
    """The records as ten column arrays (for `unnest`: one statement, any number of rows)."""
    return [
        [r.id for r in records],
        [r.project for r in records],
        [r.filename for r in records],
        [r.purpose for r in records],
        [r.bytes for r in records],
        [r.sha256 for r in records],
        [r.created_at for r in records],
        [r.expires_at for r in records],
        [r.status for r in records],
        [r.status_details for r in records],
    ]


class Writes:
    """`Writes` inside a transaction of `_file_writes` / `_part_writes`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def claimed(self, instance: str, digests: Sequence[str]) -> set[str]:
        rows = await self._conn.fetch(
            "SELECT sha256 FROM blob_claims "
            "WHERE instance = $1 AND sha256 = ANY($2::text[]) AND claims > 0",
            instance,
            list(digests),
        )
        return {row[0] for row in rows}

    async def taken(self, ids: Sequence[str]) -> set[str]:
        rows = await self._conn.fetch("SELECT id FROM files WHERE id = ANY($1::text[])", list(ids))
        return {row[0] for row in rows}

    async def usage(
        self, projects: Sequence[str], excluding_uploads: Sequence[str]
    ) -> dict[str, Usage]:
        rows = await self._conn.fetch(USAGE, list(projects), list(excluding_uploads))
        return {row[0]: Usage(int(row[1]), int(row[2])) for row in rows}

    async def complete_upload(self, upload_id: str, file_id: str) -> bool:
        moved = await self._conn.fetchval(
            "UPDATE uploads SET status = 'completed', owner = NULL WHERE id = $1"
            " AND status = 'completing' AND file_id = $2 RETURNING 1",
            upload_id,
            file_id,
        )
        return moved is not None

    async def insert(self, records: Sequence[FileRecord], *, skip_taken: bool) -> list[str]:
        """One statement for any number of rows (`unnest`). Skipping taken ids, a row whose id
        another transaction commits meanwhile is skipped too."""
        conflict = " ON CONFLICT (id) DO NOTHING" if skip_taken else ""
        rows = await self._conn.fetch(
            f"INSERT INTO files ({COLUMNS}) SELECT * FROM unnest({FILE_ARRAYS})"
            f"{conflict} RETURNING id",
            *file_arrays(records),
        )
        return [row[0] for row in rows]

    async def part_facts(
        self, upload_id: str, now: int, *, project_bytes: bool
    ) -> PartFacts | None:
        row = await self._conn.fetchrow(PART_FACTS, upload_id, now, project_bytes)
        if row is None:
            return None
        return PartFacts(bool(row[0]), *(int(v) for v in tuple(row)[1:]))

    async def add_part(self, part: PartRecord) -> None:
        await self._conn.execute(
            "INSERT INTO upload_parts (id, upload_id, token, bytes, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            part.id,
            part.upload_id,
            part.token,
            part.bytes,
            part.created_at,
        )

    async def end_claims(self, digests: Sequence[str], instance: str) -> None:
        await self._conn.execute(RELEASE, list(digests), instance)


class Coordination:
    """`CoordinationState` in tables, inside a transaction of `_coordination`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def alive_until(self, instances: Collection[str]) -> dict[str, int]:
        if not instances:
            return {}
        rows = await self._conn.fetch(
            "SELECT id, alive_until FROM instances WHERE id = ANY($1::text[])", list(instances)
        )
        return {row[0]: int(row[1]) for row in rows}

    async def set_alive(self, instance: str, until: int) -> None:
        await self._conn.execute(
            "INSERT INTO instances (id, alive_until) VALUES ($1, $2) "
            "ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until",
            instance,
            until,
        )

    async def forget_dead(self, before: int, keep: str) -> None:
        await self._conn.execute(
            "WITH gone AS (DELETE FROM instances WHERE alive_until < $1 AND id <> $2 "
            "RETURNING id) DELETE FROM blob_claims WHERE instance IN (SELECT id FROM gone)",
            before,
            keep,
        )

    async def referenced(self, digests: Sequence[str]) -> set[str]:
        rows = await self._conn.fetch(
            "SELECT DISTINCT sha256 FROM files "
            "WHERE deleted_at IS NULL AND sha256 = ANY($1::text[])",
            list(digests),
        )
        return {row[0] for row in rows}

    async def claim_holders(self, digests: Sequence[str]) -> dict[str, set[str]]:
        rows = await self._conn.fetch(
            "SELECT sha256, instance FROM blob_claims "
            "WHERE sha256 = ANY($1::text[]) AND claims > 0",
            list(digests),
        )
        holders: dict[str, set[str]] = {}
        for digest, instance in rows:
            holders.setdefault(digest, set()).add(instance)
        return holders

    async def add_claims(self, counts: Mapping[str, int], instance: str) -> None:
        await self._conn.execute(
            "INSERT INTO blob_claims (sha256, instance, claims) "
            "SELECT d, $2, n FROM unnest($1::text[], $3::int[]) AS c(d, n) "
            "ON CONFLICT (sha256, instance) "
            "DO UPDATE SET claims = blob_claims.claims + excluded.claims",
            list(counts),
            instance,
            list(counts.values()),
        )

    async def remove_claims(self, counts: Mapping[str, int], instance: str) -> None:
        digests = [d for d, n in counts.items() for _ in range(n)]
        await self._conn.execute(RELEASE, digests, instance)

    async def drop_claims(self, digests: Sequence[str]) -> None:
        await self._conn.execute(
            "DELETE FROM blob_claims WHERE sha256 = ANY($1::text[])", list(digests)
        )

    async def reclaimers(self, digests: Sequence[str]) -> dict[str, str]:
        rows = await self._conn.fetch(
            "SELECT sha256, instance FROM reclaims WHERE sha256 = ANY($1::text[])", list(digests)
        )
        return {row[0]: row[1] for row in rows}

    async def set_reclaims(self, digests: Sequence[str], instance: str, now: int) -> None:
        await self._conn.execute(
            "INSERT INTO reclaims (sha256, instance, started_at) "
            "SELECT d, $2, $3 FROM unnest($1::text[]) AS d ON CONFLICT (sha256) "
            "DO UPDATE SET instance = excluded.instance, started_at = excluded.started_at",
            list(digests),
            instance,
            now,
        )

    async def drop_reclaims(self, digests: Sequence[str], instance: str | None = None) -> None:
        await self._conn.execute(
            "DELETE FROM reclaims WHERE sha256 = ANY($1::text[]) "
            "AND ($2::text IS NULL OR instance = $2)",
            list(digests),
            instance,
        )

    async def lease(self, name: str) -> tuple[str, int] | None:
        row = await self._conn.fetchrow("SELECT holder, until FROM leases WHERE name = $1", name)
        return None if row is None else (row[0], int(row[1]))

    async def leases(self, names: Collection[str]) -> dict[str, tuple[str, int]]:
        rows = await self._conn.fetch(
            "SELECT name, holder, until FROM leases WHERE name = ANY($1::text[])", list(names)
        )
        return {row[0]: (row[1], int(row[2])) for row in rows}

    async def set_lease(
        self, name: str, holder: str, until: int, *, was: tuple[str, int] | None
    ) -> bool:
        if was is None:
            sql = (
                "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) "
                "ON CONFLICT (name) DO NOTHING"
            )
            status = await self._conn.execute(sql, name, holder, until)
        else:
            sql = (
                "UPDATE leases SET holder = $2, until = $3 "
                "WHERE name = $1 AND holder = $4 AND until = $5"
            )
            status = await self._conn.execute(sql, name, holder, until, *was)
        return status_count(status) == 1

    async def drop_lease(self, name: str) -> None:
        await self._conn.execute("DELETE FROM leases WHERE name = $1", name)


class BatchWrites:
    """`BatchWrites` in a transaction: the batch's row is locked first (FOR UPDATE re-checks
    the status after a concurrent change), so a move to `finalizing` or `cancelling` waits for
    this commit and no result lands after it."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def running(self, batch_id: str) -> bool:
        found = await self._conn.fetchval(
            "SELECT 1 FROM batches WHERE id = $1 AND status = 'in_progress' FOR UPDATE", batch_id
        )
        return found is not None

    async def record(self, batch_id: str, results: Sequence[BatchResult]) -> list[int]:
        rows = await self._conn.fetch(
            "UPDATE batch_requests b "
            "SET state = CASE WHEN g.ok THEN 'done' ELSE 'failed' END, result = g.result "
            "FROM unnest($2::int[], $3::bool[], $4::text[]) AS g(line, ok, result) "
            "WHERE b.batch_id = $1 AND b.line = g.line AND b.state = 'pending' RETURNING b.line",
            batch_id,
            [r.line for r in results],
            [r.ok for r in results],
            [r.result for r in results],
        )
        return [row[0] for row in rows]

    async def add_sums(self, batch_id: str, sums: BatchSums) -> None:
        await self._conn.execute(
            "UPDATE batches SET completed = completed + $2, failed = failed + $3, "
            "input_tokens = input_tokens + $4, output_tokens = output_tokens + $5, "
            "cached_tokens = cached_tokens + $6, reasoning_tokens = reasoning_tokens + $7 "
            "WHERE id = $1",
            batch_id,
            *dataclasses.astuple(sums),
        )
