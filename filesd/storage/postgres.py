"""PostgreSQL metadata (a `MetadataStore` several filesd instances share): its connection pool and
every SQL statement. The decisions of the contract are `SharedMetadata`'s; this module gives it
the primitives and runs the plain statements. The schema is in `postgres_schema.py`.

What differs from SQLite is how it stays right when other processes write at the same time,
under READ COMMITTED:

- Per-project order. Every transaction that inserts files or parts of a project first takes
  `pg_advisory_xact_lock` on a key of the project and holds it until it commits. Its `seq`
  values are drawn under that lock, so within a project rows commit (become visible) in `seq`
  order: a reader paging by `after` (by `seq`) can never see a later row before an earlier one
  of the same project, so never skips one. The same lock makes the quota checks of
  `insert_files` and `insert_part` atomic with their inserts, on every instance.
- Blobs and leases. Claims, reclaims and the inserts that end claims take a lock per digest
  (the same kind of lock, another key), and taking a lease takes the lease's, so the facts
  `SharedMetadata` decides on stay true until the writes it decides are committed.
- Locks are taken in one statement, in the order of their keys, before anything else of the
  transaction: two transactions never wait for each other's advisory locks in a cycle. Each
  check runs in a statement after that one, so under READ COMMITTED its snapshot already
  includes whatever the previous holder of the lock committed (a lock is released only after
  its transaction's commit is visible).

Counters. `file_counts` holds the live files and bytes of each project and purpose, kept by
statement triggers in the transaction that changes the rows (migration 2), so a listing's
`total` and a quota check read a few rows, not the project's files. A project's counter rows
are written only by its own writers: inserts hold the project's lock already (so the rows
cost them no new wait), deletes lock a counter row until they commit. No row is shared by
all projects: `storage_totals` and `project_usage` stay aggregates (operator views).

Failures become neutral by SQLSTATE (`neutral_error`), never by message text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import socket
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import asyncpg

from ..config import describe_dsn
from ..models import (
    BatchRecord,
    FileRecord,
    KeyRecord,
    PartRecord,
    ProjectUsage,
    StorageTotals,
    UploadRecord,
)
from .base import (
    BATCH_COLUMNS,
    BATCH_MUTABLE,
    SchemaTooNew,
    StorageBusy,
    StorageFull,
    StorageUnavailable,
)
from .metadata import SharedMetadata
from .postgres_schema import MIGRATIONS
from .postgres_writes import COLUMNS, USAGE, BatchWrites, Coordination, Writes, status_count
from .rules import Usage

__all__ = ["MIGRATIONS", "PostgresMetadata", "describe_dsn", "lock_key", "neutral_error"]


# asyncpg has no type information: its connections, pools and rows are Any here.
Connection = Any

Record = Any

SETTING = "storage.database"

# How long opening waits for the server to answer (connect and authenticate).
CONNECT_TIMEOUT = 10.0


_UPLOAD_COLUMNS = (
    "id, project, filename, purpose, mime_type, bytes, created_at, expires_at, "
    "file_expires_after, status, file_id"
)


_KEY_COLUMNS = "id, key_sha256, project, hint, created_at, revoked_at"


# Takes the transaction's advisory locks, in the order given (sorted by the caller).
_LOCK = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"


# A file by id, if live for `project` at `now` ($1 id, $2 project, $3 now): by the unique
# index on id (a point read; a generic plan).
_GET_ONE = (
    f"SELECT {COLUMNS} FROM files WHERE id = $1 AND project = $2 "
    "AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > $3)"
)


# The rows of several ids ($1), whatever their state: `_get_batches` picks the live ones.
# (With project and time in the statement too, as a join with `unnest`, the server plans it
# anew at each execution and spends twice the CPU.)
_GET_MANY = f"SELECT {COLUMNS}, deleted_at FROM files WHERE id = ANY($1::text[])"


# A point read waiting for its statement: id, project, now, and the caller's future.
_PointRead = tuple[str, str, int, "asyncio.Future[FileRecord | None]"]


# Point reads waiting at once go out in one statement, at most this many.
_GET_BATCH = 64


# Statements of such point reads in flight at once (per store).
_GET_STATEMENTS = 2


# SQLSTATEs that mean "no room" / "try again shortly". Class 08 (connection exceptions) and
# the shutdown states count as busy too: the database restarting or failing over is a
# moment to retry (503), not a server error.
_FULL_STATES = frozenset({"53100"})  # disk_full


_BUSY_STATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57014",  # query_canceled (statement_timeout)
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
    }
)


# Failures on the client's side of a connection (no SQLSTATE): after one, the connection's
# protocol state cannot be trusted.
_CLIENT_ERRORS = (asyncpg.InterfaceError, asyncpg.InternalClientError)


def lock_key(kind: str, name: str) -> int:
    """A signed 64-bit advisory lock key for `name` of `kind` ("project", "blob", ...): the
    same in every process and version of Python (unlike `hash()`), so every instance locks
    the same key. Computed here, not by the server, so a transaction can sort its keys."""
    digest = hashlib.blake2b(f"filesd/{kind}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_MIGRATION_LOCK = lock_key("schema", "migrate")


def neutral_error(error: BaseException) -> Exception | None:
    """The neutral error for a failure of the database or of the way to it: `StorageFull` for
    SQLSTATE 53100, `StorageBusy` for lock and statement timeouts, serialization failures,
    deadlocks and a lost or refused connection; None for anything else. By SQLSTATE (and
    by type for errors of the network, which have none), never by message text."""
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str):
        if state in _FULL_STATES:
            return StorageFull(f"database: {error}")
        if state in _BUSY_STATES or state.startswith("08"):
            return StorageBusy(f"database: {error}")
        return None
    if isinstance(error, TimeoutError):
        return StorageBusy("database: no connection became free in time")
    if isinstance(error, OSError):
        return StorageBusy(f"database unreachable: {error}")
    return None


@contextlib.contextmanager
def _neutral_errors() -> Iterator[None]:
    try:
        yield
    except (asyncpg.PostgresError, OSError) as error:
        neutral = neutral_error(error)
        if neutral is None:
            raise
        raise neutral from error


def _record(row: Record) -> FileRecord:
    return FileRecord.from_row(row)


def _upload(row: Record) -> UploadRecord:
    return UploadRecord(*row)


async def _keep_session(conn: Connection) -> None:
    """The pool's reset: nothing. filesd changes no session state (its advisory locks end
    with their transactions, which asyncpg ends before this), so the default reset query
    would only cost a round trip on every release."""


class PostgresMetadata(SharedMetadata):
    """The metadata in a PostgreSQL database. Create with `await PostgresMetadata.open(dsn)`."""

    def __init__(self, pool: Any, *, acquire_timeout: float) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout
        # `get_live_file` calls waiting for a statement: (id, project, now, the caller's
        # future), the statements in flight, and the tasks running them.
        self._gets: list[_PointRead] = []
        self._getting = 0
        self._get_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, dsn: str, *, statement_timeout_ms: int = 30_000, max_connections: int = 10
    ) -> PostgresMetadata:
        """Connect (a pool of up to `max_connections`), then create or migrate the tables.

        Raises `StorageUnavailable` naming `storage.database` when the server cannot be used
        (refused, unknown host, no answer within CONNECT_TIMEOUT, credentials refused, no
        such database, no right to create tables), its message never holding the password;
        `SchemaTooNew` when a newer filesd migrated the database.
        """
        where = describe_dsn(dsn)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + 2):
                pool = await asyncpg.create_pool(
                    dsn,
                    min_size=1,
                    max_size=max_connections,
                    timeout=CONNECT_TIMEOUT,
                    reset=_keep_session,
                    server_settings={
                        "statement_timeout": str(statement_timeout_ms),
                        # An instance paused (not killed) inside a transaction would hold
                        # its project's lock for as long: the server ends such a session.
                        "idle_in_transaction_session_timeout": str(statement_timeout_ms),
                        "application_name": "filesd",
                    },
                )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as error:
            raise StorageUnavailable(SETTING, _why(error, where)) from None
        db = cls(pool, acquire_timeout=max(statement_timeout_ms / 1000, 1.0))
        try:
            await db._migrate()
        except asyncpg.InsufficientPrivilegeError as error:
            await db.close()
            message = f"{where}: filesd cannot create its tables there ({_server_says(error)})"
            raise StorageUnavailable(SETTING, message) from None
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        if self._get_tasks:
            await asyncio.gather(*self._get_tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._pool.close(), timeout=10)
        except TimeoutError:
            self._pool.terminate()

    @property
    def shared(self) -> bool:
        return True

    async def vanished(self) -> str | None:
        """None: the database is a service, not a file that could be moved away."""
        return None

    async def holds_nothing(self) -> bool:
        sql = "SELECT NOT EXISTS (SELECT 1 FROM files) AND NOT EXISTS (SELECT 1 FROM uploads)"
        return bool(await self._value(sql))

    async def schema_version(self) -> int:
        return int(await self._value("SELECT version FROM schema_version WHERE id = 0"))

    # --- plumbing -------------------------------------------------------------------------------

    async def _acquire(self) -> Connection:
        """A connection of the pool, waiting at most `acquire_timeout` for one to be free.

        With one idle, it is taken without arming a timeout: asyncpg's own timeout runs the
        acquisition in a task of its own (asyncio.wait_for), which costs a point read ~10 us
        of CPU; a free connection is handed over at once (or, if it was closed meanwhile,
        reopened within the pool's connect timeout)."""
        if self._pool.get_idle_size():
            return await self._pool.acquire()
        async with asyncio.timeout(self._acquire_timeout):
            return await self._pool.acquire()

    @staticmethod
    def _lost(conn: Connection, error: BaseException) -> StorageBusy:
        """The driver lost track of the connection (the server ended the session: a restart,
        a failover, a terminated backend): it goes, the pool makes a new one, and the caller
        may retry."""
        conn.terminate()
        return StorageBusy(f"database connection lost: {error}")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        with _neutral_errors():
            conn = await self._acquire()
            try:
                yield conn
            except _CLIENT_ERRORS as error:
                raise self._lost(conn, error) from error
            finally:
                await self._pool.release(conn)

    @contextlib.asynccontextmanager
    async def _transaction(self, locks: Iterable[int] = ()) -> AsyncIterator[Connection]:
        """A transaction that first takes advisory locks on `locks` (sorted: no cycles)."""
        async with self._connection() as conn, conn.transaction():
            keys = sorted(set(locks))
            if keys:
                await conn.execute(_LOCK, keys)
            yield conn

    async def _rows(self, sql: str, *args: Any) -> list[Record]:
        return list(await self._on_pooled("fetch", sql, *args))

    async def _row(self, sql: str, *args: Any) -> Record | None:
        row: Record | None = await self._on_pooled("fetchrow", sql, *args)
        return row

    async def _value(self, sql: str, *args: Any) -> Any:
        return await self._on_pooled("fetchval", sql, *args)

    async def _on_pooled(self, method: str, sql: str, *args: Any) -> Any:
        """`conn.<method>(sql, *args)` on a connection of the pool, released afterwards; a
        connection lost on the way is dropped (`_lost`), errors come out neutral."""
        with _neutral_errors():
            conn = await self._acquire()
            try:
                return await getattr(conn, method)(sql, *args)
            except _CLIENT_ERRORS as error:
                raise self._lost(conn, error) from error
            finally:
                await self._pool.release(conn)

    async def _execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns how many rows it changed."""
        async with self._connection() as conn:
            return status_count(await conn.execute(sql, *args))

    async def _migrate(self) -> None:
        """Apply the migrations this database lacks, all in one transaction under an advisory
        lock: instances starting together migrate once, one after the other finding nothing
        left to do; a failure leaves the schema as it was."""
        async with self._transaction([_MIGRATION_LOCK]) as conn:
            # Waiting for the lock was bounded; a migration rebuilding a large table is not.
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);"
                "INSERT INTO schema_version (id, version) VALUES (0, 0) ON CONFLICT DO NOTHING"
            )
            version = int(await conn.fetchval("SELECT version FROM schema_version WHERE id = 0"))
            if version > len(MIGRATIONS):
                raise SchemaTooNew(
                    f"database schema version {version} is newer than this filesd supports "
                    f"({len(MIGRATIONS)})"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute("UPDATE schema_version SET version = $1 WHERE id = 0", number)

    # --- the primitives of SharedMetadata -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _file_writes(
        self, projects: Collection[str], digests: Collection[str], *, simple: bool
    ) -> AsyncIterator[Writes]:
        """A transaction under the locks of its projects (and of the blobs whose claims it
        checks): the verdicts are decided and the rows inserted with no other writer of those
        projects in between, on any instance."""
        locks = [lock_key("project", p) for p in projects]
        locks += [lock_key("blob", d) for d in digests]
        async with self._transaction(locks) as conn:
            yield Writes(conn)

    @contextlib.asynccontextmanager
    async def _part_writes(self, upload_id: str) -> AsyncIterator[Writes]:
        """A transaction under the lock of the upload's project (the lock of `_file_writes`
        too), so two parts, or a part and a file, racing on any instances cannot both pass
        a check."""
        project = await self._value("SELECT project FROM uploads WHERE id = $1", upload_id)
        locks = [lock_key("project", project)] if project is not None else []
        async with self._transaction(locks) as conn:
            yield Writes(conn)

    @contextlib.asynccontextmanager
    async def _coordination(
        self, digests: Collection[str] = (), *, lease: str | None = None
    ) -> AsyncIterator[Coordination]:
        """A transaction under the locks of `digests` (and of `lease`).

        Why claims and reclaims cannot interleave wrongly: `claim_blobs`, `release_claims`,
        `begin_reclaim` and the inserts that end claims each take the advisory lock of every
        digest they touch, in their first statement, and hold it to commit. So for one digest
        they run one at a time, and each reads (in later statements, with fresh READ
        COMMITTED snapshots) everything the previous one committed:
        - claim, then reclaim: the reclaim sees the claim (live) or the file its insert left;
        - reclaim, then claim: the claim sees the reclaim and waits while its instance lives;
        - reclaim dropped an expired claim, then the insert: the insert sees no claim
          (`unclaimed`), so no row refers to a blob being deleted.
        A file soft-deleted meanwhile takes no lock: it only makes a blob less used, so a
        reclaim that saw it still live merely skips the blob until its next round."""
        locks = [lock_key("blob", d) for d in digests]
        if lease is not None:
            locks.append(lock_key("lease", lease))
        async with self._transaction(locks) as conn:
            yield Coordination(conn)

    @contextlib.asynccontextmanager
    async def _batch_writes(self, batch_id: str) -> AsyncIterator[BatchWrites]:
        async with self._transaction() as conn:
            yield BatchWrites(conn)

    async def _completing_uploads(self) -> list[tuple[UploadRecord, str | None]]:
        sql = f"SELECT {_UPLOAD_COLUMNS}, owner FROM uploads WHERE status = 'completing'"
        return [(_upload(tuple(row)[:-1]), row[-1]) for row in await self._rows(sql)]

    async def _result_sizes(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int
    ) -> list[tuple[int, int | None]]:
        sql = (
            "SELECT line, octet_length(result) FROM batch_requests "
            "WHERE batch_id = $1 AND line > $2 AND state = $3 ORDER BY line LIMIT $4"
        )
        state = "done" if ok else "failed"
        return [
            (row[0], row[1]) for row in await self._rows(sql, batch_id, after_line, state, limit)
        ]

    async def _results(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int
    ) -> list[tuple[int, str]]:
        sql = (
            "SELECT line, result FROM batch_requests WHERE batch_id = $1 AND line > $2 "
            "AND state = $3 ORDER BY line LIMIT $4"
        )
        state = "done" if ok else "failed"
        return [
            (row[0], row[1]) for row in await self._rows(sql, batch_id, after_line, state, limit)
        ]

    async def _forget_results(self, batch_id: str) -> None:
        await self._execute(
            "UPDATE batch_requests SET result = NULL WHERE batch_id = $1 AND result IS NOT NULL",
            batch_id,
        )

    # --- files ----------------------------------------------------------------------------------

    async def existing_ids(self, ids: Sequence[str]) -> list[str]:
        rows = await self._rows("SELECT id FROM files WHERE id = ANY($1::text[])", list(ids))
        return [row[0] for row in rows]

    async def file_exists(self, file_id: str) -> bool:
        """True if a row with this id exists, in any state."""
        return bool(await self._rows("SELECT 1 FROM files WHERE id = $1", file_id))

    async def get_live_file(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        """The file, if live for `project` at `now`.

        Point reads are coalesced: while `_GET_STATEMENTS` statements of them are in flight,
        the calls arriving meanwhile wait, then go out together in one statement. A busy
        server (the metadata GETs of many clients) so pays one round trip and one pool
        checkout per batch instead of per file, while an idle one sends each at once. Every
        statement starts after all the calls it answers were made, so each sees whatever was
        committed before its call (a delete acknowledged on any instance is seen).
        """
        if self._getting < _GET_STATEMENTS and not self._gets:
            # None waits: this one goes out at once, from the caller's own task.
            self._getting += 1
            try:
                row = await self._row(_GET_ONE, file_id, project, now)
            finally:
                self._getting -= 1
                self._send_gets()
            return _record(row) if row is not None else None
        waiter: asyncio.Future[FileRecord | None] = asyncio.get_running_loop().create_future()
        self._gets.append((file_id, project, now, waiter))
        self._send_gets()
        return await waiter

    def _send_gets(self) -> None:
        """Start a statement for the point reads waiting, if any wait and one may start. In a
        task of its own: a caller cancelled must not cancel the others' answers."""
        if self._gets and self._getting < _GET_STATEMENTS:
            self._getting += 1
            task = asyncio.get_running_loop().create_task(self._get_batches())
            self._get_tasks.add(task)
            task.add_done_callback(self._get_tasks.discard)

    async def _get_batches(self) -> None:
        """Answer the waiting point reads, a batch per statement, until none waits (one of
        the `_GET_STATEMENTS`, counted by whoever started it)."""
        try:
            while self._gets:
                batch = [g for g in self._gets[:_GET_BATCH] if not g[3].done()]
                del self._gets[:_GET_BATCH]
                if not batch:
                    continue
                try:
                    found = await self._get_many(batch)
                except Exception as error:  # each caller gets the failure (StorageBusy...)
                    for *_, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(error)
                    continue
                except BaseException:  # cancelled (the loop is closing): so are the callers
                    for *_, waiter in batch + self._gets:
                        waiter.cancel()
                    self._gets.clear()
                    raise
                for (_, _, _, waiter), record in zip(batch, found, strict=True):
                    if not waiter.done():
                        waiter.set_result(record)
        finally:
            self._getting -= 1

    async def _get_many(self, batch: Sequence[_PointRead]) -> list[FileRecord | None]:
        """For each (id, project, now, _), the file if live for that project at that time."""
        if len(batch) == 1:
            file_id, project, now, _ = batch[0]
            row = await self._row(_GET_ONE, file_id, project, now)
            return [_record(row) if row is not None else None]
        rows = await self._rows(_GET_MANY, list({g[0] for g in batch}))
        by_id = {row[0]: row for row in rows}
        found: list[FileRecord | None] = []
        for file_id, project, now, _ in batch:
            row = by_id.get(file_id)
            # The conditions of _GET_ONE: the project's, not deleted, not expired at `now`.
            expired = row is not None and row[7] is not None and row[7] <= now
            if row is None or row[1] != project or row[10] is not None or expired:
                found.append(None)
            else:
                found.append(_record(tuple(row)[:10]))
        return found

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
        """A page of live files and the number of all live matches, in one statement (one
        snapshot: the page and the total agree).

        `after` is the id of any file of the project, deleted or not (a cursor stays valid);
        returns None if no such file exists. The total is the project's files not deleted, from
        the counters (`file_counts`, a row per purpose), less those expired but not swept yet,
        counted by index (few: the sweeper runs every minute or so). Each combination of
        options is its own statement text, so each is prepared with a plan for its own indexes.
        """
        args: list[Any] = [project, now, limit, offset]
        counter = "project = $1"
        if purpose is not None:
            args.append(purpose)
            counter += f" AND purpose = ${len(args)}"
        match = f"{counter} AND deleted_at IS NULL"
        live = f"{match} AND (expires_at IS NULL OR expires_at > $2)"
        page_where = live
        cursor = "NULL::bigint"
        if after is not None:
            args.append(after)
            cursor = f"(SELECT seq FROM files WHERE id = ${len(args)} AND project = $1)"
            page_where += f" AND seq {'<' if descending else '>'} (SELECT after_seq FROM cursor)"
        order = "DESC" if descending else "ASC"
        sql = f"""
            WITH cursor (after_seq) AS (SELECT {cursor}),
            counted (total) AS (
                SELECT (SELECT COALESCE(SUM(files), 0) FROM file_counts WHERE {counter})
                     - (SELECT COUNT(*) FROM files WHERE {match}
                        AND expires_at IS NOT NULL AND expires_at <= $2)
            ),
            page AS (
                SELECT seq, {COLUMNS} FROM files WHERE {page_where}
                ORDER BY seq {order} LIMIT $3 OFFSET $4
            )
            SELECT counted.total, cursor.after_seq, page.*
            FROM counted CROSS JOIN cursor LEFT JOIN page ON TRUE
            ORDER BY page.seq {order}
        """
        rows = await self._rows(sql, *args)
        total, after_seq = rows[0][0], rows[0][1]
        if after is not None and after_seq is None:
            return None
        return [_record(tuple(row)[3:]) for row in rows if row[2] is not None], int(total)

    async def usage(
        self, projects: Sequence[str], *, excluding_uploads: Sequence[str] = ()
    ) -> dict[str, Usage]:
        """What each project holds against its quota (see `Usage`), not counting the parts
        of `excluding_uploads`. One statement, by index."""
        rows = await self._rows(USAGE, list(projects), list(excluding_uploads))
        found = {row[0]: Usage(int(row[1]), int(row[2])) for row in rows}
        return {p: found.get(p, Usage()) for p in projects}

    async def mark_deleted(self, project: str, file_id: str, *, now: int) -> FileRecord | None:
        """Soft-delete a live file; returns it, or None if there was no such live file."""
        sql = (
            "UPDATE files SET deleted_at = $3 WHERE id = $1 AND project = $2 "
            "AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > $3) "
            f"RETURNING {COLUMNS}"
        )
        rows = await self._rows(sql, file_id, project, now)
        return _record(rows[0]) if rows else None

    async def delete_expired_files(self, *, now: int, limit: int) -> list[str]:
        """Soft-delete up to `limit` expired files; returns their blob digests.

        Rows another transaction holds are skipped, not waited for (a sweep never queues
        behind the requests); the outer condition is re-checked on the row's latest version,
        so a file deleted meanwhile is neither deleted twice nor reported."""
        sql = (
            "UPDATE files SET deleted_at = expires_at WHERE deleted_at IS NULL AND seq IN ("
            "  SELECT seq FROM files WHERE deleted_at IS NULL AND expires_at IS NOT NULL"
            "  AND expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED"
            ") RETURNING sha256"
        )
        return [row[0] for row in await self._rows(sql, now, limit)]

    async def blobs_in_use(self, digests: Sequence[str]) -> set[str]:
        """The subset of `digests` that some file not deleted refers to."""
        sql = (
            "SELECT DISTINCT sha256 FROM files "
            "WHERE deleted_at IS NULL AND sha256 = ANY($1::text[])"
        )
        return {row[0] for row in await self._rows(sql, list(digests))}

    # --- operator views and maintenance ---------------------------------------------------------

    async def storage_totals(self) -> StorageTotals:
        """Live files, their bytes, the distinct blobs they use and those blobs' bytes: index-
        only scans of the live files by blob (no counter row that every insert would update)."""
        sql = """
            SELECT COALESCE(SUM(n), 0), COALESCE(SUM(logical), 0), COUNT(*),
                COALESCE(SUM(physical), 0)
            FROM (
                SELECT COUNT(*) AS n, SUM(bytes) AS logical, MAX(bytes) AS physical
                FROM files WHERE deleted_at IS NULL GROUP BY sha256
            ) blobs
        """
        row = (await self._rows(sql))[0]
        return StorageTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def project_usage(self) -> list[ProjectUsage]:
        sql = """
            SELECT project, SUM(n), SUM(logical), SUM(physical) FROM (
                SELECT project, COUNT(*) AS n, SUM(bytes) AS logical, MAX(bytes) AS physical
                FROM files WHERE deleted_at IS NULL GROUP BY project, sha256
            ) blobs GROUP BY project ORDER BY project
        """
        return [ProjectUsage(r[0], int(r[1]), int(r[2]), int(r[3])) for r in await self._rows(sql)]

    async def delete_everything(self, project: str | None) -> tuple[int, list[str]]:
        """Remove the rows of all projects, or of one: files, uploads and parts, batches and
        their requests (and the batches' leases), in one transaction. Returns how many live
        files went, and the part tokens to remove."""
        where = "($1::text IS NULL OR project = $1)"
        async with self._transaction() as conn:
            tokens = await conn.fetch(
                "DELETE FROM upload_parts WHERE upload_id IN "
                f"(SELECT id FROM uploads WHERE {where}) RETURNING token",
                project,
            )
            await conn.execute(f"DELETE FROM uploads WHERE {where}", project)
            await conn.execute(
                f"WITH gone AS (DELETE FROM batches WHERE {where} RETURNING id), "
                "requests AS (DELETE FROM batch_requests WHERE batch_id IN "
                "(SELECT id FROM gone)) "
                "DELETE FROM leases WHERE name IN (SELECT 'batch:' || id FROM gone)",
                project,
            )
            # Counted from the rows the delete removed: exact, whatever commits meanwhile.
            live = await conn.fetchval(
                f"WITH gone AS (DELETE FROM files WHERE {where} RETURNING deleted_at) "
                "SELECT COUNT(*) FILTER (WHERE deleted_at IS NULL) FROM gone",
                project,
            )
        return int(live), [row[0] for row in tokens]

    async def live_files(self, project: str | None) -> list[FileRecord]:
        """Every live file (of one project, or of all), in insertion order."""
        sql = (
            f"SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL "
            "AND ($1::text IS NULL OR project = $1) ORDER BY seq"
        )
        return [_record(row) for row in await self._rows(sql, project)]

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
        return await self._execute(
            "UPDATE files SET status = 'processed', status_details = NULL "
            "WHERE sha256 = $1 AND deleted_at IS NULL AND status = 'error'",
            sha256,
        )

    async def mark_blob_damaged(self, sha256: str, details: str) -> int:
        """Set status `error` on the live files of a blob; returns how many."""
        return await self._execute(
            "UPDATE files SET status = 'error', status_details = $1 "
            "WHERE sha256 = $2 AND deleted_at IS NULL",
            details,
            sha256,
        )

    async def purge_deleted(self, *, before: int) -> int:
        """Remove rows soft-deleted before `before`, and finished uploads created before it,
        in one transaction."""
        async with self._transaction() as conn:
            purged = status_count(
                await conn.execute(
                    "DELETE FROM files WHERE deleted_at IS NOT NULL AND deleted_at < $1", before
                )
            )
            await conn.execute(
                "DELETE FROM uploads WHERE status IN ('completed', 'cancelled', 'expired') "
                "AND created_at < $1",
                before,
            )
        return purged

    async def next_generation(self, name: str) -> int:
        """Bump the counter `name` and return its new value: 0 the first time, then 1, 2..."""
        sql = (
            "INSERT INTO counters (name, value) VALUES ($1, 0) "
            "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value"
        )
        return int(await self._value(sql, name))

    # --- API keys -------------------------------------------------------------------------------

    async def insert_key(self, key: KeyRecord) -> None:
        await self._execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
            key.id,
            key.key_sha256,
            key.project,
            key.hint,
            key.created_at,
            key.revoked_at,
        )

    async def keys(self) -> list[KeyRecord]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        return [KeyRecord(*row) for row in await self._rows(sql)]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        sql = "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
        return await self._execute(sql, now, key_id) == 1

    # --- uploads --------------------------------------------------------------------------------

    async def insert_upload(self, upload: UploadRecord) -> None:
        await self._execute(
            f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        )

    async def get_upload(self, project: str, upload_id: str) -> UploadRecord | None:
        sql = f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE id = $1 AND project = $2"
        rows = await self._rows(sql, upload_id, project)
        return _upload(rows[0]) if rows else None

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
            "UPDATE uploads SET status = $1, file_id = $2, owner = $3 WHERE id = $4 AND status = $5"
            " AND ($6::text IS NULL OR file_id = $6)"
        )
        return await self._execute(sql, new, file_id, owner, upload_id, old, attempt) == 1

    async def note_failed_completion(self, upload_id: str) -> int:
        """Count a failed completion of an upload; returns how many it has had."""
        sql = (
            "UPDATE uploads SET failed_completions = failed_completions + 1 "
            "WHERE id = $1 RETURNING failed_completions"
        )
        value = await self._value(sql, upload_id)
        return int(value) if value is not None else 0

    async def get_parts(self, upload_id: str) -> list[PartRecord]:
        """The parts of an upload, in the order they were added."""
        sql = (
            "SELECT id, upload_id, token, bytes, created_at FROM upload_parts "
            "WHERE upload_id = $1 ORDER BY seq"
        )
        return [PartRecord(*row) for row in await self._rows(sql, upload_id)]

    async def delete_parts(self, upload_id: str) -> list[str]:
        """Remove the part rows of an upload; returns their file tokens."""
        sql = "DELETE FROM upload_parts WHERE upload_id = $1 RETURNING token"
        return [row[0] for row in await self._rows(sql, upload_id)]

    async def expire_uploads(self, *, now: int) -> list[str]:
        """Mark pending uploads past their expiry as expired; returns their ids."""
        sql = (
            "UPDATE uploads SET status = 'expired' "
            "WHERE status = 'pending' AND expires_at <= $1 RETURNING id"
        )
        return [row[0] for row in await self._rows(sql, now)]

    async def finished_uploads_with_parts(self) -> list[str]:
        """Uploads no longer pending whose parts are still recorded (a sweep was cut short)."""
        sql = (
            "SELECT DISTINCT upload_id FROM upload_parts JOIN uploads ON uploads.id = upload_id "
            "WHERE uploads.status IN ('completed', 'cancelled', 'expired')"
        )
        return [row[0] for row in await self._rows(sql)]

    async def part_tokens_in_use(self, tokens: Sequence[str]) -> set[str]:
        sql = "SELECT token FROM upload_parts WHERE token = ANY($1::text[])"
        return {row[0] for row in await self._rows(sql, list(tokens))}

    # --- batches (the Batch API; see BatchMetadata) ---------------------------------------------

    async def insert_batch(self, batch: BatchRecord) -> None:
        values = dataclasses.astuple(batch)
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await self._execute(f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES ({marks})", *values)

    async def get_batch(self, batch_id: str, project: str | None = None) -> BatchRecord | None:
        sql = (
            f"SELECT {BATCH_COLUMNS} FROM batches "
            "WHERE id = $1 AND ($2::text IS NULL OR project = $2)"
        )
        row = await self._row(sql, batch_id, project)
        return None if row is None else BatchRecord(*row)

    async def list_batches(
        self, project: str, *, after: str | None, limit: int
    ) -> list[BatchRecord] | None:
        before = 2**63 - 1
        if after is not None:
            seq = await self._value(
                "SELECT seq FROM batches WHERE id = $1 AND project = $2", after, project
            )
            if seq is None:
                return None
            before = seq
        sql = (
            f"SELECT {BATCH_COLUMNS} FROM batches WHERE project = $1 AND seq < $2 "
            "ORDER BY seq DESC LIMIT $3"
        )
        return [BatchRecord(*row) for row in await self._rows(sql, project, before, limit)]

    async def update_batch(
        self, batch_id: str, changes: Mapping[str, object], *, statuses: Sequence[str] = ()
    ) -> bool:
        names = list(changes)
        if not names or not BATCH_MUTABLE.issuperset(names):
            raise ValueError(f"not columns update_batch may change: {names}")
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
        sql = f"UPDATE batches SET {sets} WHERE id = $1"
        args: list[object] = [batch_id, *(changes[name] for name in names)]
        if statuses:
            sql += f" AND status = ANY(${len(args) + 1}::text[])"
            args.append(list(statuses))
        return await self._execute(sql, *args) == 1

    async def _active_batches(self, statuses: Sequence[str]) -> list[tuple[str, str]]:
        sql = "SELECT id, project FROM batches WHERE status = ANY($1::text[]) ORDER BY seq"
        return [(row[0], row[1]) for row in await self._rows(sql, list(statuses))]

    async def _last_started(self, projects: Collection[str]) -> dict[str, int]:
        sql = (
            "SELECT p, (SELECT max(in_progress_at) FROM batches WHERE project = p) "
            "FROM unnest($1::text[]) AS p"
        )
        rows = await self._rows(sql, sorted(projects))
        return {row[0]: int(row[1]) for row in rows if row[1] is not None}

    async def add_batch_requests(self, batch_id: str, requests: Sequence[tuple[int, str]]) -> None:
        sql = """
            INSERT INTO batch_requests (batch_id, line, custom_id)
            SELECT $1, l, c FROM unnest($2::int[], $3::text[]) AS r(l, c)
            ON CONFLICT (batch_id, line) DO NOTHING
        """
        await self._execute(sql, batch_id, [r[0] for r in requests], [r[1] for r in requests])

    async def clear_batch_requests(self, batch_id: str) -> None:
        await self._execute("DELETE FROM batch_requests WHERE batch_id = $1", batch_id)

    async def pending_batch_requests(
        self, batch_id: str, *, after_line: int, limit: int
    ) -> list[tuple[int, str]]:
        sql = (
            "SELECT line, custom_id FROM batch_requests WHERE batch_id = $1 AND line > $2 "
            "AND state = 'pending' ORDER BY line LIMIT $3"
        )
        return [(row[0], row[1]) for row in await self._rows(sql, batch_id, after_line, limit)]


# --- connecting: clear messages, no secrets -----------------------------------------------------


def _why(error: BaseException, where: str) -> str:
    """A plain sentence for a failure to connect, by the error's type, built only of parts
    that hold no secret: `where` (`describe_dsn`), the server's SQLSTATE and message (words of
    the server, which never repeats a password it was sent), and the account of a failed
    connection by the system, the TLS library or the driver's network layer (naming only the
    address connected to, which `where` shows already). Never the driver's wording of a URL it
    could not use: that may quote any part of it, the password too."""
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return f"{where}: the database does not exist (create it; filesd creates only tables)"
    if isinstance(
        error, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"{where}: the server refused the credentials ({_server_says(error)})"
    if isinstance(error, asyncpg.PostgresError):
        return f"{where}: the server refused the connection ({_server_says(error)})"
    if isinstance(error, TimeoutError):
        return f"{where}: no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(error, socket.gaierror):
        return f"{where}: unknown host ({error.strerror})"
    if isinstance(error, ConnectionRefusedError):
        return f"{where}: connection refused (is PostgreSQL running and listening there?)"
    if isinstance(error, OSError):
        return f"{where}: cannot connect ({error})"
    # ValueError, asyncpg's InterfaceError (its ClientConfigurationError is both).
    return (
        f"{where}: the PostgreSQL driver cannot use this URL ({type(error).__name__}; its "
        "message is not shown, as it may quote the URL): check its parameters"
    )


def _server_says(error: asyncpg.PostgresError) -> str:
    """The server's own account of an error: its SQLSTATE and message."""
    return f"SQLSTATE {error.sqlstate}: {error.as_dict().get('message', '')}"
