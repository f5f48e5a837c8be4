"""Files: receiving content, making it a file, finding, listing, deleting and reading files.

What the HTTP layer and the batch runner call. Content comes in as a stream of chunks and is
staged while it streams (hashed, never held whole in memory: `receive`), then made a file
(`create`, through the group commit of `commits.py`). Identical content is stored once: a file
names its blob by SHA-256, and a blob is reclaimed once no file that is not deleted refers to
it (`Instance.reclaim`, decided in the metadata store against every instance's claims).

Errors are the plain exceptions of `errors.py`; mapping them to HTTP is the caller's job.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Literal

from ..ids import IdMaker
from ..models import FilePage, FileRecord
from ..storage import rules
from ..storage.base import (
    SMALL_BYTES,
    BlobBackend,
    BlobMissing,
    BlobTooLarge,
    FileMetadata,
    StagedBlob,
)
from .commits import Committer
from .errors import CursorNotFound, FileNotFound, FileTooLarge, QuotaExceeded
from .instance import Instance
from .settings import StoreSettings

log = logging.getLogger(__name__)

# Files up to this size are read whole (from memory, or in one thread hop) to be sent.
SMALL_CONTENT = SMALL_BYTES


@dataclass(frozen=True, eq=False)
class Received:
    """Content received and staged: its size and SHA-256, not yet a file. Make it one
    (`FileService.create`) or discard it; `staged` is the services' own."""

    size: int
    sha256: str
    staged: StagedBlob


@dataclass(frozen=True)
class ListQuery:
    purpose: str | None = None
    limit: int = 100
    offset: int = 0
    after: str | None = None
    order: Literal["asc", "desc"] = "desc"


class _Unset:
    pass


_MAX_FILE_BYTES = _Unset()


class FileService:
    """Files of all projects."""

    def __init__(
        self,
        meta: FileMetadata,
        blobs: BlobBackend,
        committer: Committer,
        instance: Instance,
        settings: StoreSettings,
        *,
        ids: IdMaker,
        clock: Callable[[], float],
    ) -> None:
        self._meta = meta
        self._blobs = blobs
        self._committer = committer
        self._instance = instance
        self._settings = settings
        self._clock = clock
        self.ids = ids
        self.new_file_id = ids.file_id

    @property
    def max_file_bytes(self) -> int:
        return self._settings.max_file_bytes

    def now(self) -> int:
        return int(self._clock())

    # --- making files ---------------------------------------------------------------------------

    async def receive(
        self,
        chunks: AsyncIterable[bytes],
        *,
        limit: int | _Unset | None = _MAX_FILE_BYTES,
        too_large: Callable[[int], Exception] = FileTooLarge,
    ) -> Received:
        """Stage the content of `chunks`, hashing it as it streams. At most `limit` bytes
        (by default `max_file_bytes`; None: no cap, for content the server makes itself), else
        `too_large(limit)` is raised; nothing is left behind on any failure."""
        cap = self._settings.max_file_bytes if isinstance(limit, _Unset) else limit
        writer = self._blobs.writer(cap)
        try:
            async for chunk in chunks:
                await writer.write(chunk)
            staged = await writer.finish()
        except BlobTooLarge as error:
            await writer.abort()
            raise too_large(error.limit) from None
        except BaseException:
            await writer.abort()
            raise
        return Received(staged.size, staged.sha256, staged)

    async def discard(self, received: Received) -> None:
        """Drop received content that will not become a file."""
        await self._blobs.discard([received.staged])

    async def create(
        self,
        project: str,
        content: Received,
        *,
        filename: str,
        purpose: str,
        expires_after: int | None = None,
        file_id: str | None = None,
        from_upload: str | None = None,
    ) -> FileRecord:
        """Make received content a new file; the content is consumed either way.

        Without `expires_after` the purpose's default expiry applies (if any). `file_id` lets a
        caller reserve the id beforehand (see `new_file_id`); by default a new one is made.
        `from_upload` names the upload whose parts this content joins (see `Committer`).
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
            bytes=content.size,
            sha256=content.sha256,
            created_at=created_at,
            expires_at=None if expires_after is None else created_at + expires_after,
        )
        await self._committer.commit(content.staged, record, from_upload=from_upload)
        return record

    async def check_quota(
        self, project: str, incoming_bytes: int = 0, *, from_upload: str | None = None
    ) -> None:
        """Raise `QuotaExceeded` if the project cannot take one more file of this size.

        The bytes held count the parts of the project's unfinished uploads, but those of
        `from_upload` (the upload whose parts become this file). A cheap early refusal; the
        binding check happens when the file is committed, by the same rule.
        """
        quota = self._settings.quota
        if not quota:
            return
        excluding = [] if from_upload is None else [from_upload]
        usage = await self._meta.usage([project], excluding_uploads=excluding)
        over = rules.over_quota(usage[project], quota, incoming_bytes)
        if over is not None:
            limit = quota.files if over == "files" else quota.bytes
            raise QuotaExceeded(project, over, limit)

    # --- finding, listing, deleting -------------------------------------------------------------

    async def get(self, project: str, file_id: str) -> FileRecord:
        """The live file; `FileNotFound` if there is none (or it is another project's)."""
        record = await self._meta.get_live_file(project, file_id, now=self.now())
        if record is None:
            raise FileNotFound(file_id)
        return record

    async def list(self, project: str, query: ListQuery) -> FilePage:
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

    async def delete(self, project: str, file_id: str) -> FileRecord:
        """Soft-delete a file and reclaim its blob if no other file refers to it."""
        record = await self._meta.mark_deleted(project, file_id, now=self.now())
        if record is None:
            raise FileNotFound(file_id)
        # The delete is committed: a reclaim that fails (or a crash before it) leaves an orphan
        # blob, swept later, and must not turn the answer into an error.
        try:
            await self._instance.reclaim([record.sha256])
        except Exception:
            log.exception("file %s deleted; reclaiming its blob failed", file_id)
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
            return await self._blobs.open_local(record.sha256)
        except BlobMissing:
            raise _missing(record) from None

    def download_url(self, record: FileRecord, *, expires_in: int) -> str | None:
        """A short-lived URL the file's bytes can be fetched from directly, or None when the
        blob backend has none (local files)."""
        return self._blobs.download_url(
            record.sha256, filename=record.filename, expires_in=expires_in
        )

    def open_stream(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The content of `record` from its start, straight from the blob backend, for a
        reader in the background (the batch runner) that may stop early: closing the
        iterator (`aclose`) closes the underlying file or connection at once, rather than
        leaving it to the garbage collector. Raises `BlobMissing` if the content is gone."""
        return self._blobs.open_range(record.sha256)

    async def read_range(
        self, record: FileRecord, start: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """`length` bytes (None: to the end) of a file from `start`, as a stream of chunks.
        Raises `BlobMissing` (on the first iteration) if they are gone."""
        stream = self._blobs.open_range(record.sha256, start, length)
        try:
            async for chunk in stream:
                yield chunk
        except BlobMissing:
            raise _missing(record) from None
        finally:
            # Closed with this one (its file or connection at once), not by the collector.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()


def _missing(record: FileRecord) -> BlobMissing:
    log.error("file %s: blob %s is missing from storage", record.id, record.sha256)
    return BlobMissing(record.sha256, file_id=record.id)
