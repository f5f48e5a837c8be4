"""The file store: the one service the HTTP layer talks to.

It joins the metadata database and the blob store and keeps them consistent:
- content is linked into the blob store (fsynced, renamed) before its row is committed, so a
  committed row always has its bytes;
- identical content is stored once; a blob is reclaimed when no file that is not deleted refers
  to it;
- linking a blob and inserting its row, and deleting a row and reclaiming its blob, each happen
  under one write lock, so a delete can never remove a blob that a concurrent upload of the same
  bytes is about to refer to;
- uploads that finish while a commit is under way are committed together (group commit): their
  blobs linked with one fsync per directory, their rows inserted in one statement (one commit),
  so concurrent uploads share the fsyncs instead of queueing behind one another's.
Blobs left without a row by a crash are swept by `sweep_orphans`, under the same lock.

Errors are plain exceptions (`FileNotFound`, `CursorNotFound`, `BlobMissing`, `BlobTooLarge`);
mapping them to HTTP is the caller's job.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .blobs import SMALL_BYTES, BlobStore, BlobTooLarge, BlobWriter, StagedBlob
from .db import Database
from .faultrules import storage_fault
from .ids import IdMaker
from .models import FilePage, FileRecord

__all__ = [
    "BlobMissing",
    "BlobTooLarge",
    "CursorNotFound",
    "DataDirLocked",
    "FileNotFound",
    "FileStore",
    "ImportConflict",
    "ListQuery",
    "QuotaExceeded",
    "lock_data_dir",
]

log = logging.getLogger(__name__)

_SWEEP_BATCH = 500
# Small blobs read for downloads are kept in memory up to this many bytes in all. Blobs are
# immutable (named by their digest), so the cache needs no invalidation: a digest's bytes are
# the same whenever they are stored.
SMALL_CACHE_BYTES = 32 * 1024 * 1024


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


class BlobMissing(Exception):
    """A live file's bytes are not on disk: the data directory was damaged from outside."""

    def __init__(self, record: FileRecord) -> None:
        super().__init__(f"blob {record.sha256} of file {record.id} is missing")
        self.record = record


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


class DataDirLocked(Exception):
    """Another filesd process is using this data directory."""


@dataclass
class _Queued:
    staged: StagedBlob
    record: FileRecord
    done: asyncio.Future[None]


@dataclass(frozen=True)
class ListQuery:
    purpose: str | None = None
    limit: int = 100
    offset: int = 0
    after: str | None = None
    order: Literal["asc", "desc"] = "desc"


class FileStore:
    """Files of all projects. Create with `await FileStore.open(...)`, end with `close()`."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        *,
        lock_fd: int,
        id_format: str,
        max_file_bytes: int,
        default_expires_after: Mapping[str, int],
        clock: Callable[[], float],
        small_cache_bytes: int = SMALL_CACHE_BYTES,
        max_files_per_project: int = 0,
        max_bytes_per_project: int = 0,
        id_seed: int | None = None,
    ) -> None:
        # db and blobs are shared with the upload service, which builds on this store.
        self.db = db
        self.blobs = blobs
        self._lock_fd = lock_fd
        self.ids = IdMaker(id_format, id_seed)
        self.new_file_id = self.ids.file_id
        self._max_file_bytes = max_file_bytes
        self._default_expires_after = dict(default_expires_after)
        self._clock = clock
        self._write_lock = asyncio.Lock()
        self._queue: list[_Queued] = []
        self._committer: asyncio.Task[None] | None = None
        self._small: dict[str, tuple[bytes, os.stat_result]] = {}
        self._small_bytes = 0
        self._small_limit = small_cache_bytes
        self._max_files = max_files_per_project
        self._max_bytes = max_bytes_per_project

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        id_format: str = "uuid",
        max_file_bytes: int = 512 * 1024 * 1024,
        default_expires_after: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.time,
        small_cache_bytes: int = SMALL_CACHE_BYTES,
        max_files_per_project: int = 0,
        max_bytes_per_project: int = 0,
        id_seed: int | None = None,
    ) -> FileStore:
        """Open (creating if needed) the store in `data_dir` and clean up interrupted uploads.

        Raises `DataDirLocked` if another process holds the directory.
        """
        blobs = BlobStore(data_dir)
        lock_fd = await asyncio.to_thread(lock_data_dir, data_dir)
        try:
            removed = await asyncio.to_thread(blobs.prepare)
            if removed:
                log.info("removed %d temp file(s) of interrupted uploads", removed)
            db = await Database.open(data_dir / "filesd.db")
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(
            db,
            blobs,
            lock_fd=lock_fd,
            id_format=id_format,
            max_file_bytes=max_file_bytes,
            default_expires_after=default_expires_after or {},
            clock=clock,
            small_cache_bytes=small_cache_bytes,
            max_files_per_project=max_files_per_project,
            max_bytes_per_project=max_bytes_per_project,
            id_seed=id_seed,
        )

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        await self.db.close()
        os.close(self._lock_fd)

    @property
    def max_file_bytes(self) -> int:
        return self._max_file_bytes

    def now(self) -> int:
        return int(self._clock())

    def blob_writer(self) -> BlobWriter:
        """A writer for the content of a new file, capped at `max_file_bytes`."""
        return self.blobs.writer(self._max_file_bytes)

    async def discard(self, staged: StagedBlob) -> None:
        """Drop staged content that will not become a file."""
        await asyncio.to_thread(self.blobs.discard, staged)

    async def create_file(
        self,
        project: str,
        staged: StagedBlob,
        *,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
        file_id: str | None = None,
    ) -> FileRecord:
        """Store staged content as a new file; the staged temp file is consumed either way.

        Without `expires_after` the purpose's default expiry applies (if any). `file_id` lets a
        caller reserve the id beforehand (see `new_file_id`); by default a new one is made.
        Returns once the file is durable: blob fsynced and linked, row committed.
        """
        if expires_after is None:
            expires_after = self._default_expires_after.get(purpose)
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
        self._queue.append(_Queued(staged, record, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        # Shielded: once queued, the commit goes on even if this caller is cancelled.
        await asyncio.shield(done)
        return record

    async def check_quota(self, project: str, incoming_bytes: int = 0) -> None:
        """Raise `QuotaExceeded` if the project cannot take one more file of this size.

        A cheap early refusal; the binding check happens when the file is committed.
        """
        if self._max_files or self._max_bytes:
            usage = await self.db.usage([project])
            self._check_quota(project, *usage[project], incoming_bytes)

    def _check_quota(self, project: str, files: int, size: int, incoming: int) -> None:
        if self._max_files and files + 1 > self._max_files:
            raise QuotaExceeded(project, "files", self._max_files)
        if self._max_bytes and size + incoming > self._max_bytes:
            raise QuotaExceeded(project, "bytes", self._max_bytes)

    async def _within_quotas(self, batch: list[_Queued]) -> list[_Queued]:
        """The queued files that fit their projects' quotas; the others are refused."""
        if not (self._max_files or self._max_bytes):
            return batch
        usage = await self.db.usage(sorted({q.record.project for q in batch}))
        accepted: list[_Queued] = []
        refused: list[StagedBlob] = []
        for queued in batch:
            project = queued.record.project
            files, size = usage[project]
            try:
                self._check_quota(project, files, size, queued.record.bytes)
            except QuotaExceeded as error:
                queued.done.set_exception(error)
                refused.append(queued.staged)
                continue
            usage[project] = (files + 1, size + queued.record.bytes)
            accepted.append(queued)
        if refused:
            await asyncio.to_thread(self._discard_all, refused)
        return accepted

    async def _commit_queued(self) -> None:
        """Commit everything queued, in batches, until the queue is empty."""
        while self._queue:
            batch, self._queue = self._queue, []
            linked: list[_Queued] = []
            try:
                async with self._write_lock:
                    batch = await self._within_quotas(batch)
                    results = await asyncio.to_thread(
                        self.blobs.link_all, [q.staged for q in batch]
                    )
                    for queued, result in zip(batch, results, strict=True):
                        if isinstance(result, Exception):
                            queued.done.set_exception(result)
                        else:
                            linked.append(queued)
                    # A crash here leaves blobs with no row: invisible, and swept at start-up.
                    if linked:
                        await self.db.insert_files([q.record for q in linked])
            except BaseException as error:
                for queued in batch:
                    if not queued.done.done():
                        queued.done.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                for queued in linked:
                    queued.done.set_result(None)
                for queued, result in zip(batch, results, strict=True):
                    if queued.staged.content is not None and not isinstance(result, Exception):
                        self._remember_small(
                            queued.staged.sha256, queued.staged.content, result.stat
                        )
            finally:
                for queued in batch:  # consumed by link_all, or never reached it
                    if not queued.done.done():
                        queued.done.set_exception(RuntimeError("commit abandoned"))

    async def get_file(self, project: str, file_id: str) -> FileRecord:
        record = await self.db.get_live_file(project, file_id, now=self.now())
        if record is None:
            raise FileNotFound(file_id)
        return record

    async def read_small(self, record: FileRecord) -> tuple[bytes, os.stat_result]:
        """A small file's bytes and its blob's stat, from memory or in one thread hop.

        Small blobs are kept in memory when written or read (up to the cache's bound), so a
        blob removed from disk behind filesd's back may still be served for a while; otherwise
        its absence raises `BlobMissing`.
        """
        _injected_missing_blob(record)
        cached = self._small.get(record.sha256)
        if cached is not None:
            return cached
        try:
            found = await asyncio.to_thread(self.blobs.read, record.sha256)
        except FileNotFoundError:
            log.error("file %s: blob %s is missing from disk", record.id, record.sha256)
            raise BlobMissing(record) from None
        self._remember_small(record.sha256, *found)
        return found

    def _remember_small(self, digest: str, content: bytes, stat: os.stat_result) -> None:
        """Keep a small blob in memory (written or read just now); evicts the oldest first."""
        if digest in self._small or len(content) > SMALL_BYTES:
            return
        self._small[digest] = (content, stat)
        self._small_bytes += len(content)
        while self._small_bytes > self._small_limit:
            oldest = next(iter(self._small))
            self._small_bytes -= len(self._small.pop(oldest)[0])

    async def blob_path(self, record: FileRecord) -> Path:
        """The path of a file's bytes; raises `BlobMissing` if they are gone."""
        _injected_missing_blob(record)
        path = self.blobs.path_for(record.sha256)
        if not await asyncio.to_thread(path.is_file):
            log.error("file %s: blob %s is missing from disk", record.id, record.sha256)
            raise BlobMissing(record)
        return path

    async def list_files(self, project: str, query: ListQuery) -> FilePage:
        # One row more than asked for tells whether another page follows.
        found = await self.db.list_live_files(
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
        async with self._write_lock:
            record = await self.db.mark_deleted(project, file_id, now=self.now())
            if record is None:
                raise FileNotFound(file_id)
            # A crash between the commit above and the unlink leaves an orphan blob: swept later.
            if not await self.db.blob_in_use(record.sha256):
                await asyncio.to_thread(self.blobs.remove, record.sha256)
        return record

    async def import_files(self, records: list[FileRecord], staged: list[StagedBlob]) -> None:
        """Store files exported elsewhere, ids and times kept; consumes `staged` either way.

        Refuses (`ImportConflict`, nothing stored) if any id is taken already.
        """
        try:
            async with self._write_lock:
                taken = await self.db.existing_ids([r.id for r in records])
                if taken:
                    raise ImportConflict(taken)
                results = await asyncio.to_thread(self.blobs.link_all, staged)
                staged = []
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    raise failed[0]
                if records:
                    await self.db.insert_files(records)
        finally:
            await asyncio.to_thread(self._discard_all, staged)

    async def reset(self, project: str | None) -> int:
        """Remove every file and upload, or one project's; returns how many live files went.

        For tests (the admin API): unlike a delete, no row is kept for audit.
        """
        async with self._write_lock:
            removed, tokens = await self.db.delete_everything(project)
        await asyncio.to_thread(self.blobs.remove_parts, tokens)
        self._small.clear()
        self._small_bytes = 0
        await self.sweep_orphans()
        return removed

    async def readiness_problems(self) -> list[str]:
        """What keeps the store from serving: an unreadable database, an unwritable data dir."""
        problems = []
        try:
            await self.db.schema_version()
        except Exception as error:
            problems.append(f"database: {error}")
        try:
            await asyncio.to_thread(self.blobs.check_writable)
        except OSError as error:
            problems.append(f"data directory: {error}")
        return problems

    async def sweep_expired(self) -> int:
        """Delete expired files for good (they are already hidden) and reclaim their blobs."""
        swept = 0
        while True:
            async with self._write_lock:
                digests = await self.db.delete_expired_files(now=self.now(), limit=_SWEEP_BATCH)
                unused = set(digests) - await self.db.blobs_in_use(sorted(set(digests)))
                if unused:
                    await asyncio.to_thread(self._remove_blobs, sorted(unused))
            swept += len(digests)
            if len(digests) < _SWEEP_BATCH:
                break
        if swept:
            log.info("swept %d expired file(s)", swept)
        return swept

    async def sweep_orphans(self) -> int:
        """Remove blobs no file refers to (left by a crash); returns how many were removed."""
        digests = await asyncio.to_thread(lambda: list(self.blobs.digests()))
        removed = 0
        for start in range(0, len(digests), _SWEEP_BATCH):
            batch = digests[start : start + _SWEEP_BATCH]
            # Under the lock no upload is between linking its blob and committing its row,
            # so a blob without a row here is truly unreferenced.
            async with self._write_lock:
                in_use = await self.db.blobs_in_use(batch)
                orphans = [d for d in batch if d not in in_use]
                if orphans:
                    removed += await asyncio.to_thread(self._remove_blobs, orphans)
        if removed:
            log.info("removed %d orphaned blob(s)", removed)
        return removed

    def _discard_all(self, staged: list[StagedBlob]) -> None:
        for item in staged:
            self.blobs.discard(item)

    def _remove_blobs(self, digests: list[str]) -> int:
        return sum(self.blobs.remove(d) for d in digests)


def _injected_missing_blob(record: FileRecord) -> None:
    rule = storage_fault.get()
    if rule is not None and rule.storage == "missing_blob":
        log.error("file %s: blob %s is missing (injected fault)", record.id, record.sha256)
        raise BlobMissing(record)


def lock_data_dir(data_dir: Path) -> int:
    """Take the data directory's lock (one process at a time); returns the fd holding it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "filesd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(f"{data_dir} is in use by another filesd process") from None
    return fd
