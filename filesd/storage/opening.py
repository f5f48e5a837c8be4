"""Picking, opening and guarding the configured backends.

`open_backends` is the one way storage opens: it takes the data directory's lock (one process
at a time: it holds SQLite and the blob dir, or with shared backends this process's spool),
prepares the blob backend (leftovers of staging removed unless asked not to), refuses to start
where a missing or wrong database would make every blob look unreferenced, puts the small-blob
cache and, where faults can be injected, the fault-injecting wrapper in front of the blobs, and
opens the metadata store. Errors are this module's own (`DataDirLocked`, `DatabaseMissing`) or
the storage's neutral ones (`StorageUnavailable` naming the setting to look at).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import S3Config
from .base import BlobBackend, MetadataStore, StorageUnavailable
from .blobdir import BlobDir
from .cached import SMALL_CACHE_BYTES, CachedBlobs
from .faulty import FaultyBlobs
from .sqlite import DB_NAME, SqliteMetadata, database_initialized, database_path

log = logging.getLogger(__name__)

LOCK_NAME = "filesd.lock"


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


@dataclass(frozen=True)
class BackendSettings:
    """Where the metadata and the bytes are: "" means SQLite, or the blob dir, in `data_dir`
    (SPEC §5)."""

    data_dir: Path
    database: str = field(default="", repr=False)  # may hold the password
    blobs: str = ""
    s3: S3Config = field(default_factory=S3Config)
    small_cache_bytes: int = SMALL_CACHE_BYTES

    @property
    def embedded(self) -> bool:
        """SQLite and the blob dir, both in the data dir (no other service)."""
        return not self.database and not self.blobs


@dataclass
class Backends:
    """The open backends: `close()` them (and the data dir's lock goes with them)."""

    meta: MetadataStore
    blobs: BlobBackend
    lock_fd: int | None = None

    async def close(self) -> None:
        try:
            await self.meta.close()
        finally:
            try:
                await self.blobs.close()
            finally:
                if self.lock_fd is not None:
                    os.close(self.lock_fd)


BlobWrapper = Callable[[BlobBackend], BlobBackend]


async def open_backends(
    settings: BackendSettings,
    *,
    inject_faults: bool = False,
    wrap_blobs: BlobWrapper | None = None,
    new_database: bool = False,
    clean: bool = True,
) -> Backends:
    """Open (creating if needed) the configured backends. `inject_faults`: the blobs answer to
    the fault rules of the request being served (`faulty.py`). `wrap_blobs` wraps the blob
    backend from outside (as `faulty.py` does: a test's own seam). `clean`: remove what staging
    a crash left (not for `filesd fsck`, which reports it). Raises `DataDirLocked` if another
    process holds the data dir, `DatabaseMissing` if SQLite's database is missing but blobs or
    parts exist (unless `new_database`), `StorageUnavailable` (naming the setting) when a
    backend cannot be used."""
    lock_fd = await asyncio.to_thread(lock_data_dir, settings.data_dir)
    local: BlobBackend | None = None
    meta: MetadataStore | None = None
    try:
        local = blob_backend(settings)
        removed = await local.prepare(clean=clean)
        if removed:
            log.info("removed %d temp file(s) of interrupted uploads", removed)
        if not settings.database and not new_database:
            await refuse_missing_database(settings.data_dir, local)
        blobs: BlobBackend = CachedBlobs(local, settings.small_cache_bytes)
        if inject_faults:
            blobs = FaultyBlobs(blobs)
        if wrap_blobs is not None:
            blobs = wrap_blobs(blobs)
        meta = await open_metadata(settings)
        if settings.database and not new_database:
            await _refuse_empty_database(meta, local)
    except BaseException:
        if meta is not None:
            await meta.close()
        if local is not None:
            await local.close()
        os.close(lock_fd)
        raise
    return Backends(meta, blobs, lock_fd)


def lock_data_dir(data_dir: Path) -> int:
    """Take the data directory's lock (one process at a time); returns the fd holding it.
    Raises `DataDirLocked` if another process holds it, `StorageUnavailable` (naming
    `storage.data_dir`) if the directory cannot be made or written in."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        # The first write filesd makes there: a wrong path or permissions show up here, and
        # the raw errno would name the lock file rather than the setting to change.
        raise StorageUnavailable(
            "storage.data_dir",
            f"cannot use {data_dir} as the data directory ({e.strerror or e}): filesd must be "
            "able to create it and write in it; set storage.data_dir (or --data-dir) to such "
            "a directory",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirLocked(f"{data_dir} is in use by another filesd process") from None
    return fd


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


def blob_backend(settings: BackendSettings) -> BlobBackend:
    """The configured blob backend, not yet prepared (`prepare()` it, `close()` it after)."""
    if not settings.blobs:
        return BlobDir(settings.data_dir)
    try:
        from .s3 import S3Blobs
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


async def open_metadata(settings: BackendSettings) -> MetadataStore:
    """The configured metadata store, open and migrated."""
    if not settings.database:
        return await SqliteMetadata.open(database_path(settings.data_dir))
    try:
        from .postgres import PostgresMetadata
    except ImportError as error:
        raise StorageUnavailable(
            "storage.database",
            f"PostgreSQL needs the postgres extra: pip install 'filesd[postgres]' ({error})",
        ) from None
    return await PostgresMetadata.open(settings.database)
