"""Operator commands: fsck, gc, backup, migrate, and API keys kept in the database.

On the embedded backends, `fsck` and `gc` need the data directory to themselves (they take its
lock, so they refuse to run beside a server: the server does gc itself); `backup` and the key
commands work beside a running server: SQLite's WAL lets them read and write while it serves.
On PostgreSQL and S3 every command works beside running instances (in a private spool dir):
blob reclaim goes through the same claims they respect. `backup` there is the engines' own
(pg_dump, the bucket's versioning or replication) and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..storage.blobdir import BlobDir, fsync_dir
from ..storage.sqlite import SqliteMetadata, database_path, finish_snapshot, snapshot_database
from .files import (
    FileStore,
    GcReport,
    MigrationReport,
    StoreSettings,
    lock_data_dir,
    open_metadata,
    refuse_missing_database,
)
from .keys import KeyStore

__all__ = [
    "BackupReport",
    "FsckReport",
    "GcReport",
    "backup",
    "create_key",
    "fsck",
    "gc",
    "list_keys",
    "migrate",
    "revoke_key",
]


class NotOnTheseBackends(Exception):
    """The command cannot work on the configured backends; the message says what to use."""


def _embedded(settings: StoreSettings) -> bool:
    return not settings.database and not settings.blobs


@contextlib.asynccontextmanager
async def _opened(settings: StoreSettings, new_database: bool = False) -> AsyncIterator[FileStore]:
    """The store, opened as one more instance. With everything shared (PostgreSQL and S3) in
    a private spool dir, so that it works beside a server using the configured data dir."""
    spool = None
    if settings.database and settings.blobs:
        spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="filesd-ops-"))
        settings = replace(settings, data_dir=spool)
    try:
        store = await FileStore.open(settings, new_database=new_database)
        try:
            yield store
        finally:
            await store.close()
    finally:
        if spool is not None:
            await asyncio.to_thread(shutil.rmtree, spool, True)


@dataclass
class FsckReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    stray_temp_files: list[str] = field(default_factory=list)
    stray_part_files: list[str] = field(default_factory=list)
    # Blobs of files marked damaged whose right bytes are back (put back by an operator).
    restored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.corrupt
            or self.orphaned
            or self.stray_temp_files
            or self.stray_part_files
            or self.restored
        )

    def lines(self) -> list[str]:
        out = [f"checked {self.checked} blob(s)"]
        for label, items in (
            ("missing blob", self.missing),
            ("corrupt blob", self.corrupt),
            ("orphaned blob", self.orphaned),
            ("stray temp file", self.stray_temp_files),
            ("stray part file", self.stray_part_files),
            ("restored blob (--repair serves its files again)", self.restored),
        ):
            out += [f"{label}: {item}" for item in items]
        out.append("ok" if self.ok else "problems found")
        return out


async def fsck(settings: StoreSettings, *, repair: bool, new_database: bool = False) -> FsckReport:
    """Check every blob against its digest and every live file against its blob.

    Changes nothing unless `repair`: then corrupt blobs move to `quarantine/` (in S3 they stay
    where they are) and their files get `status: "error"` (as do files whose blob is
    missing); orphaned blobs and stray temp and part files are removed. On the embedded
    backends it takes the data directory's lock: not beside a running server. Raises
    `DatabaseMissing` over blobs without a database (every blob would look orphaned), unless
    `new_database`.
    """
    if not _embedded(settings):
        async with _opened(settings, new_database) as store:
            audit = await store.audit(repair=repair)
        return FsckReport(
            checked=audit.checked,
            missing=audit.missing,
            corrupt=audit.corrupt,
            orphaned=audit.orphaned,
            stray_part_files=audit.stray_parts,
            restored=audit.restored,
        )
    data_dir = settings.data_dir
    report = FsckReport()
    blobs = BlobDir(data_dir)
    lock_fd = await asyncio.to_thread(lock_data_dir, data_dir)
    try:
        if not new_database:
            await refuse_missing_database(data_dir, blobs)
        db = await SqliteMetadata.open(database_path(data_dir))
        try:
            if await asyncio.to_thread(blobs.temp_dir.is_dir):
                report.stray_temp_files = sorted(
                    await asyncio.to_thread(os.listdir, blobs.temp_dir)
                )
            live = set(await db.live_digests())
            # Blobs of files already marked damaged are still theirs: not orphans (their bytes
            # may have been restored since), and checked again below.
            damaged = set(await db.live_digests(damaged=True)) - live
            on_disk = set(await blobs.digests())
            report.missing = sorted(live - on_disk)
            report.orphaned = sorted(on_disk - live - damaged)
            for digest in sorted(damaged & on_disk):
                if await asyncio.to_thread(_digest_of, blobs.path_for(digest)) == digest:
                    report.restored.append(digest)
            for digest in sorted(on_disk & live):
                report.checked += 1
                if await asyncio.to_thread(_digest_of, blobs.path_for(digest)) != digest:
                    report.corrupt.append(digest)
            if await asyncio.to_thread(blobs.part_dir.is_dir):
                parts = await blobs.part_tokens_older_than(time.time() + 1)
                report.stray_part_files = sorted(set(parts) - await db.part_tokens_in_use(parts))
            if repair:
                await _repair(db, blobs, report)
        finally:
            await db.close()
    finally:
        os.close(lock_fd)
    return report


async def _repair(db: SqliteMetadata, blobs: BlobDir, report: FsckReport) -> None:
    quarantine = blobs.root / "quarantine"
    for digest in report.corrupt:
        await asyncio.to_thread(quarantine.mkdir, exist_ok=True)
        await asyncio.to_thread(os.replace, blobs.path_for(digest), quarantine / digest)
        await db.mark_blob_damaged(
            digest, "The stored content does not match its SHA-256; quarantined by fsck."
        )
    for digest in report.missing:
        await db.mark_blob_damaged(digest, "The stored content is missing; found by fsck.")
    for digest in report.restored:
        await db.clear_blob_damage(digest)
    await blobs.delete(report.orphaned)
    await blobs.remove_parts(report.stray_part_files)
    for name in report.stray_temp_files:
        await asyncio.to_thread((blobs.temp_dir / name).unlink, missing_ok=True)


def _digest_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def gc(
    settings: StoreSettings, *, deleted_retention: int, new_database: bool = False
) -> GcReport:
    """Delete expired files, purge rows soft-deleted over `deleted_retention` seconds ago,
    and reclaim blobs no file refers to. The server runs the same in the background.
    Raises `DatabaseMissing` over blobs without a database, unless `new_database`."""
    async with _opened(settings, new_database) as store:
        return await store.collect(deleted_retention=deleted_retention)


async def migrate(source: StoreSettings, dest: StoreSettings) -> MigrationReport:
    """Copy the files and keys of `source` (typically the embedded data dir; not beside its
    server) into `dest` (typically PostgreSQL and S3), ids, names, times and bytes kept, and
    verify the copy. Can be run again after an interruption: what is there is skipped."""
    async with _opened(source) as origin, _opened(dest) as target:
        return await target.migrate_from(origin)


class BackupRefused(OSError):
    """The backup's destination is the data directory itself, or inside it."""


@dataclass
class BackupReport:
    files: int
    blobs: int
    deleted_meanwhile: int


def backup(settings: StoreSettings, dest: Path) -> BackupReport:
    """A consistent copy of a data directory, taken while a server may be running.

    The database is copied with SQLite's backup API (one consistent snapshot); then every blob a
    live file of that snapshot refers to. A blob reclaimed in between belonged to files deleted
    after the snapshot: they are marked deleted in the copy, so the copy is a state the server
    really passed through, minus those deletes' timing. Uploads in progress are not copied (they
    show as expired). Everything is fsynced. `filesd serve --data-dir DEST` starts from it.

    On PostgreSQL or S3, raises `NotOnTheseBackends`: their own tools make consistent copies.
    """
    if not _embedded(settings):
        raise NotOnTheseBackends(
            "filesd backup copies the embedded backends (SQLite and the blob dir). With "
            "PostgreSQL, back up the database with pg_dump (or your provider's snapshots); with "
            "S3, keep the bucket versioned or replicated. Restore the database first: blobs "
            "newer than it are swept as unreferenced, never the other way round."
        )
    data_dir = settings.data_dir
    resolved_source, resolved_dest = data_dir.resolve(), dest.resolve()
    if resolved_dest == resolved_source or resolved_source in resolved_dest.parents:
        # A copy inside its own source would be swept as stray files, or copied into itself.
        raise BackupRefused(f"{dest} is inside the data directory {data_dir}: back up elsewhere")
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    source_db = database_path(data_dir)
    if not source_db.is_file():
        raise FileNotFoundError(f"no filesd database in {data_dir}")
    source, target = BlobDir(data_dir), BlobDir(dest)
    target.prepare_sync()
    digests = snapshot_database(source_db, database_path(dest))
    copied, gone = 0, []
    for digest in digests:
        try:
            shutil.copyfile(source.path_for(digest), target.path_for(digest))
        except FileNotFoundError:
            gone.append(digest)
            continue
        with target.path_for(digest).open("rb") as f:
            os.fsync(f.fileno())
        copied += 1
    files = finish_snapshot(database_path(dest), gone, now=int(time.time()))
    for directory in (dest, target.blob_dir, *target.blob_dir.iterdir()):
        fsync_dir(directory)
    return BackupReport(files=files, blobs=copied, deleted_meanwhile=len(gone))


@contextlib.asynccontextmanager
async def _key_store(settings: StoreSettings) -> AsyncIterator[KeyStore]:
    """The keys of the configured database; works beside running servers (SQLite's WAL, or
    PostgreSQL shared by every instance).

    Raises `DatabaseMissing` over blobs without a SQLite database, like `serve`: making a key
    must not make the empty database that would then let a start-up delete every blob.
    """
    if not settings.database:
        data_dir = settings.data_dir
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        await refuse_missing_database(data_dir, BlobDir(data_dir))
    meta = await open_metadata(settings)
    try:
        yield KeyStore(meta)
    finally:
        await meta.close()


async def create_key(settings: StoreSettings, project: str) -> tuple[str, str]:
    """Make a new key for `project`; returns (key id, the key). Only its digest is stored."""
    async with _key_store(settings) as keys:
        return await keys.create(project)


async def list_keys(settings: StoreSettings) -> list[tuple[str, str, str, int, int | None]]:
    """(id, project, hint, created_at, revoked_at) of every key made with `create_key`."""
    async with _key_store(settings) as keys:
        return [(k.id, k.project, k.hint, k.created_at, k.revoked_at) for k in await keys.all()]


async def revoke_key(settings: StoreSettings, key_id: str) -> bool:
    async with _key_store(settings) as keys:
        return await keys.revoke(key_id)
