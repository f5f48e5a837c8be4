"""The storage seams: a metadata store and a blob backend, as Protocols, and the neutral errors
they raise.

The services are written against these Protocols only, each handed the narrow ones it uses
(files, uploads, keys, batches, coordination), so another metadata engine (PostgreSQL) or blob
backend (S3-compatible) fits beside the local ones without touching them or the HTTP layer.
The decisions every metadata backend shares are made once, in `metadata.SharedMetadata` over
the pure functions of `rules`. Nothing here names a driver's types:
rows come back as the plain records of `filesd.models`, failures as the errors below, decided
by error codes (`sqlite_errorcode`, `errno`), never by matching message text.

Backends must not import aiohttp or the HTTP layer.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from ..models import (
    BatchRecord,
    BatchResult,
    FileRecord,
    KeyRecord,
    PartRecord,
    ProjectUsage,
    StorageTotals,
    UploadRecord,
)
from .rules import NO_QUOTA, InsertVerdict, PartVerdict, QueuedBatch, Quota, Usage

# Content up to this size is kept in memory by its writer (see StagedBlob.content).
SMALL_BYTES = 64 * 1024


# --- neutral errors ----------------------------------------------------------------------------


class StorageFull(Exception):
    """No room left: the disk, a quota of the filesystem, or the database's device is full."""


class StorageBusy(Exception):
    """The metadata store stayed locked by another writer past its busy timeout."""


class BlobMissing(Exception):
    """A blob that should be stored is not (damage from outside, or an injected fault).

    `file_id` names the file whose bytes were asked for, when the caller knows it.
    """

    def __init__(self, digest: str, file_id: str | None = None) -> None:
        what = f"blob {digest}" + (f" of file {file_id}" if file_id else "")
        super().__init__(f"{what} is missing")
        self.digest = digest
        self.file_id = file_id


class BlobTooLarge(Exception):
    """The content being written exceeded the writer's byte limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"content exceeds {limit} bytes")
        self.limit = limit


class SchemaTooNew(Exception):
    """The database was written by a newer filesd than this one."""


class StorageUnavailable(Exception):
    """A configured backend cannot be used (unreachable, refused credentials, a missing
    bucket or database). `setting` names the configuration key to look at, e.g.
    `storage.database` or `storage.blobs`; the message says what is wrong, without secrets."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


_token_prefix = os.urandom(8).hex()
_token_numbers = itertools.count()


def _new_token_prefix() -> None:
    global _token_prefix
    _token_prefix = os.urandom(8).hex()


# A forked child would otherwise go on with its parent's prefix and numbers.
os.register_at_fork(after_in_child=_new_token_prefix)


def unique_token() -> str:
    """32 hex digits, never the same twice in this process and, by a random prefix drawn
    when the process starts (or forks), not in another one either: names for temp files (a
    uuid4 per upload cost a system call)."""
    return f"{_token_prefix}{next(_token_numbers):016x}"


def is_storage_full(error: BaseException) -> bool:
    """An OSError that means "no room left" (by errno)."""
    return isinstance(error, OSError) and error.errno in _FULL_ERRNOS


def neutral_os_error(error: OSError) -> Exception:
    """`StorageFull` for a full disk or quota, else the error itself."""
    if is_storage_full(error):
        full = StorageFull(str(error))
        full.__cause__ = error
        return full
    return error


# --- blobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedBlob:
    """Complete, durable content that is not yet stored under its digest.

    `ref` names the staged data inside its backend (opaque to everyone else). `content` holds
    the bytes too when they are at most SMALL_BYTES (else None), so small files need no read.
    """

    ref: str
    sha256: str
    size: int
    content: bytes | None = None


class BlobWriter(Protocol):
    """Streams new content into staging, hashing it (SHA-256) while it streams.

    Call `write` for each chunk, then exactly one of `finish` or `abort`. Raises `BlobTooLarge`
    once more than the writer's limit arrived, `StorageFull` when there is no room.
    """

    @property
    def size(self) -> int:
        """Bytes accepted so far."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def finish(self) -> StagedBlob:
        """Flush; the staged content is then complete. It is durable once `commit` returns
        (a backend may keep staging transient: a crash before the commit loses only content
        nobody was told is stored)."""
        ...

    async def abort(self) -> None:
        """Drop what was written. Safe at any point, also after `finish` (then a no-op)."""
        ...


class BlobBackend(Protocol):
    """Content-addressed bytes, named by lowercase hex SHA-256, plus the parts of uploads.

    Staging makes content durable before it is committed under its digest; a committed blob
    holds exactly the bytes of its digest. Parts are pieces of an upload in progress, named by
    tokens the backend makes (never by anything a client sent); they outlive a restart.
    """

    async def prepare(self, *, clean: bool = True) -> int:
        """Make the backend ready; with `clean`, remove staged content a crash left. Returns
        how many were removed.

        Raises `StorageUnavailable` (naming `storage.blobs`) when the backend cannot be used,
        e.g. its bucket does not exist."""
        ...

    async def close(self) -> None:
        """Release connections; the backend is not used afterwards."""
        ...

    def download_url(self, digest: str, *, filename: str, expires_in: int) -> str | None:
        """A short-lived URL a client can fetch the blob from directly (a presigned GET that
        answers with `Content-Disposition: attachment` naming `filename`), or None when the
        backend has none (local files). No I/O."""
        ...

    def writer(self, max_bytes: int | None = None) -> BlobWriter:
        """A writer for new content, capped at `max_bytes` (None: no cap)."""
        ...

    async def commit(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        """Store staged content under its digest, grouped (one durability barrier for all).

        Per item: True if the blob is new, False if it was stored already, or the error for
        that item. The staged content is consumed whatever the outcome.
        """
        ...

    async def discard(self, staged: Sequence[StagedBlob]) -> None:
        """Drop staged content that will not be committed."""
        ...

    async def read(self, digest: str) -> bytes:
        """A whole blob (for small blobs); raises `BlobMissing`."""
        ...

    def open_range(
        self, digest: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """`length` bytes (None: to the end) of a blob from `start`, as a stream of chunks.

        Raises `BlobMissing` (on the first iteration) if the blob is not there.
        """
        ...

    async def open_local(self, digest: str) -> BinaryIO | None:
        """The blob opened for reading from this machine's filesystem (for zero-copy
        sendfile; the caller closes it), or None for backends without local files. Raises
        `BlobMissing` if the blob is not there."""
        ...

    async def delete(self, digests: Sequence[str]) -> int:
        """Remove blobs; returns how many were there."""
        ...

    async def quarantine(self, digests: Sequence[str]) -> None:
        """Move blobs whose bytes do not match their digest out of the way: kept where an
        operator can look at them, no longer stored under their digest (so the right bytes
        can be stored there again)."""
        ...

    async def leftovers(self) -> list[str]:
        """Names of staged content a crash left (what `prepare(clean=True)` removes)."""
        ...

    async def remove_leftovers(self, names: Sequence[str]) -> int:
        """Remove these leftovers; returns how many were there."""
        ...

    async def digests(self) -> list[str]:
        """Every digest stored, in no particular order."""
        ...

    async def missing(self, digests: Sequence[str]) -> set[str]:
        """The subset of `digests` that is not stored (damage from outside, quarantine)."""
        ...

    async def check_writable(self) -> None:
        """Raise unless new content can be staged now."""
        ...

    async def save_part(self, staged: StagedBlob) -> str:
        """Keep staged content as an upload part; returns its token. Consumes `staged`."""
        ...

    async def remove_parts(self, tokens: Sequence[str]) -> int:
        """Remove parts; returns how many were there."""
        ...

    async def part_tokens_older_than(self, cutoff: float) -> list[str]:
        """Tokens of the parts saved before `cutoff` (Unix time)."""
        ...

    async def concat_parts(self, tokens: Sequence[str]) -> tuple[StagedBlob, str]:
        """Join parts, in order, into new staged content; returns it and its MD5 (hex).

        The parts stay in place. Raises `FileNotFoundError` if a part is gone.
        """
        ...

    async def parts_md5(self, tokens: Sequence[str]) -> str:
        """The MD5 (hex) of the parts joined in order, read without writing anything.
        Raises `FileNotFoundError` if a part is gone."""
        ...


# --- metadata ----------------------------------------------------------------------------------


class UploadMetadata(Protocol):
    """The part of the metadata store that the Uploads API needs."""

    async def file_exists(self, file_id: str) -> bool: ...

    async def insert_upload(self, upload: UploadRecord) -> None: ...

    async def get_upload(self, project: str, upload_id: str) -> UploadRecord | None: ...

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
        """Move an upload from status `old` to `new`; False if it was not in `old`.

        `owner` names the instance that takes the upload into `completing` (see
        `abandoned_completions`); a move without one clears it. With `attempt`
        (the file id a completion was started with), only that completion is moved on: a
        completion that was settled by another instance meanwhile, and started again, is not
        the caller's to finish."""
        ...

    async def insert_part(
        self, part: PartRecord, *, now: int, max_project_bytes: int, max_parts: int = 0
    ) -> PartVerdict:
        """Add a part to a pending, unexpired upload, atomically with the checks: refused
        (nothing added) if the upload is not pending (`not_pending`), if it has `max_parts`
        parts already (0: no limit; `too_many_parts`), if its parts would
        then hold more than its declared bytes (`over_declared`), or if `max_project_bytes`
        (0: no limit) would be passed by the project's live files, the parts of its pending
        uploads and this part (`over_quota`). Concurrent parts cannot overshoot either."""
        ...

    async def note_failed_completion(self, upload_id: str) -> int:
        """Count a failed completion of an upload (kept with it); returns how many so far."""
        ...

    async def get_parts(self, upload_id: str) -> list[PartRecord]: ...

    async def delete_parts(self, upload_id: str) -> list[str]:
        """Remove the part rows of an upload; returns their tokens."""
        ...

    async def expire_uploads(self, *, now: int) -> list[str]:
        """Mark pending uploads past their expiry as expired; returns their ids."""
        ...

    async def finished_uploads_with_parts(self) -> list[str]: ...

    async def abandoned_completions(self, instance: str, *, now: int) -> list[UploadRecord]:
        """Uploads in `completing` whose owner is not `instance` and is not alive at `now`
        (its heartbeat expired, or it never had one): a crash left them mid-completion."""
        ...

    async def part_tokens_in_use(self, tokens: Sequence[str]) -> set[str]: ...


class KeyMetadata(Protocol):
    """API keys made with `filesd keys create` (digests only)."""

    async def insert_key(self, key: KeyRecord) -> None: ...

    async def keys(self) -> list[KeyRecord]:
        """Every key, revoked ones too, oldest first."""
        ...

    async def revoke_key(self, key_id: str, now: int) -> bool: ...


class Coordination(Protocol):
    """What keeps several instances sharing one database from stepping on each other.

    An *instance* is one running filesd (a random id per start). It stays alive while it
    sends heartbeats; once its heartbeat expires, others take over its leases, its claims
    stop counting and its completions are settled by `abandoned_completions`. On a database
    only one process can open (SQLite), the instances of that process are the only ones.

    Reclaiming a blob is decided here, never by a process-local lock: an upload first
    *claims* the digests it is about to refer to, then stores the blobs, then inserts its
    rows (which release the claims, in the same transaction). A reclaim *begins* only for
    digests that no file not deleted and no live claim refers to, atomically with that check,
    and a claim is refused while a live reclaim of its digest is under way. So once a claim
    is granted, no blob delete can start for that digest until the claim ends; and a row is
    inserted only while its claim holds (else `unclaimed`), which fences an instance that was
    paused past its heartbeat.
    """

    async def heartbeat(self, instance: str, *, now: int, ttl: int) -> None:
        """Record that `instance` is alive until `now + ttl`."""
        ...

    async def take_lease(self, name: str, instance: str, *, now: int, ttl: int) -> bool:
        """Hold lease `name` until `now + ttl` if it is free, expired, or `instance`'s
        already; False if another instance holds it. (Background work: one at a time.)"""
        ...

    async def claim_blobs(self, digests: Sequence[str], instance: str, *, now: int) -> set[str]:
        """Claim each digest for `instance` (claims are counted: each claim is ended once by
        an insert or `release_claims`); returns those not claimed because a live
        instance is reclaiming them right now (retry once that ends). A reclaim begun by an
        instance that is no longer alive is abandoned: the claim takes its place."""
        ...

    async def release_claims(self, digests: Sequence[str], instance: str) -> None:
        """End `instance`'s claims on these digests (nothing is inserted after all)."""
        ...

    async def begin_reclaim(self, digests: Sequence[str], instance: str, *, now: int) -> list[str]:
        """Of `digests`, mark as being reclaimed by `instance` (and return) those that no
        file not deleted refers to, no live instance's claim holds and no live instance
        reclaims already: all decided in one transaction. Expired claims on them are dropped.
        Returns nothing unless `instance` itself is alive at `now`. The caller then deletes
        the returned blobs and calls `end_reclaim`."""
        ...

    async def end_reclaim(self, digests: Sequence[str], instance: str) -> None:
        """The blobs of a reclaim `instance` began are gone (or the attempt is given up)."""
        ...


# --- batches -----------------------------------------------------------------------------------

# The statuses of a batch someone still has to work on (the runner picks these up).
BATCH_ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


def batch_lease(batch_id: str) -> str:
    """The lease an instance holds while it drives the batch (see `Coordination`)."""
    return f"batch:{batch_id}"


# The columns of `batches` that `BatchMetadata.update_batch` may change.
BATCH_MUTABLE = frozenset(
    {
        "status",
        "model",
        "errors",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "total",
        "output_file_id",
        "error_file_id",
    }
)


# The columns of `batches` in the order of `BatchRecord`'s fields.
BATCH_COLUMNS = (
    "id, project, endpoint, input_file_id, completion_window, status, created_at, expires_at, "
    "metadata, output_expires_after, model, errors, in_progress_at, finalizing_at, "
    "completed_at, failed_at, expired_at, cancelling_at, cancelled_at, total, completed, "
    "failed, input_tokens, output_tokens, cached_tokens, reasoning_tokens, output_file_id, "
    "error_file_id"
)


@runtime_checkable
class BatchMetadata(Protocol):
    """Batches and the state of each of their requests (the Batch API).

    A request row exists for every valid input line once validation has passed; it is
    `pending` until its result is recorded, then `done` or `failed` for good: a result is
    recorded at most once (a second one for the same line is ignored), so a request whose
    result is in the database is never sent again, whichever instance resumes the batch.
    """

    async def insert_batch(self, batch: BatchRecord) -> None: ...

    async def get_batch(self, batch_id: str, project: str | None = None) -> BatchRecord | None:
        """The batch, if it exists (and belongs to `project`, when given)."""
        ...

    async def list_batches(
        self, project: str, *, after: str | None, limit: int
    ) -> list[BatchRecord] | None:
        """Up to `limit` batches of the project, newest first, after the batch `after` (None
        if `after` names no batch of the project)."""
        ...

    async def update_batch(
        self, batch_id: str, changes: Mapping[str, object], *, statuses: Sequence[str] = ()
    ) -> bool:
        """Set the columns named in `changes` (only those of BATCH_MUTABLE), if the batch is in
        one of `statuses` (any status when empty); False if it was not (nothing changed)."""
        ...

    async def active_batches(self, statuses: Sequence[str] = BATCH_ACTIVE) -> list[str]:
        """Ids of the batches in one of `statuses` (by default all of BATCH_ACTIVE), oldest
        first."""
        ...

    async def batches_to_claim(self, statuses: Sequence[str], *, now: int) -> list[QueuedBatch]:
        """The batches in one of `statuses` that no instance drives at `now` (no live
        `batch_lease`), in the order to claim them: `rules.claim_order`, over the facts of
        every instance (the leases, and when each project's batches last started)."""
        ...

    async def add_batch_requests(self, batch_id: str, requests: Sequence[tuple[int, str]]) -> None:
        """Add pending request rows (line, custom_id); lines already there are left alone."""
        ...

    async def clear_batch_requests(self, batch_id: str) -> None:
        """Remove every request row of the batch."""
        ...

    async def pending_batch_requests(
        self, batch_id: str, *, after_line: int, limit: int
    ) -> list[tuple[int, str]]:
        """Up to `limit` pending requests (line, custom_id) after `after_line`, by line."""
        ...

    async def record_batch_results(self, batch_id: str, results: Sequence[BatchResult]) -> int:
        """Record results of pending requests, and add them to the batch's counts and token
        sums, in one transaction. Results for lines no longer pending are ignored, and so are
        all of them unless the batch is `in_progress` (checked in that transaction: once its
        status moves on, its output and counts are final). Returns how many were recorded."""
        ...

    async def forget_batch(self, batch_id: str, lease: str) -> None:
        """Once the batch's final status is committed (its output files hold the results):
        drop its requests' result payloads and the lease `lease` it was driven under."""
        ...

    async def batch_results(
        self, batch_id: str, *, ok: bool, after_line: int, limit: int, max_bytes: int | None = None
    ) -> list[tuple[int, str]]:
        """Up to `limit` recorded results (line, output line) that succeeded (`ok`) or failed,
        after `after_line`, by line; with `max_bytes`, no more rows than fit in that many
        bytes of results (but at least one), so a page of large answers stays bounded."""
        ...


class Database(Protocol):
    """The metadata store as a whole: its life, and what start-up and readiness ask of it.

    Every change of more than one statement is one transaction: it happens whole or not at
    all. Raises `StorageFull` / `StorageBusy` for a full device or a lock held too long.
    """

    @property
    def shared(self) -> bool:
        """True if other processes may use this database at the same time."""
        ...

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    async def holds_nothing(self) -> bool:
        """True if the database has no file and no upload rows at all (new, or emptied)."""
        ...

    async def vanished(self) -> str | None:
        """Why the database this store opened is no longer where it was opened (moved,
        deleted or replaced under a running server), or None while it is in place."""
        ...


class FileMetadata(Protocol):
    """Files. Rows are never removed by the API: a delete sets `deleted_at`."""

    async def insert_files(
        self,
        records: Sequence[FileRecord],
        *,
        instance: str | None = None,
        quota: Quota = NO_QUOTA,
        excluding_uploads: Sequence[str] = (),
        completions: Mapping[str, str] | None = None,
    ) -> list[InsertVerdict]:
        """Insert new files; per record, what became of it. A record refused never fails the
        others: `taken` (its id exists, or an earlier record of the call has it; checked
        first: a taken record uses no quota), `over_files` / `over_bytes` (its project would pass
        `quota`, counting its live files, the bytes of its files and of the parts of its
        pending or completing uploads but those in `excluding_uploads`, and the records
        inserted before it), `unclaimed` (with `instance`: that instance holds no claim on
        the record's blob), `abandoned` (`completions` maps its id to an upload that is no
        longer `completing` with it: another instance settled that completion meanwhile).
        With `instance`, its claims on the records' blobs end in the same transaction; with
        `completions`, the uploads of the records inserted become `completed` in it. Quota
        checks and inserts are atomic against every other writer, on every
        instance.

        Paging order: within a project, files become visible in the order of their `seq`
        (a later insert never becomes visible before an earlier one), so `after` paging
        never skips nor repeats a file while others insert."""
        ...

    async def next_generation(self, name: str) -> int:
        """Bump the persistent counter `name`; returns its new value (0 the first time)."""
        ...

    async def import_files(
        self, records: Sequence[FileRecord], *, instance: str | None = None
    ) -> list[str]:
        """Insert files made elsewhere (ids and times kept), all or none: if any id exists
        already, inserts nothing and returns the ids taken. With `instance`, its claims on
        the records' blobs must hold (else `StorageBusy`, nothing inserted) and end in the
        same transaction."""
        ...

    async def existing_ids(self, ids: Sequence[str]) -> list[str]: ...

    async def get_live_file(self, project: str, file_id: str, *, now: int) -> FileRecord | None: ...

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
        """A page of live files and the count of all live matches; None if `after` names no
        file of the project (deleted files still count as cursors)."""
        ...

    async def usage(
        self, projects: Sequence[str], *, excluding_uploads: Sequence[str] = ()
    ) -> dict[str, Usage]:
        """(live files, bytes held) of each project, for its quotas: the bytes of its live
        files and of the parts of its pending or completing uploads, except the parts of
        `excluding_uploads` (being completed: those parts are about to become a file)."""
        ...

    async def mark_deleted(self, project: str, file_id: str, *, now: int) -> FileRecord | None: ...

    async def delete_expired_files(self, *, now: int, limit: int) -> list[str]:
        """Soft-delete up to `limit` expired files; returns their blob digests."""
        ...

    async def blobs_in_use(self, digests: Sequence[str]) -> set[str]: ...

    async def storage_totals(self) -> StorageTotals: ...

    async def project_usage(self) -> list[ProjectUsage]: ...

    async def delete_everything(self, project: str | None) -> tuple[int, list[str]]:
        """Remove the rows of all projects, or of one (files, uploads, parts), all or none.
        Returns how many live files went and the part tokens to remove."""
        ...

    async def live_files(self, project: str | None) -> list[FileRecord]: ...

    async def live_digests(self, *, damaged: bool = False) -> list[str]:
        """Blobs of live files not marked damaged (status `error`); with `damaged`, only
        those of files marked damaged."""
        ...

    async def mark_blob_damaged(self, sha256: str, details: str) -> int: ...

    async def clear_blob_damage(self, sha256: str) -> int:
        """Status `processed` again for the live files of a blob marked damaged."""
        ...

    async def purge_deleted(self, *, before: int) -> int:
        """Remove rows soft-deleted before `before` and uploads finished before it, all or
        none; returns how many file rows went."""
        ...


class MetadataStore(
    Database, FileMetadata, UploadMetadata, KeyMetadata, Coordination, BatchMetadata, Protocol
):
    """Everything a metadata backend offers (what `opening.open_metadata` returns); each
    service is handed only the narrow protocols it uses."""


class DelegatingBlobs:
    """A `BlobBackend` that passes every call to `inner`: the base of backend wrappers (a
    cache, fault injection), which override only what they change."""

    def __init__(self, inner: BlobBackend) -> None:
        self.inner = inner

    async def prepare(self, *, clean: bool = True) -> int:
        return await self.inner.prepare(clean=clean)

    async def close(self) -> None:
        await self.inner.close()

    def download_url(self, digest: str, *, filename: str, expires_in: int) -> str | None:
        return self.inner.download_url(digest, filename=filename, expires_in=expires_in)

    def writer(self, max_bytes: int | None = None) -> BlobWriter:
        return self.inner.writer(max_bytes)

    async def commit(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        return await self.inner.commit(staged)

    async def discard(self, staged: Sequence[StagedBlob]) -> None:
        await self.inner.discard(staged)

    async def read(self, digest: str) -> bytes:
        return await self.inner.read(digest)

    def open_range(
        self, digest: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        return self.inner.open_range(digest, start, length)

    async def open_local(self, digest: str) -> BinaryIO | None:
        return await self.inner.open_local(digest)

    async def delete(self, digests: Sequence[str]) -> int:
        return await self.inner.delete(digests)

    async def quarantine(self, digests: Sequence[str]) -> None:
        await self.inner.quarantine(digests)

    async def leftovers(self) -> list[str]:
        return await self.inner.leftovers()

    async def remove_leftovers(self, names: Sequence[str]) -> int:
        return await self.inner.remove_leftovers(names)

    async def digests(self) -> list[str]:
        return await self.inner.digests()

    async def missing(self, digests: Sequence[str]) -> set[str]:
        return await self.inner.missing(digests)

    async def check_writable(self) -> None:
        await self.inner.check_writable()

    async def save_part(self, staged: StagedBlob) -> str:
        return await self.inner.save_part(staged)

    async def remove_parts(self, tokens: Sequence[str]) -> int:
        return await self.inner.remove_parts(tokens)

    async def part_tokens_older_than(self, cutoff: float) -> list[str]:
        return await self.inner.part_tokens_older_than(cutoff)

    async def concat_parts(self, tokens: Sequence[str]) -> tuple[StagedBlob, str]:
        return await self.inner.concat_parts(tokens)

    async def parts_md5(self, tokens: Sequence[str]) -> str:
        return await self.inner.parts_md5(tokens)
