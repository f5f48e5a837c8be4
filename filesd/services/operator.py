"""What the operator commands of the command line run: each opens the services it needs as one
more instance (see `core.opened`) and does its work through them.

On the embedded backends `fsck` and `gc` take the data directory's lock, so they refuse to run
beside a server (the server does gc itself); `backup` and the key commands work beside a
running server: SQLite's WAL lets them read and write while it serves. On PostgreSQL and S3
every command works beside running instances: blob reclaim goes through the same claims they
respect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..models import KeyRecord
from ..storage.blobdir import BlobDir
from ..storage.opening import BackendSettings, open_metadata, refuse_missing_database
from .core import opened
from .fsck import FsckReport
from .keys import KeyService
from .maintenance import GcReport
from .migrate import MigrationReport, migrate
from .settings import StoreSettings


async def fsck(settings: StoreSettings, *, repair: bool, new_database: bool = False) -> FsckReport:
    """Check every blob against its digest and every live file against its blob (see
    `services.fsck`); changes nothing unless `repair`. Raises `DatabaseMissing` over blobs
    without a database (every blob would look orphaned), unless `new_database`."""
    async with opened(settings, new_database=new_database, clean=False) as services:
        return await services.fsck(repair=repair)


async def gc(settings: StoreSettings, *, new_database: bool = False) -> GcReport:
    """Delete expired files, purge rows soft-deleted over `deleted_retention` seconds ago,
    and reclaim blobs no file refers to. The server runs the same in the background.
    Raises `DatabaseMissing` over blobs without a database, unless `new_database`."""
    async with opened(settings, new_database=new_database) as services:
        return await services.maintenance.collect()


async def migrate_between(source: StoreSettings, dest: StoreSettings) -> MigrationReport:
    """Copy the files and keys of `source` (typically the embedded data dir; not beside its
    server) into `dest` (typically PostgreSQL and S3) and verify the copy (`migrate`)."""
    async with opened(source) as origin, opened(dest) as target:
        return await migrate(origin, target)


@contextlib.asynccontextmanager
async def _keys(settings: StoreSettings) -> AsyncIterator[KeyService]:
    """The keys of the configured database; works beside running servers (SQLite's WAL, or
    PostgreSQL shared by every instance).

    Raises `DatabaseMissing` over blobs without a SQLite database, like `serve`: making a key
    must not make the empty database that would then let a start-up delete every blob.
    """
    backends: BackendSettings = settings.backends
    if not settings.database:
        data_dir = settings.data_dir
        await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
        await refuse_missing_database(data_dir, BlobDir(data_dir))
    meta = await open_metadata(backends)
    try:
        yield KeyService(meta)
    finally:
        await meta.close()


async def create_key(settings: StoreSettings, project: str) -> tuple[str, str]:
    """Make a new key for `project`; returns (key id, the key). Only its digest is stored."""
    async with _keys(settings) as keys:
        return await keys.create(project)


async def list_keys(settings: StoreSettings) -> list[KeyRecord]:
    """Every key made with `create_key`, revoked ones too, oldest first."""
    async with _keys(settings) as keys:
        return await keys.all()


async def revoke_key(settings: StoreSettings, key_id: str) -> bool:
    async with _keys(settings) as keys:
        return await keys.revoke(key_id)
