"""The services, opened together over one set of backends: what the HTTP application and the
command line hold.

`Services.open` opens the backends (`storage.opening`), starts this instance's heartbeat, and
hands each service the narrow protocols it uses; `close()` ends them in reverse order. The
batch service, which needs the batch settings and an upstream, is added by `open_batches`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..ids import IdMaker
from ..storage.opening import Backends, BlobWrapper, open_backends
from .archive import Archives
from .commits import Committer
from .files import FileService
from .fsck import FsckReport, fsck
from .instance import Instance
from .keys import KeyService
from .maintenance import Maintenance
from .settings import StoreSettings
from .uploads import UploadService


@dataclass
class Services:
    """The open services of one process (one instance)."""

    settings: StoreSettings
    backends: Backends
    instance: Instance
    committer: Committer
    files: FileService
    uploads: UploadService
    keys: KeyService
    archives: Archives
    maintenance: Maintenance

    @property
    def shared(self) -> bool:
        """Whether other instances use the same metadata (PostgreSQL)."""
        return self.instance.shared

    @classmethod
    async def open(
        cls,
        settings: StoreSettings,
        *,
        clock: Callable[[], float] = time.time,
        inject_faults: bool = False,
        wrap_blobs: BlobWrapper | None = None,
        new_database: bool = False,
        clean: bool = True,
    ) -> Services:
        """Open (creating if needed) the backends and the services over them: metadata in
        SQLite in `settings.data_dir` or in PostgreSQL (`settings.database`), blobs in the
        data dir or in S3 (`settings.blobs`). See `storage.opening.open_backends` for
        `inject_faults`, `wrap_blobs`, `new_database`, `clean` and what start-up refuses.
        """
        backends = await open_backends(
            settings.backends,
            inject_faults=inject_faults,
            wrap_blobs=wrap_blobs,
            new_database=new_database,
            clean=clean,
        )
        return await cls.over(backends, settings, clock=clock)

    @classmethod
    async def over(
        cls,
        backends: Backends,
        settings: StoreSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Services:
        """The services over backends opened already (they are closed with the services, also
        when this fails)."""
        meta, blobs = backends.meta, backends.blobs
        instance = Instance(meta, blobs, lease_seconds=settings.lease_seconds, shared=meta.shared)
        try:
            # Seeded ids go on after a restart: each opening draws from a new generation.
            generation = 0
            if settings.id_seed is not None:
                generation = await meta.next_generation("id_seed")
            ids = IdMaker(settings.id_format, settings.id_seed, generation)
            await instance.start()
        except BaseException:
            await instance.close()
            await backends.close()
            raise
        committer = Committer(meta, blobs, instance, quota=settings.quota)
        files = FileService(meta, blobs, committer, instance, settings, ids=ids, clock=clock)
        uploads = UploadService(files, meta, blobs, instance, settings)
        return cls(
            settings=settings,
            backends=backends,
            instance=instance,
            committer=committer,
            files=files,
            uploads=uploads,
            keys=KeyService(meta, clock),
            archives=Archives(meta, blobs, committer),
            maintenance=Maintenance(meta, blobs, instance, uploads, settings, clock=clock),
        )

    async def close(self) -> None:
        try:
            await self.instance.close()
            await self.committer.close()
        finally:
            await self.backends.close()

    async def fsck(self, *, repair: bool) -> FsckReport:
        """`filesd fsck` on these backends (see `services.fsck`)."""
        meta = self.backends.meta
        return await fsck(meta, meta, self.backends.blobs, self.instance, repair=repair)


@contextlib.asynccontextmanager
async def opened(
    settings: StoreSettings, *, new_database: bool = False, clean: bool = True
) -> AsyncIterator[Services]:
    """The services for an operator command, as one more instance; closed on exit. With
    everything shared (PostgreSQL and S3) in a private spool dir, so that the command works
    beside a server using the configured data dir."""
    spool = None
    if settings.database and settings.blobs:
        spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="filesd-ops-"))
        settings = replace(settings, data_dir=spool)
    try:
        services = await Services.open(settings, new_database=new_database, clean=clean)
        try:
            yield services
        finally:
            await services.close()
    finally:
        if spool is not None:
            await asyncio.to_thread(shutil.rmtree, spool, True)
