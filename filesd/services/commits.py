"""Making staged content files: the group commit, and the import of files made elsewhere.

Content is committed to the blob backend (durable) before its row is committed, so a committed
row always has its bytes. In between, the instance holds a claim on the blob's digest: no
instance may delete that blob until the insert (which ends the claim in its transaction)
refers to it, so an upload of some bytes racing the delete of a file of the same bytes on any
instance never loses data. A crash between the two leaves a blob with no row: invisible, and
swept later.

Files that finish while a commit is under way are committed together: their blobs with one
durability barrier, their rows in one insert (one transaction), so concurrent uploads share
the fsyncs instead of queueing behind one another's. One group (or import) is in flight per
instance at a time: claims are counted per instance and digest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..models import FileRecord
from ..storage import rules
from ..storage.base import BlobBackend, FileMetadata, StagedBlob, StorageBusy
from ..storage.rules import InsertVerdict, Quota
from .errors import CompletionAbandoned, FileIdTaken, ImportConflict, QuotaExceeded
from .instance import Instance

log = logging.getLogger(__name__)


@dataclass
class _Queued:
    staged: StagedBlob
    record: FileRecord
    done: asyncio.Future[None]
    from_upload: str | None = None  # the upload whose parts become this file


class Committer:
    """Commits staged content as files, grouped. `close()` waits for a commit under way."""

    def __init__(
        self, meta: FileMetadata, blobs: BlobBackend, instance: Instance, *, quota: Quota
    ) -> None:
        self._meta = meta
        self._blobs = blobs
        self._instance = instance
        self._quota = quota
        # Held by a group commit or an import from its claims to its rows.
        self._writing = asyncio.Lock()
        self._queue: list[_Queued] = []
        self._committer: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)

    async def commit(
        self, staged: StagedBlob, record: FileRecord, *, from_upload: str | None = None
    ) -> None:
        """Store `staged` as the file `record`; consumed either way. Returns once the file is
        durable (blob committed, row committed); raises what refused it (`QuotaExceeded`,
        `FileIdTaken`, `CompletionAbandoned`, a storage error). `from_upload` names the
        upload being completed into this file: its parts (which count against the byte quota
        while it is unfinished) are not counted besides the file, and it becomes `completed`
        in the file's transaction."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(staged, record, done, from_upload))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued())
        # Shielded: once queued, the commit goes on even if this caller is cancelled.
        await asyncio.shield(done)

    async def _commit_queued(self) -> None:
        """Commit everything queued, in groups, until the queue is empty."""
        while self._queue:
            group, self._queue = self._queue, []
            stored: list[_Queued] = []
            try:
                async with self._writing:
                    group = await self._within_quotas(group)
                    stored = await self._commit_group(group)
            except BaseException as error:
                for queued in group:
                    if not queued.done.done():
                        queued.done.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                for queued in stored:
                    queued.done.set_result(None)
            finally:
                for queued in group:  # consumed by the commit, or never reached it
                    if not queued.done.done():
                        queued.done.set_exception(RuntimeError("commit abandoned"))

    async def _within_quotas(self, group: list[_Queued]) -> list[_Queued]:
        """The queued files that fit their projects' quotas; the others are refused. An early
        refusal, before any blob is stored, by the rule the insert applies again (binding)."""
        if not self._quota:
            return group
        # Bytes held count unfinished uploads' parts, but those of the uploads being completed
        # here: their parts become these files (counted once, as the file).
        usage = await self._meta.usage(
            sorted({q.record.project for q in group}),
            excluding_uploads=[q.from_upload for q in group if q.from_upload is not None],
        )
        verdicts: list[InsertVerdict] = ["inserted"] * len(group)
        completing = {i for i, q in enumerate(group) if q.from_upload is not None}
        records = [q.record for q in group]
        rules.quota_verdicts(records, usage, self._quota, verdicts, refused_keep_bytes=completing)
        accepted = [q for q, v in zip(group, verdicts, strict=True) if v == "inserted"]
        refused = [
            (q, self.refusal(q.record, v))
            for q, v in zip(group, verdicts, strict=True)
            if v != "inserted"
        ]
        # Discarded before the refusals are answered: a client that got its 400 finds nothing
        # of its upload left behind.
        try:
            await self._blobs.discard([queued.staged for queued, _ in refused])
        finally:
            for queued, error in refused:
                queued.done.set_exception(error)
        return accepted

    async def _commit_group(self, group: list[_Queued]) -> list[_Queued]:
        """Claim the group's blobs, store them, insert the rows (which end the claims); fail
        the files refused on the way. Returns those stored. Under `_writing`."""
        if not group:
            return []
        digests = sorted({q.staged.sha256 for q in group})
        try:
            await self._instance.claim(digests)
        except BaseException:
            await self._blobs.discard([q.staged for q in group])
            raise
        try:
            results = await self._blobs.commit([q.staged for q in group])
        except BaseException:
            await self._instance.release(digests)
            raise
        linked = [q for q, r in zip(group, results, strict=True) if not isinstance(r, Exception)]
        failed = [(q, r) for q, r in zip(group, results, strict=True) if isinstance(r, Exception)]
        # The claims of digests whose every blob failed to commit are no insert's to end (they
        # would pin the blob for good); the insert ends the others, whatever becomes of it.
        uncovered = sorted(set(digests) - {q.record.sha256 for q in linked})
        verdicts: list[InsertVerdict] = []
        try:
            if linked:
                uploads = {q.record.id: q.from_upload for q in linked if q.from_upload}
                verdicts = await self._meta.insert_files(
                    [q.record for q in linked],
                    instance=self._instance.id,
                    quota=self._quota,
                    excluding_uploads=list(uploads.values()),
                    completions=uploads,
                )
        finally:
            await self._instance.release(uncovered)
        stored = [q for q, v in zip(linked, verdicts, strict=True) if v == "inserted"]
        refused = [(q, v) for q, v in zip(linked, verdicts, strict=True) if v != "inserted"]
        if refused or failed:
            unused = {q.record.sha256 for q, _ in refused} | {q.staged.sha256 for q, _ in failed}
            try:
                await self._instance.reclaim(sorted(unused))
            except Exception:  # the others' rows are committed: an orphan is swept later
                log.exception("could not reclaim the blobs of refused files")
            # Answered once cleaned up: a client told no finds nothing of its upload left.
            for queued, verdict in refused:
                queued.done.set_exception(self.refusal(queued.record, verdict))
            for queued, error in failed:
                queued.done.set_exception(error)
        return stored

    def refusal(self, record: FileRecord, verdict: InsertVerdict) -> Exception:
        """The error that tells why `record` was not inserted."""
        if verdict == "taken":
            log.error("file id %s is taken already: upload refused", record.id)
            return FileIdTaken(record.id)
        if verdict in ("over_files", "over_bytes"):
            what = "files" if verdict == "over_files" else "bytes"
            limit = self._quota.files if what == "files" else self._quota.bytes
            return QuotaExceeded(record.project, what, limit)
        if verdict == "abandoned":
            return CompletionAbandoned(record.id)
        log.error("file %s: the claim on its blob was lost (instance presumed dead)", record.id)
        return StorageBusy("this instance lost its claim on the file's blob; try again")

    async def import_files(self, records: Sequence[FileRecord], staged: list[StagedBlob]) -> None:
        """Store files made elsewhere (ids and times kept), all or none; consumes `staged`
        either way. Raises `ImportConflict` if any id exists already."""
        digests = sorted({r.sha256 for r in records})
        try:
            async with self._writing:
                taken = await self._meta.existing_ids([r.id for r in records])
                if taken:
                    raise ImportConflict(taken)
                await self._instance.claim(digests)
                try:
                    results, staged = await self._blobs.commit(staged), []
                except BaseException:
                    await self._instance.release(digests)
                    raise
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    await self._instance.release(digests)
                    raise failed[0]
                # The insert re-checks the ids (another instance may have taken one), all or
                # none, and ends the claims whatever becomes of it.
                taken = await self._meta.import_files(records, instance=self._instance.id)
                if taken:
                    await self._instance.reclaim(digests)
                    raise ImportConflict(taken)
        finally:
            await self._blobs.discard(staged)
