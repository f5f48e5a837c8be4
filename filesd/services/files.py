"""The file store: the one service the HTTP layer talks to.

It joins a metadata store and a blob backend (the Protocols of `filesd.storage.base`; by
default SQLite and a blob directory in the data dir) and keeps them consistent:
- content is committed to the blob backend (durable) before its row is committed, so a
  committed row always has its bytes;
- identical content is stored once; a blob is reclaimed when no file that is not deleted refers
  to it;
- committing a blob and inserting its row, and deleting a row and reclaiming its blob, each
  happen under one write lock, so a delete can never remove a blob that a concurrent upload of
  the same bytes is about to refer to;
- uploads that finish while a commit is under way are committed together (group commit): their
  blobs committed with one durability barrier, their rows inserted in one statement (one
  commit), so concurrent uploads share the fsyncs instead of queueing behind one another's.
Blobs left without a row by a crash are swept by `sweep_orphans`, under the same lock.

The backends are private: callers use the methods here, `keys` (a `KeyStore`) and, for the
Uploads API, `upload_backing()`. Errors are plain exceptions (`FileNotFound`, `CursorNotFound`,
`QuotaExceeded`, `ImportConflict`, and the storage's neutral `BlobMissing`, `BlobTooLarge`,
`StorageFull`, `StorageBusy`); mapping them to HTTP is the caller's job.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from ..config import S3Config
from ..ids import IdMaker
from ..models import FilePage, FileRecord, ProjectUsage, StorageTotals
from ..storage import rules
from ..storage.base import (
    BlobBackend,
    BlobMissing,
    BlobTooLarge,
    BlobWriter,
    MetadataStore,
    StagedBlob,
    StorageBusy,
    StorageFull,
    StorageUnavailable,
    UploadMetadata,
)
from ..storage.blobdir import BlobDir
from ..storage.cached import SMALL_CACHE_BYTES, CachedBlobs
from ..storage.rules import InsertVerdict, Quota
from ..storage.sqlite import DB_NAME, SqliteMetadata, database_initialized, database_path
from .archive import Export, SkippedFile, export_archive, stage_archive
from .keys import KeyStore

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "Audit",
    "BlobMissing",
    "BlobTooLarge",
    "CompletionAbandoned",
    "CursorNotFound",
    "DataDirLocked",
    "DatabaseMissing",
    "FileIdTaken",
    "FileNotFound",
    "FileStore",
    "GcReport",
    "ImportConflict",
    "ListQuery",
    "MigrationError",
    "MigrationReport",
    "QuotaExceeded",
    "StorageBusy",
    "StorageFull",
    "StorageUnavailable",
    "StoreSettings",
    "UploadBacking",
    "lock_data_dir",
    "refuse_missing_database",
]

log = logging.getLogger(__name__)

_SWEEP_BATCH = 500
LOCK_NAME = "filesd.lock"


class FileNotFound(Exception):
    """No live file with this id in this project (another project's file is not found too)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(file_id)
        self.file_id = file_id


class CursorNotFound(Exception):
    """The `after` cursor names no file of this project."""

    def __init__(self, file_id: str) -> None:
        super().__init__(file_id)
        self.file_id = file_id


class QuotaExceeded(Exception):
    """Storing the file would take the project over one of its quotas; nothing was stored."""

    def __init__(self, project: str, what: str, limit: int) -> None:
        super().__init__(f"project {project!r} may hold at most {limit} {what}")
        self.project = project
        self.what = what
        self.limit = limit


class ImportConflict(Exception):
    """Files with these ids exist already; nothing was imported."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"{len(ids)} file id(s) exist already, e.g. {ids[0]}")
        self.ids = ids


class CompletionAbandoned(Exception):
    """The upload this file was to complete was settled meanwhile by another instance (this
    one looked dead): the file was not stored."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"the completion making file {file_id} was settled by another instance")
        self.file_id = file_id


class FileIdTaken(Exception):
    """The id made for a new file belongs to a stored file already; nothing was stored."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"file id {file_id} is taken already")
        self.file_id = file_id


class DataDirLocked(Exception):
    """Another filesd process is using this data directory."""


class DatabaseMissing(Exception):
    """The data directory holds blobs or upload parts but no database (or an empty one).

    Typically the database was moved aside and not yet put back: starting would make an empty
    one, and the orphan sweep would then delete every blob as unreferenced. Proceeding anyway
    is a choice (`--new-database`, `new_database=True`), never a default.
    """

    def __init__(self, data_dir: Path, blobs: int, parts: int) -> None:
        held = f"{blobs} blob(s)" + (f" and {parts} upload part(s)" if parts else "")
        super().__init__(
            f"{data_dir} holds {held} but no database ({DB_NAME} is missing or empty). Put "
            f"{DB_NAME} back (from "
            "where it was moved, or from a backup) before starting: without it filesd would "
            "make an empty database and delete every blob as unreferenced. To start over with "
            "a new, empty database on purpose (the blobs will be deleted), pass --new-database "
            "(filesd.testing.serve: new_database=True)."
        )
        self.data_dir = data_dir


async def refuse_missing_database(data_dir: Path, blobs: BlobBackend) -> None:
    """Raise `DatabaseMissing` if `data_dir` has no database (missing, empty, or never
    migrated) but `blobs` holds content."""
    if await asyncio.to_thread(database_initialized, database_path(data_dir)):
        return
    try:
        digests = await blobs.digests()
        parts = await blobs.part_tokens_older_than(math.inf)
    except FileNotFoundError:  # no blob directories yet: nothing to lose
        return
    if digests or parts:
        raise DatabaseMissing(data_dir, len(digests), len(parts))


@dataclass(frozen=True)
class StoreSettings:
    """Everything the store is configured with; `from_config` is the one place that reads
    them from a `Config`."""

    data_dir: Path
    id_format: str = "uuid"
    max_file_bytes: int = 512 * 1024 * 1024
    default_expires_after: Mapping[str, int] = field(default_factory=dict)
    small_cache_bytes: int = SMALL_CACHE_BYTES
    max_files_per_project: int = 0
    max_bytes_per_project: int = 0
    id_seed: int | None = None
    # The shared backends (SPEC §5): "" means SQLite / the blob dir in data_dir.
    database: str = ""
    blobs: str = ""
    s3: S3Config = field(default_factory=S3Config)
    lease_seconds: int = 30

    @property
    def quota(self) -> Quota:
        return Quota(self.max_files_per_project, self.max_bytes_per_project)

    @classmethod
    def from_config(cls, config: Config) -> StoreSettings:
        return cls(
            database=config.storage.database,
            blobs=config.storage.blobs,
            s3=config.storage.s3,
            lease_seconds=config.storage.lease_seconds,
            data_dir=config.storage.data_dir,
            id_format=config.files.id_format,
            max_file_bytes=config.limits.max_file_bytes,
            default_expires_after=dict(config.files.default_expires_after),
            max_files_per_project=config.limits.max_files_per_project,
            max_bytes_per_project=config.limits.max_bytes_per_project,
            id_seed=config.testing.id_seed,
        )


@dataclass(frozen=True)
class UploadBacking:
    """What the Uploads API builds on beside the store: upload and part rows, part bytes."""

    meta: UploadMetadata
    blobs: BlobBackend
    # The store's write lock: held by a group commit from its quota check to its rows, so a
    # part counted against the same quota cannot slip in between.
    quota_lock: asyncio.Lock


@dataclass
class Audit:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    stray_parts: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)


class MigrationError(Exception):
    """The source's data cannot be copied as it is; nothing of the batch was stored."""


@dataclass
class MigrationReport:
    copied: int = 0
    present: int = 0  # there already (an earlier run)
    keys: int = 0
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class GcReport:
    expired_files: int
    purged_rows: int
    orphaned_blobs: int


@dataclass
class _Queued:
    staged: StagedBlob
    record: FileRecord
    done: asyncio.Future[None]
    from_upload: str | None = None  # the upload whose parts become this file


@dataclass(frozen=True)
class ListQuery:
    purpose: str | None = None
    limit: int = 100
    offset: int = 0
    after: str | None = None
    order: Literal["asc", "desc"] = "desc"


BlobWrapper = Callable[[BlobBackend], BlobBackend]


class FileStore:
    """Files of all projects. Create with `await FileStore.open(settings)`, end with `close()`."""

    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobBackend,
        settings: StoreSettings,
        *,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
        id_generation: int = 0,
    ) -> None:
        self._meta = meta
        self._blobs = blobs
        self._settings = settings
        self._clock = clock
        self._on_close = on_close
        self.ids = IdMaker(settings.id_format, settings.id_seed, id_generation)
        self.new_file_id = self.ids.file_id
        self.keys = KeyStore(meta, clock)
        # This process's name among the instances sharing the metadata (new at every start).
        self.instance = uuid.uuid4().hex
        self._alive_until = 0.0  # (monotonic) what the last heartbeat told the others
        self._beating: asyncio.Task[None] | None = None
        self._unended: set[str] = set()  # reclaims whose end failed, retried by heartbeats
        # Held by a group commit or an import from its claims to its rows: one set of claims
        # in flight per instance (claims are per instance and digest).
        self._write_lock = asyncio.Lock()
        self._queue: list[_Queued] = []
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        settings: StoreSettings,
        *,
        clock: Callable[[], float] = time.time,
        wrap_blobs: BlobWrapper | None = None,
        new_database: bool = False,
    ) -> FileStore:
        """Open (creating if needed) the store: metadata in SQLite in `settings.data_dir` or in
        PostgreSQL (`settings.database`), blobs in the data dir or in S3 (`settings.blobs`).
        `wrap_blobs` wraps the blob backend (fault injection). Raises `DataDirLocked` if another
        process holds the data dir, `DatabaseMissing` if SQLite's database is missing but blobs
        or parts exist (unless `new_database`), `StorageUnavailable` (naming the setting) when
        a shared backend cannot be used.
        """
        data_dir = settings.data_dir
        # The data dir holds SQLite and the blob dir, or with shared backends only this
        # process's spool files: either way one process at a time.
        lock_fd = await asyncio.to_thread(lock_data_dir, data_dir)
        local: BlobBackend | None = None
        meta: MetadataStore | None = None
        try:
            local = blob_backend(settings)
            removed = await local.prepare()
            if removed:
                log.info("removed %d temp file(s) of interrupted uploads", removed)
            if not settings.database and not new_database:
                await refuse_missing_database(data_dir, local)
            blobs: BlobBackend = CachedBlobs(local, settings.small_cache_bytes)
            if wrap_blobs is not None:
                blobs = wrap_blobs(blobs)
            meta = await open_metadata(settings)
            if settings.database and not new_database:
                await _refuse_empty_database(meta, local)
            # Seeded ids go on after a restart: each opening draws from a new generation.
            generation = 0
            if settings.id_seed is not None:
                generation = await meta.next_generation("id_seed")
            store = cls(
                meta,
                blobs,
                settings,
                clock=clock,
                on_close=lambda: os.close(lock_fd),
                id_generation=generation,
            )
            await store.heartbeat()
            store._beating = asyncio.create_task(store._heartbeats())
        except BaseException:
            if meta is not None:
                await meta.close()
            if local is not None:
                await local.close()
            os.close(lock_fd)
            raise
        return store

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            await asyncio.gather(self._beating, return_exceptions=True)
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        try:
            await self._meta.close()
        finally:
            try:
                await self._blobs.close()
            finally:
                if self._on_close is not None:
                    self._on_close()

    @property
    def shared(self) -> bool:
        """Whether other instances use the same metadata (PostgreSQL)."""
        return self._meta.shared

    async def heartbeat(self) -> None:
        """Tell the other instances this one is alive (for `lease_seconds`)."""
        sent = time.monotonic()
        await self._meta.heartbeat(self.instance, now=_wall(), ttl=self._settings.lease_seconds)
        self._alive_until = sent + self._settings.lease_seconds

    async def _heartbeats(self) -> None:
        """While open: a heartbeat every third of `lease_seconds` (the store, not only a
        server, must stay alive in the others' eyes: `filesd migrate` and `gc` run long)."""
        while True:
            await asyncio.sleep(self._settings.lease_seconds / 3)
            try:
                await self.heartbeat()
                if self._unended:
                    unended = sorted(self._unended)
                    await self._meta.end_reclaim(unended, self.instance)
                    self._unended.difference_update(unended)
            except Exception:
                log.exception("heartbeat failed")

    async def take_lease(self, name: str, ttl: int) -> bool:
        """Hold lease `name` for `ttl` seconds unless another live instance holds it."""
        return await self._meta.take_lease(name, self.instance, now=_wall(), ttl=ttl)

    @property
    def settings(self) -> StoreSettings:
        return self._settings

    @property
    def max_file_bytes(self) -> int:
        return self._settings.max_file_bytes

    def now(self) -> int:
        return int(self._clock())

    def upload_backing(self) -> UploadBacking:
        """The upload rows and part storage, for `filesd.uploads.UploadService` (only)."""
        return UploadBacking(self._meta, self._blobs, self._write_lock)

    def blob_writer(self) -> BlobWriter:
        """A writer for the content of a new file, capped at `max_file_bytes`."""
        return self._blobs.writer(self.max_file_bytes)

    def output_writer(self) -> BlobWriter:
        """A writer for content the server makes itself (a batch's output), not uploaded:
        `max_file_bytes` limits uploads and does not apply; the project quotas still do,
        when the file is created."""
        return self._blobs.writer(None)

    async def discard(self, staged: StagedBlob) -> None:
        """Drop staged content that will not become a file."""
        await self._blobs.discard([staged])

    async def create_file(
        self,
        project: str,
        staged: StagedBlob,
        *,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
        file_id: str | None = None,
        from_upload: str | None = None,
    ) -> FileRecord:
        """Store staged content as a new file; the staged content is consumed either way.

        Without `expires_after` the purpose's default expiry applies (if any). `file_id` lets a
        caller reserve the id beforehand (see `new_file_id`); by default a new one is made.
        `from_upload` names the upload being completed into this file: its parts (which count
        against the byte quota while it is unfinished) are not counted besides the file.
        Returns once the file is durable: blob committed, row committed.
        """
        if expires_after is None:
            expires_after = self._settings.default_expires_after.get(purpose)
        created_at = self.now()
        record = FileRecord(
            id=file_id or self.new_file_id(),
            project=project,
            filename=filename,
            purpose=purpose,
            bytes=staged.size,
            sha256=staged.sha256,
            created_at=created_at,
            expires_at=None if expires_after is None else created_at + expires_after,
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(staged, record, done, from_upload))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        # Shielded: once queued, the commit goes on even if this caller is cancelled.
        await asyncio.shield(done)
        return record

    async def check_quota(
        self, project: str, incoming_bytes: int = 0, *, from_upload: str | None = None
    ) -> None:
        """Raise `QuotaExceeded` if the project cannot take one more file of this size.

        The bytes held count the parts of the project's unfinished uploads, but those of
        `from_upload` (the upload whose parts become this file). A cheap early refusal; the
        binding check happens when the file is committed.
        """
        quota = self._settings.quota
        if quota:
            excluding = [] if from_upload is None else [from_upload]
            usage = await self._meta.usage([project], excluding_uploads=excluding)
            over = rules.over_quota(usage[project], quota, incoming_bytes)
            if over is not None:
                raise self._over_quota(project, over)

    def _over_quota(self, project: str, what: str) -> QuotaExceeded:
        quota = self._settings.quota
        return QuotaExceeded(project, what, quota.files if what == "files" else quota.bytes)

    async def _within_quotas(self, batch: list[_Queued]) -> list[_Queued]:
        """The queued files that fit their projects' quotas; the others are refused. An early
        refusal, before any blob is stored, by the rule the insert applies again (binding)."""
        quota = self._settings.quota
        if not quota:
            return batch
        # Bytes held count unfinished uploads' parts, but those of the uploads being completed
        # here: their parts become these files (counted once, as the file).
        usage = await self._meta.usage(
            sorted({q.record.project for q in batch}),
            excluding_uploads=[q.from_upload for q in batch if q.from_upload is not None],
        )
        verdicts: list[InsertVerdict] = ["inserted"] * len(batch)
        completing = {i for i, q in enumerate(batch) if q.from_upload is not None}
        records = [q.record for q in batch]
        rules.quota_verdicts(records, usage, quota, verdicts, refused_keep_bytes=completing)
        accepted = [q for q, v in zip(batch, verdicts, strict=True) if v == "inserted"]
        refused = [
            (q, self._refusal(q.record, v))
            for q, v in zip(batch, verdicts, strict=True)
            if v != "inserted"
        ]
        # Discarded before the refusals are answered: a client that got its 400 finds nothing
        # of its upload left behind.
        try:
            await self._blobs.discard([refusal[0].staged for refusal in refused])
        finally:
            for queued, error in refused:
                queued.done.set_exception(error)
        return accepted

    async def _commit_queued(self) -> None:
        """Commit everything queued, in batches, until the queue is empty."""
        while self._queue:
            batch, self._queue = self._queue, []
            linked: list[_Queued] = []
            try:
                async with self._write_lock:
                    batch = await self._within_quotas(batch)
                    linked = await self._commit_batch(batch)
            except BaseException as error:
                for queued in batch:
                    if not queued.done.done():
                        queued.done.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                for queued in linked:
                    queued.done.set_result(None)
            finally:
                for queued in batch:  # consumed by commit, or never reached it
                    if not queued.done.done():
                        queued.done.set_exception(RuntimeError("commit abandoned"))

    async def _commit_batch(self, batch: list[_Queued]) -> list[_Queued]:
        """Claim the batch's blobs, store them, insert the rows (which end the claims); fail
        the files refused on the way. Returns those stored. Under the write lock."""
        if not batch:
            return []
        digests = sorted({q.staged.sha256 for q in batch})
        try:
            await self._claim(digests)
        except BaseException:
            await self._blobs.discard([q.staged for q in batch])
            raise
        inserted = False
        try:
            results = await self._blobs.commit([q.staged for q in batch])
            linked: list[_Queued] = []
            failed: list[tuple[_Queued, Exception]] = []
            for queued, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    failed.append((queued, result))
                else:
                    linked.append(queued)
            # A crash here leaves blobs with no row: invisible, and swept later.
            verdicts: list[InsertVerdict] = []
            if linked:
                verdicts = await self._meta.insert_files(
                    [q.record for q in linked],
                    instance=self.instance,
                    quota=self._settings.quota,
                    excluding_uploads=[q.from_upload for q in linked if q.from_upload is not None],
                    completions={
                        q.record.id: q.from_upload for q in linked if q.from_upload is not None
                    },
                )
            inserted = True
            # The insert ended the claims of the digests it was given; those whose every
            # blob failed to commit are ended here (or they would pin the blob for good).
            uncovered = sorted(set(digests) - {q.record.sha256 for q in linked})
            await self._meta.release_claims(uncovered, self.instance)
        finally:
            if not inserted:
                await self._meta.release_claims(digests, self.instance)
        stored = [q for q, v in zip(linked, verdicts, strict=True) if v == "inserted"]
        refused = [(q, v) for q, v in zip(linked, verdicts, strict=True) if v != "inserted"]
        if refused or failed:
            unused = {q.record.sha256 for q, _ in refused} | {q.staged.sha256 for q, _ in failed}
            try:
                await self.reclaim(sorted(unused))
            except Exception:  # the others' rows are committed: an orphan is swept later
                log.exception("could not reclaim the blobs of refused files")
            # Answered once cleaned up: a client told no finds nothing of its upload left.
            for queued, verdict in refused:
                queued.done.set_exception(self._refusal(queued.record, verdict))
            for queued, error in failed:
                queued.done.set_exception(error)
        return stored

    def _refusal(self, record: FileRecord, verdict: str) -> Exception:
        if verdict == "taken":
            log.error("file id %s is taken already: upload refused", record.id)
            return FileIdTaken(record.id)
        if verdict in ("over_files", "over_bytes"):
            return self._over_quota(record.project, verdict.removeprefix("over_"))
        if verdict == "abandoned":
            return CompletionAbandoned(record.id)
        log.error("file %s: the claim on its blob was lost (instance presumed dead)", record.id)
        return StorageBusy("this instance lost its claim on the file's blob; try again")

    async def _claim(self, digests: Sequence[str]) -> None:
        """Claim `digests` for this instance, waiting while another instance reclaims one of
        them (a reclaim is one delete: short). Raises `StorageBusy` if it takes too long."""
        deadline = time.monotonic() + self._settings.lease_seconds
        pause = 0.01
        waiting = list(digests)
        claimed: list[str] = []
        try:
            while True:
                # A reclaimer counts as alive one lease longer than its heartbeat says: its
                # delete, capped to its own lease (see `reclaim`), has surely landed by then.
                refused = await self._meta.claim_blobs(
                    waiting, self.instance, now=_wall() - self._settings.lease_seconds
                )
                claimed += [d for d in waiting if d not in refused]
                if not refused:
                    return
                if time.monotonic() > deadline:
                    raise StorageBusy("a blob stayed under reclaim too long; try again")
                waiting = sorted(refused)
                # Backoff, not a test wait: another instance's reclaim must finish first.
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
        except BaseException:
            await self._meta.release_claims(claimed, self.instance)
            raise

    async def reclaim(self, digests: Sequence[str]) -> int:
        """Remove the blobs of `digests` that nothing refers to any more (decided in the
        metadata store, against every instance's claims); returns how many were removed."""
        if not digests:
            return 0
        begun = await self._meta.begin_reclaim(digests, self.instance, now=_wall())
        if not begun:
            return 0
        try:
            # A delete cannot be fenced in the bucket. Others take a reclaim over only one
            # lease after this instance's heartbeat ran out (see `_claim`), so the delete must
            # be over before the heartbeat runs out: not sent once it is near, and cut short
            # when it would outlast it (what a cut-short delete did is swept later).
            left = self._alive_until - time.monotonic() - 1
            if left <= 0:
                log.warning("reclaim of %d blob(s) given up: heartbeat too old", len(begun))
                return 0
            try:
                async with asyncio.timeout(left):
                    return await self._blobs.delete(begun)
            except TimeoutError:
                log.warning(
                    "reclaim of %d blob(s) cut short: it outlasted the heartbeat", len(begun)
                )
                return 0
        finally:
            try:
                await self._meta.end_reclaim(begun, self.instance)
            except Exception:
                # Left, the reclaim would keep every claim of these digests off while this
                # instance lives: the heartbeat loop ends it later.
                log.exception("ending a reclaim failed; retried with the next heartbeat")
                self._unended.update(begun)

    async def get_file(self, project: str, file_id: str) -> FileRecord:
        record = await self._meta.get_live_file(project, file_id, now=self.now())
        if record is None:
            raise FileNotFound(file_id)
        return record

    # --- content --------------------------------------------------------------------------------

    async def read_small(self, record: FileRecord) -> bytes:
        """A small file's bytes, from memory or in one thread hop; raises `BlobMissing`.

        Small blobs are kept in memory when written or read (up to the cache's bound), so a
        blob removed from disk behind filesd's back may still be served for a while.
        """
        try:
            return await self._blobs.read(record.sha256)
        except BlobMissing:
            raise _missing(record) from None

    async def open_local(self, record: FileRecord) -> IO[bytes] | None:
        """A file's bytes opened for reading (for zero-copy sendfile; the caller closes it),
        or None when the blob backend keeps no local files. Raises `BlobMissing`."""
        try:
            path = self._blobs.local_path(record.sha256)
            if path is None:
                return None
            opening: asyncio.Future[IO[bytes]] = asyncio.get_running_loop().run_in_executor(
                None, path.open, "rb"
            )
            try:
                return await asyncio.shield(opening)
            except asyncio.CancelledError:
                # The open goes on in its thread: close what it opens, or the descriptor leaks.
                opening.add_done_callback(_close_opened)
                raise
        except (BlobMissing, FileNotFoundError):
            raise _missing(record) from None

    def download_url(self, record: FileRecord, *, expires_in: int) -> str | None:
        """A short-lived URL the file's bytes can be fetched from directly, or None when the
        blob backend has none (local files)."""
        return self._blobs.download_url(
            record.sha256, filename=record.filename, expires_in=expires_in
        )

    def open_blob_stream(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The content of `record` from its start, straight from the blob backend, for a
        reader in the background (the batch runner) that may stop early: closing the
        iterator (`aclose`) closes the underlying file or connection at once, rather than
        leaving it to the garbage collector. Raises `BlobMissing` if the content is gone."""
        return self._blobs.open_range(record.sha256)

    async def read_range(
        self, record: FileRecord, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """`length` bytes (None: to the end) of a file from `start`, as a stream of chunks.
        Raises `BlobMissing` (on the first iteration) if they are gone."""
        try:
            async for chunk in self._blobs.open_range(record.sha256, start, length):
                yield chunk
        except BlobMissing:
            raise _missing(record) from None

    # --- listing and deleting -------------------------------------------------------------------

    async def list_files(self, project: str, query: ListQuery) -> FilePage:
        # One row more than asked for tells whether another page follows.
        found = await self._meta.list_live_files(
            project,
            now=self.now(),
            purpose=query.purpose,
            descending=query.order == "desc",
            after=query.after,
            limit=query.limit + 1,
            offset=query.offset,
        )
        if found is None:
            raise CursorNotFound(query.after or "")
        rows, total = found
        return FilePage(files=rows[: query.limit], total=total, has_more=len(rows) > query.limit)

    async def delete_file(self, project: str, file_id: str) -> FileRecord:
        """Soft-delete a file and reclaim its blob if no other file refers to it."""
        record = await self._meta.mark_deleted(project, file_id, now=self.now())
        if record is None:
            raise FileNotFound(file_id)
        # The delete is committed: a reclaim that fails (or a crash before it) leaves an orphan
        # blob, swept later, and must not turn the answer into an error.
        try:
            await self.reclaim([record.sha256])
        except Exception:
            log.exception("file %s deleted; reclaiming its blob failed", file_id)
        return record

    # --- export and import ----------------------------------------------------------------------

    async def export_archive(self, project: str | None) -> Export:
        """A tar archive of the live files (of `project`, or all) and their blobs (see
        `filesd.archive`). Files that cannot be exported are left out and listed in
        `Export.skipped`: those marked damaged (status `error`, e.g. quarantined by
        `filesd fsck --repair`) and those whose blob is missing."""
        records = await self._meta.live_files(project)
        gone = await self._blobs.missing(sorted({r.sha256 for r in records if r.status != "error"}))
        kept: list[FileRecord] = []
        skipped: list[SkippedFile] = []
        for record in records:
            if record.status == "error":
                details = record.status_details or "marked damaged"
                skipped.append(SkippedFile(record.id, f"damaged: {details}"))
            elif record.sha256 in gone:
                skipped.append(SkippedFile(record.id, "its content is missing from storage"))
            else:
                kept.append(record)
        if skipped:
            log.warning("export leaves out %d damaged file(s); run `filesd fsck`", len(skipped))
        return export_archive(kept, self._blobs.open_range, skipped)

    async def import_archive(self, chunks: AsyncIterator[bytes], purposes: Collection[str]) -> int:
        """Store the files of an export archive (ids and times kept); returns how many.

        `purposes` are those this server accepts: a file of another purpose is refused.

        Raises `ArchiveError` for a malformed archive, `ImportConflict` if any id is taken
        already; either way nothing is stored.
        """
        staged: list[StagedBlob] = []
        try:
            records = await stage_archive(
                chunks, lambda: self._blobs.writer(None), staged, purposes
            )
        except BaseException:
            await self._blobs.discard(staged)
            raise
        await self._import_files(records, staged)
        return len(records)

    async def _import_files(self, records: list[FileRecord], staged: list[StagedBlob]) -> None:
        """Store files exported elsewhere, ids and times kept; consumes `staged` either way."""
        digests = sorted({r.sha256 for r in records})
        try:
            async with self._write_lock:
                taken = await self._meta.existing_ids([r.id for r in records])
                if taken:
                    raise ImportConflict(taken)
                await self._claim(digests)
                inserted = False
                try:
                    results, staged = await self._blobs.commit(staged), []
                    failed = [r for r in results if isinstance(r, Exception)]
                    if failed:
                        raise failed[0]
                    # The insert re-checks the ids (another instance may have taken one),
                    # all or none, and ends the claims.
                    taken, inserted = (
                        await self._meta.import_files(records, instance=self.instance),
                        True,
                    )
                finally:
                    if not inserted:
                        await self._meta.release_claims(digests, self.instance)
                if taken:
                    await self.reclaim(digests)
                    raise ImportConflict(taken)
        finally:
            await self._blobs.discard(staged)

    async def migrate_from(self, source: FileStore, *, batch: int = 200) -> MigrationReport:
        """Copy every live file of `source` (ids, names, purposes, times, bytes) and its API
        keys into this store, then verify the copy. Files whose id is here already are
        skipped, so a run cut short can be run again. Each batch of files is imported whole
        or not at all. Files marked damaged, or whose bytes are missing from `source`, are
        not copied and are listed in the report.
        """
        report = MigrationReport()
        records = await source._meta.live_files(None)
        for start in range(0, len(records), batch):
            chunk = records[start : start + batch]
            present = set(await self._meta.existing_ids([r.id for r in chunk]))
            report.present += len(present)
            todo: list[FileRecord] = []
            staged: list[StagedBlob] = []
            try:
                for record in chunk:
                    if record.id in present:
                        continue
                    if record.status == "error":
                        report.skipped.append(f"{record.id}: marked damaged")
                        continue
                    writer = self._blobs.writer(None)
                    try:
                        async for data in source.read_range(record):
                            await writer.write(data)
                        blob = await writer.finish()
                    except BlobMissing:
                        await writer.abort()
                        report.skipped.append(f"{record.id}: its bytes are missing")
                        continue
                    except BaseException:
                        await writer.abort()
                        raise
                    staged.append(blob)
                    todo.append(record)
                    if blob.sha256 != record.sha256:
                        raise MigrationError(
                            f"{record.id}: its bytes do not match their SHA-256 in the source "
                            "(run `filesd fsck` on the source first)"
                        )
            except BaseException:
                await self._blobs.discard(staged)
                raise
            if todo:
                await self._import_files(todo, staged)
            report.copied += len(todo)
        known = {k.id for k in await self.keys.all()}
        for key in await source.keys.all():
            if key.id not in known:
                await self._meta.insert_key(key)
                report.keys += 1
        report.problems = await self._verify_copy(
            [r for r in records if r.status != "error"], report
        )
        return report

    async def _verify_copy(self, records: list[FileRecord], report: MigrationReport) -> list[str]:
        skipped = {line.split(":")[0] for line in report.skipped}
        problems = []
        expected = {r.id: r for r in records if r.id not in skipped}
        copied = {r.id: r for r in await self._meta.live_files(None) if r.id in expected}
        for file_id, record in expected.items():
            if copied.get(file_id) != record:
                problems.append(f"{file_id}: not copied as it was")
        gone = await self._blobs.missing(sorted({r.sha256 for r in expected.values()}))
        problems += [f"blob {digest}: missing from the destination" for digest in sorted(gone)]
        return problems

    # --- operator views and maintenance ---------------------------------------------------------

    async def audit(self, *, repair: bool) -> Audit:
        """Check every live file's blob (present, and hashing to its digest) and look for
        blobs and parts nothing refers to: `filesd fsck` on any backends, also beside running
        instances. With `repair`: files whose blob is missing or corrupt are marked damaged
        (status `error`; a corrupt blob stays where it is), files of blobs that are right
        again are served again, and unreferenced blobs (through the reclaim every instance
        respects) and stray parts are removed."""
        audit = Audit()
        live = set(await self._meta.live_digests())
        # (A digest may be both: files marked damaged, and a file of the bytes stored anew.)
        damaged = set(await self._meta.live_digests(damaged=True))
        stored = set(await self._blobs.digests())
        audit.missing = sorted(live - stored)
        orphaned = sorted(stored - live - damaged)
        for digest in sorted(stored & (live | damaged)):
            hashed = hashlib.sha256()
            async for chunk in self._blobs.open_range(digest):
                hashed.update(chunk)
            right = hashed.hexdigest() == digest
            if digest in damaged and right:
                audit.restored.append(digest)
            if digest in live:
                audit.checked += 1
                if not right:
                    audit.corrupt.append(digest)
        # Blobs of uploads under way are claimed, and parts young: neither counts as stray.
        in_use = await self._meta.blobs_in_use(orphaned)
        audit.orphaned = [d for d in orphaned if d not in in_use]
        cutoff = time.time() - (3600 if self.shared else 0)
        parts = await self._blobs.part_tokens_older_than(cutoff)
        audit.stray_parts = sorted(set(parts) - await self._meta.part_tokens_in_use(parts))
        if repair:
            for digest in audit.corrupt:
                await self._meta.mark_blob_damaged(
                    digest, "The stored content does not match its SHA-256; found by fsck."
                )
            # Removed, not kept: an upload of the right bytes would otherwise find the wrong
            # ones stored under their digest and refer to them. Stored anew by such an upload,
            # the next fsck finds them right and serves the damaged files again.
            await self._blobs.delete(audit.corrupt)
            # Checked again: a blob reclaimed since the listing may have been stored anew by
            # an upload meanwhile; its new file must not be marked.
            for digest in sorted(await self._blobs.missing(audit.missing)):
                await self._meta.mark_blob_damaged(
                    digest, "The stored content is missing; found by fsck."
                )
            for digest in audit.restored:
                await self._meta.clear_blob_damage(digest)
            await self.reclaim(audit.orphaned)
            await self._blobs.remove_parts(audit.stray_parts)
        return audit

    async def storage_totals(self) -> StorageTotals:
        return await self._meta.storage_totals()

    async def project_usage(self) -> list[ProjectUsage]:
        return await self._meta.project_usage()

    async def reset(self, project: str | None) -> int:
        """Remove every file and upload, or one project's; returns how many live files went.

        For tests (the admin API): unlike a delete, no row is kept for audit.
        """
        removed, tokens = await self._meta.delete_everything(project)
        await self._blobs.remove_parts(tokens)
        await self.sweep_orphans()
        return removed

    async def readiness_problems(self) -> list[str]:
        """What keeps the store from serving: an unreadable database, unwritable storage."""
        problems = []
        try:
            await self._meta.schema_version()
            gone = await self._meta.vanished()
            if gone is not None:
                problems.append(f"database: {gone}")
        except Exception as error:
            problems.append(f"database: {error}")
        try:
            await self._blobs.check_writable()
        except Exception as error:
            problems.append(f"data directory: {error}")
        return problems

    async def sweep_expired(self) -> int:
        """Delete expired files for good (they are already hidden) and reclaim their blobs."""
        swept = 0
        while True:
            digests = await self._meta.delete_expired_files(now=self.now(), limit=_SWEEP_BATCH)
            await self.reclaim(sorted(set(digests)))
            swept += len(digests)
            if len(digests) < _SWEEP_BATCH:
                break
        if swept:
            log.info("swept %d expired file(s)", swept)
        return swept

    async def sweep_orphans(self) -> int:
        """Remove blobs no file refers to (left by a crash); returns how many were removed."""
        digests = await self._blobs.digests()
        removed = 0
        for start in range(0, len(digests), _SWEEP_BATCH):
            # An upload between storing its blob and its row holds a claim on it, which keeps
            # the reclaim off: a blob reclaimed here is truly unreferenced.
            removed += await self.reclaim(digests[start : start + _SWEEP_BATCH])
        if removed:
            log.info("removed %d orphaned blob(s)", removed)
        return removed

    async def purge_deleted(self, deleted_retention: int) -> int:
        """Remove the rows of files deleted over `deleted_retention` seconds ago."""
        return await self._meta.purge_deleted(before=self.now() - deleted_retention)

    async def collect(self, *, deleted_retention: int) -> GcReport:
        """Garbage collection (`filesd gc`, and the server's periodic upkeep): expired files,
        rows soft-deleted over `deleted_retention` seconds ago, and unreferenced blobs."""
        expired = await self.sweep_expired()
        purged = await self._meta.purge_deleted(before=self.now() - deleted_retention)
        orphans = await self.sweep_orphans()
        return GcReport(expired, purged, orphans)


def _wall() -> int:
    """Real time, for what instances agree on between them (heartbeats, leases, claims): a
    test clock moved on one instance must not make the others look dead."""
    return int(time.time())


def _missing(record: FileRecord) -> BlobMissing:
    log.error("file %s: blob %s is missing from storage", record.id, record.sha256)
    return BlobMissing(record.sha256, file_id=record.id)


def lock_data_dir(data_dir: Path) -> int:
    """Take the data directory's lock (one process at a time); returns the fd holding it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(f"{data_dir} is in use by another filesd process") from None
    return fd


def _close_opened(opening: asyncio.Future[IO[bytes]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


async def _refuse_empty_database(meta: MetadataStore, blobs: BlobBackend) -> None:
    """Raise `StorageUnavailable` if the shared database holds nothing but the blobs do.

    A new or wrong database (a typo in its name, a restore into a new one) pointed at a bucket
    in use would make every blob look unreferenced, and the first sweep would delete them all.
    """
    if not await meta.holds_nothing():
        return
    digests = await blobs.digests()
    parts = await blobs.part_tokens_older_than(math.inf)
    if digests or parts:
        raise StorageUnavailable(
            "storage.database",
            f"the database holds no files, but storage.blobs holds {len(digests)} blob(s) and "
            f"{len(parts)} upload part(s): is this the database those belong to? Starting would "
            "delete them as unreferenced. Point storage.database at the right database (or "
            "restore it first); to start over on purpose, deleting them, pass --new-database.",
        )


def blob_backend(settings: StoreSettings) -> BlobBackend:
    """The configured blob backend, not yet prepared (`prepare()` it, `close()` it after)."""
    if not settings.blobs:
        return BlobDir(settings.data_dir)
    try:
        from ..storage.s3 import S3Blobs
    except ImportError as error:
        raise StorageUnavailable(
            "storage.blobs", f"S3 needs the s3 extra: pip install 'filesd[s3]' ({error})"
        ) from None
    bucket, _, prefix = settings.blobs.removeprefix("s3://").partition("/")
    s3 = settings.s3
    return S3Blobs(
        settings.data_dir / "spool",
        bucket=bucket,
        prefix=prefix.strip("/"),
        endpoint=s3.endpoint or None,
        region=s3.region,
        access_key_id=s3.access_key_id or None,
        secret_access_key=s3.secret_access_key or None,
    )


async def open_metadata(settings: StoreSettings) -> MetadataStore:
    """The configured metadata store, open and migrated."""
    if not settings.database:
        return await SqliteMetadata.open(database_path(settings.data_dir))
    try:
        from ..storage.postgres import PostgresMetadata
    except ImportError as error:
        raise StorageUnavailable(
            "storage.database",
            f"PostgreSQL needs the postgres extra: pip install 'filesd[postgres]' ({error})",
        ) from None
    return await PostgresMetadata.open(settings.database)
