"""Uploads in parts (OpenAI's Uploads API), built on the files service.

An upload is created pending and lives for `UPLOAD_TTL` seconds. Parts stream into the parts
area (named by server tokens) and are recorded only while the upload is pending. Completing
claims the upload (status `completing`, with the file id reserved), joins the chosen parts in a
worker thread while hashing them, and hands the result to `FileService.create`, so the file is
content-addressed and deduplicated like any other. After a crash, `recover` finishes or reopens a
claimed upload by whether its reserved file exists, and removes part files without a row.

Hostile clients are bounded:
- A part holds at least one byte and an upload has at most `[limits] max_upload_parts` parts
  (each costs a
  file, a directory fsync and a row).
- Parts never hold more than the upload declared, and the parts of pending uploads count
  against the project's byte quota; both are decided with the part's insert, atomically, in the
  metadata store (`UploadMetadata.insert_part`), so parts racing one another cannot overshoot.
- A completion costs one write of the upload, once: everything that can refuse it is checked
  before anything is written. The size comes from the part rows, the quota from the project's
  usage, and a given `md5` is verified by READING the parts (no write, no fsync) before they are
  joined; the MD5 of a part order is remembered, so a repeat with the same parts costs nothing.
  After `MAX_MD5_MISMATCHES` mismatches the upload is cancelled (a client that cannot send the
  right checksum will not get one by retrying), so the reads are bounded too. And one
  completion per project runs at a time (others wait their turn), so one project's completions
  cannot take the disk from every other project's requests.

Errors are plain exceptions; the HTTP layer maps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any

from ..models import FileRecord, PartRecord, UploadRecord
from ..storage.base import BlobBackend, UploadMetadata
from .errors import (
    CompletionAbandoned,
    DuplicatePart,
    EmptyPart,
    FileIdTaken,
    Md5Mismatch,
    PartExceedsUpload,
    PartsSizeMismatch,
    PartTooLarge,
    QuotaExceeded,
    TooManyParts,
    UnknownPart,
    UploadNotFound,
    UploadNotPending,
)
from .files import FileService, Received
from .instance import Instance
from .settings import StoreSettings

log = logging.getLogger(__name__)

UPLOAD_TTL = 3600
# Checksum mismatches an upload may have; the last one cancels it.
MAX_MD5_MISMATCHES = 3
# Part orders whose MD5 is remembered (a few hundred bytes each).
_MD5_MEMORY = 1024


# With shared metadata, a part file without a row is an orphan only once it is this old: the
# instance that saved it may still be about to record it.
ORPHAN_PART_GRACE = 3600


class UploadService:
    """Uploads of every project, in parts."""

    def __init__(
        self,
        files: FileService,
        meta: UploadMetadata,
        blobs: BlobBackend,
        instance: Instance,
        settings: StoreSettings,
    ) -> None:
        self._files = files
        self._db = meta
        self._blobs = blobs
        self._instance = instance
        self._settings = settings
        self._max_parts = settings.max_upload_parts
        self._started = time.time()
        self._md5s: dict[tuple[str, ...], str] = {}  # part tokens in order -> their MD5
        self._completing: dict[str, tuple[asyncio.Lock, int]] = {}  # project -> lock, users

    async def create(
        self,
        project: str,
        *,
        filename: str,
        purpose: str,
        mime_type: str,
        size: int,
        file_expires_after: int | None,
    ) -> UploadRecord:
        now = self._files.now()
        upload = UploadRecord(
            id=self._files.ids.prefixed("upload_"),
            project=project,
            filename=filename,
            purpose=purpose,
            mime_type=mime_type,
            bytes=size,
            created_at=now,
            expires_at=now + UPLOAD_TTL,
            file_expires_after=file_expires_after,
            status="pending",
        )
        await self._db.insert_upload(upload)
        return upload

    async def get_pending(self, project: str, upload_id: str) -> UploadRecord:
        """The upload, if it still takes parts; raises `UploadNotFound` / `UploadNotPending`."""
        upload = await self._db.get_upload(project, upload_id)
        if upload is None:
            raise UploadNotFound(upload_id)
        if upload.status != "pending":
            raise UploadNotPending(upload_id, upload.status)
        if upload.expires_at <= self._files.now():
            raise UploadNotPending(upload_id, "expired")
        return upload

    async def receive_part(self, chunks: AsyncIterable[bytes]) -> Received:
        """Stage a part's content as it streams: at most `max_part_bytes` (`PartTooLarge`)."""
        return await self._files.receive(
            chunks, limit=self._settings.max_part_bytes, too_large=PartTooLarge
        )

    async def discard(self, received: Received) -> None:
        await self._files.discard(received)

    async def add_part(self, project: str, upload_id: str, received: Received) -> PartRecord:
        """Keep received content as the next part; consumes it either way."""
        try:
            if received.size == 0:
                raise EmptyPart()
            await self.get_pending(project, upload_id)
            token = await self._blobs.save_part(received.staged)
        except BaseException:
            await self.discard(received)
            raise
        part = PartRecord(
            id=self._files.ids.prefixed("part_"),
            upload_id=upload_id,
            token=token,
            bytes=received.size,
            created_at=self._files.now(),
        )
        # The insert re-checks the status (a part racing a complete or cancel is refused), the
        # number of parts, the declared size and the quota, all in one transaction (atomic
        # against the files of the project too, whose insert decides the same quota).
        quota = self._settings.max_bytes_per_project
        verdict = await self._db.insert_part(
            part, now=self._files.now(), max_project_bytes=quota, max_parts=self._max_parts
        )
        if verdict == "added":
            return part
        await self._blobs.remove_parts([token])
        if verdict == "too_many_parts":
            raise TooManyParts(self._max_parts)
        if verdict == "over_declared":
            upload = await self.get_pending(project, upload_id)
            raise PartExceedsUpload(upload.bytes, part.bytes)
        if verdict == "over_quota":
            raise QuotaExceeded(project, "bytes", quota)
        await self.get_pending(project, upload_id)  # raises with the current status
        raise UploadNotPending(upload_id, "expired")

    async def complete(
        self, project: str, upload_id: str, part_ids: list[str], md5: str | None
    ) -> tuple[UploadRecord, FileRecord]:
        """Join the parts into a file; see the module's docstring for what bounds the work."""
        async with self._one_completion(project):
            return await self._complete(project, upload_id, part_ids, md5)

    @contextlib.asynccontextmanager
    async def _one_completion(self, project: str) -> AsyncIterator[None]:
        """One completion of `project` at a time (the others wait): each writes a whole upload."""
        lock, users = self._completing.get(project, (asyncio.Lock(), 0))
        self._completing[project] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._completing[project]
            if users == 1:
                del self._completing[project]
            else:
                self._completing[project] = (lock, users - 1)

    async def _complete(
        self, project: str, upload_id: str, part_ids: list[str], md5: str | None
    ) -> tuple[UploadRecord, FileRecord]:
        upload = await self.get_pending(project, upload_id)
        parts = {p.id: p for p in await self._db.get_parts(upload_id)}
        seen: set[str] = set()
        for part_id in part_ids:
            if part_id not in parts:
                raise UnknownPart(part_id)
            if part_id in seen:
                raise DuplicatePart(part_id)
            seen.add(part_id)
        total = sum(parts[p].bytes for p in part_ids)
        if total != upload.bytes:
            raise PartsSizeMismatch(upload.bytes, total)
        # Refuse what can be refused before anything is written.
        await self._files.check_quota(project, upload.bytes, from_upload=upload_id)
        tokens = tuple(parts[p].token for p in part_ids)
        if md5 is not None:
            try:
                await self._verify_md5(upload_id, tokens, md5.lower())
            except FileNotFoundError:
                # The parts went while they were read: a cancel (or expiry) raced this
                # completion. Answer with the upload's state; if it is pending, the parts are
                # gone from under it (damage): that is the error.
                await self.get_pending(project, upload_id)
                raise

        file_id = self._files.new_file_id()
        if not await self._db.set_upload_status(
            upload_id, old="pending", new="completing", file_id=file_id, owner=self._instance.id
        ):
            await self.get_pending(project, upload_id)
            raise UploadNotPending(upload_id, "completing")
        creating: asyncio.Future[FileRecord] | None = None
        try:
            try:
                joined, joined_md5 = await self._blobs.concat_parts(tokens)
            except FileNotFoundError:
                # The parts went while they were joined: another instance settled this
                # completion (this one looked dead) or the upload was cancelled. Answer with
                # its state; if it is still this completion's, the parts are damaged.
                upload_now = await self._db.get_upload(project, upload_id)
                if upload_now is not None and (
                    upload_now.status != "completing" or upload_now.file_id != file_id
                ):
                    raise UploadNotPending(upload_id, upload_now.status) from None
                raise
            if md5 is not None and joined_md5 != md5.lower():
                await self._blobs.discard([joined])
                raise Md5Mismatch(md5, joined_md5, tries=MAX_MD5_MISMATCHES)
            # Once queued, the file's commit goes on even if this completion is cancelled
            # (see `Committer.commit`): the settlement below waits for its outcome.
            creating = asyncio.ensure_future(
                self._files.create(
                    project,
                    Received(joined.size, joined.sha256, joined),
                    filename=upload.filename,
                    purpose=upload.purpose,
                    expires_after=upload.file_expires_after,
                    file_id=file_id,
                    from_upload=upload_id,
                )
            )
            try:
                record = await asyncio.shield(creating)
            except CompletionAbandoned:
                raise UploadNotPending(upload_id, await self._status(project, upload_id)) from None
        finally:
            # Whatever happened (a failure, a cancel), the upload leaves `completing` by what
            # became of its file, and no further cancel can skip that.
            await _uncancellable(self._settle(project, upload_id, file_id, creating))
        return replace(upload, status="completed", file_id=file_id), record

    async def _status(self, project: str, upload_id: str) -> str:
        upload = await self._db.get_upload(project, upload_id)
        return "gone" if upload is None else upload.status

    async def _settle(
        self,
        project: str,
        upload_id: str,
        file_id: str,
        creating: asyncio.Future[FileRecord] | None,
    ) -> None:
        """End a claimed completion: completed if its file was made, else pending again."""
        made = False
        if creating is not None:
            await asyncio.wait([creating])
            error = None if creating.cancelled() else creating.exception()
            if error is None and not creating.cancelled():
                made = True
            elif not isinstance(error, FileIdTaken):  # a taken id is another file's
                # Failed or cut short: the commit may still have stored the row.
                made = await self._db.file_exists(file_id)
        if made:
            await self._finish(project, upload_id, file_id)
        else:
            await self._db.set_upload_status(
                upload_id, old="completing", new="pending", attempt=file_id
            )

    async def _verify_md5(self, upload_id: str, tokens: tuple[str, ...], md5: str) -> None:
        """Raise `Md5Mismatch` unless the parts joined in this order have this MD5, read
        without writing (and remembered); the last allowed mismatch cancels the upload."""
        actual = self._md5s.get(tokens)
        if actual is None:
            actual = await self._blobs.parts_md5(tokens)
            if len(self._md5s) >= _MD5_MEMORY:
                del self._md5s[next(iter(self._md5s))]
            self._md5s[tokens] = actual
        if actual == md5:
            return
        failures = await self._db.note_failed_completion(upload_id)
        cancelled = failures >= MAX_MD5_MISMATCHES and await self._db.set_upload_status(
            upload_id, old="pending", new="cancelled"
        )
        if cancelled:
            log.info("upload %s cancelled after %d checksum mismatches", upload_id, failures)
            await self._drop_parts(upload_id)
        raise Md5Mismatch(md5, actual, cancelled=cancelled, tries=MAX_MD5_MISMATCHES)

    async def cancel(self, project: str, upload_id: str) -> UploadRecord:
        upload = await self.get_pending(project, upload_id)
        if not await self._db.set_upload_status(upload_id, old="pending", new="cancelled"):
            await self.get_pending(project, upload_id)
            raise UploadNotPending(upload_id, "completing")
        await self._drop_parts(upload_id)
        return replace(upload, status="cancelled")

    async def sweep_expired(self) -> int:
        """Mark uploads past their expiry as expired and remove their parts.

        Also removes parts any earlier sweep, completion or cancellation left behind (a crash
        between marking an upload and removing its parts), so every sweep finishes the job.
        """
        expired = await self._db.expire_uploads(now=self._files.now())
        for upload_id in await self._db.finished_uploads_with_parts():
            await self._drop_parts(upload_id)
        if expired:
            log.info("expired %d upload(s)", len(expired))
        return len(expired)

    async def recover(self) -> None:
        """Settle uploads a crash left mid-completion (this process's earlier life's, or, with
        shared metadata, those of an instance whose heartbeat expired); remove part files no
        part row names.

        Runs at start-up and with every sweep. Another live instance's completions are its
        own, and a part it has just saved may not have its row yet: with shared metadata only
        parts older than `ORPHAN_PART_GRACE` are candidates.
        """
        now = int(time.time())  # real time, as heartbeats are
        for upload in await self._db.abandoned_completions(self._instance.id, now=now):
            if upload.file_id is not None and await self._db.file_exists(upload.file_id):
                await self._finish(upload.project, upload.id, upload.file_id)
            else:
                await self._db.set_upload_status(
                    upload.id, old="completing", new="pending", attempt=upload.file_id
                )
        cutoff = self._started
        if self._instance.shared:
            cutoff = min(cutoff, time.time() - ORPHAN_PART_GRACE)
        on_disk = await self._blobs.part_tokens_older_than(cutoff)
        orphans = set(on_disk) - await self._db.part_tokens_in_use(on_disk)
        if orphans:
            await self._blobs.remove_parts(sorted(orphans))
            log.info("removed %d part file(s) of interrupted uploads", len(orphans))

    async def _finish(self, project: str, upload_id: str, file_id: str) -> None:
        # Only the completion that made `file_id` (its insert marked it completed already; a
        # recovery finds it still completing): if another instance settled it meanwhile (this
        # one looked dead) and a new completion is under way, its parts are in use.
        await self._db.set_upload_status(
            upload_id, old="completing", new="completed", file_id=file_id, attempt=file_id
        )
        upload = await self._db.get_upload(project, upload_id)
        if upload is not None and upload.status == "completed" and upload.file_id == file_id:
            await self._drop_parts(upload_id)

    async def _drop_parts(self, upload_id: str) -> None:
        tokens = await self._db.delete_parts(upload_id)
        dropped = set(tokens)
        for key in [k for k in self._md5s if not dropped.isdisjoint(k)]:
            del self._md5s[key]
        await self._blobs.remove_parts(tokens)


async def _uncancellable(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end even if the caller is cancelled meanwhile (then raise
    CancelledError after it): cleanup that must not be skipped by a second cancel."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True  # (if `task` itself was cancelled, its result raises below)
    task.result()
    if cancelled:
        raise asyncio.CancelledError
