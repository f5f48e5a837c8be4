"""Upkeep and operator views: sweeps, garbage collection, reset, usage, readiness.

The server runs `upkeep` in the background, on one instance at a time (the `upkeep` lease):
expired files and uploads, rows deleted long ago, abandoned completions, and now and then
blobs a crash left unreferenced. `filesd gc` runs the same steps once (`collect`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..models import ProjectUsage, StorageTotals
from ..storage.base import BlobBackend, Database, FileMetadata, StorageBusy, UploadMetadata
from .instance import Instance
from .settings import StoreSettings
from .uploads import UploadService

log = logging.getLogger(__name__)

_SWEEP_BATCH = 500
# Blobs without a row come only from crashes (or failed commits): the whole store is listed
# for them at start-up and then every this many sweeps, not every sweep (a bucket may hold
# millions of objects).
ORPHAN_SWEEP_EVERY = 10


class MaintenanceMetadata(Database, FileMetadata, UploadMetadata, Protocol):
    """What upkeep reads and writes: files, uploads (reset), and the database's state."""


@dataclass(frozen=True)
class Unready:
    """What keeps the services from serving. `what` says it in words that tell nothing of the
    set-up (all a keyless probe is told); `detail` is the error itself, with its hosts, ports
    and paths (for the log, and for a holder of the admin or metrics token)."""

    what: str
    detail: str


DATABASE_UNREADY = "the database is not usable"
BLOBS_UNREADY = "the blob storage does not take writes"


@dataclass
class GcReport:
    expired_files: int
    purged_rows: int
    orphaned_blobs: int


class Maintenance:
    """Upkeep of the files and blobs of every project."""

    def __init__(
        self,
        meta: MaintenanceMetadata,
        blobs: BlobBackend,
        instance: Instance,
        uploads: UploadService,
        settings: StoreSettings,
        *,
        clock: Callable[[], float],
    ) -> None:
        self._meta = meta
        self._blobs = blobs
        self._instance = instance
        self._uploads = uploads
        self._settings = settings
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    async def sweep_expired(self) -> int:
        """Delete expired files for good (they are already hidden) and reclaim their blobs."""
        swept = 0
        while True:
            digests = await self._meta.delete_expired_files(now=self._now(), limit=_SWEEP_BATCH)
            await self._instance.reclaim(sorted(set(digests)))
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
            removed += await self._instance.reclaim(digests[start : start + _SWEEP_BATCH])
        if removed:
            log.info("removed %d orphaned blob(s)", removed)
        return removed

    async def purge_deleted(self) -> int:
        """Remove the rows of files deleted over `deleted_retention` seconds ago."""
        return await self._meta.purge_deleted(before=self._now() - self._settings.deleted_retention)

    async def collect(self) -> GcReport:
        """Garbage collection (`filesd gc`): expired files, rows soft-deleted over
        `deleted_retention` seconds ago, and unreferenced blobs."""
        expired = await self.sweep_expired()
        purged = await self.purge_deleted()
        orphans = await self.sweep_orphans()
        return GcReport(expired, purged, orphans)

    async def reset(self, project: str | None) -> int:
        """Remove every file, upload and batch, or one project's; returns how many live files
        went. For tests (the admin API): unlike a delete, no row is kept for audit."""
        removed, tokens = await self._meta.delete_everything(project)
        await self._blobs.remove_parts(tokens)
        await self.sweep_orphans()
        return removed

    async def storage_totals(self) -> StorageTotals:
        return await self._meta.storage_totals()

    async def project_usage(self) -> list[ProjectUsage]:
        return await self._meta.project_usage()

    async def readiness_problems(self) -> list[Unready]:
        """What keeps the services from serving: an unreadable database, unwritable storage."""
        problems = []
        try:
            await self._meta.schema_version()
            gone = await self._meta.vanished()
            if gone is not None:
                problems.append(Unready(DATABASE_UNREADY, f"database: {gone}"))
        except Exception as error:
            problems.append(Unready(DATABASE_UNREADY, f"database: {error}"))
        try:
            await self._blobs.check_writable()
        except Exception as error:
            problems.append(Unready(BLOBS_UNREADY, f"blob storage: {error}"))
        return problems

    async def upkeep(self) -> None:
        """Background upkeep while serving, on one instance at a time (the `upkeep` lease,
        renewed between steps and taken over by another instance once its holder stops
        renewing it). Runs until cancelled.

        Every `sweep_interval` seconds: expired files (already hidden) and uploads, rows
        deleted longer ago than `deleted_retention` (with the blobs that frees), and the
        completions of instances that died. At start-up and every ORPHAN_SWEEP_EVERY sweeps
        (at least two leases apart, so a dead instance's claims have run out): blobs a crash
        left unreferenced (this instance's own uploads caught mid-completion were settled
        before serving began).
        """
        settings = self._settings
        lease = settings.sweep_interval + settings.lease_seconds
        orphan_interval = max(
            ORPHAN_SWEEP_EVERY * settings.sweep_interval, 2 * settings.lease_seconds
        )
        orphans_due = 0.0
        while True:
            steps: list[Callable[[], Awaitable[object]]] = [
                self.sweep_expired,
                self.purge_deleted,
                self._uploads.sweep_expired,
                self._uploads.recover,
            ]
            if time.monotonic() >= orphans_due:
                steps.insert(0, self.sweep_orphans)
            for step in steps:
                try:
                    if not await self._instance.take_lease("upkeep", lease):
                        break
                    await step()
                    if step == self.sweep_orphans:
                        orphans_due = time.monotonic() + orphan_interval
                except StorageBusy as busy:
                    # The database was busy (a sweep does not wait for a lock): the next
                    # round does it. Not an error worth a traceback.
                    log.warning("background %s put off: %s", step.__name__, busy)
                except Exception:
                    log.exception("background %s failed", step.__name__)
            await asyncio.sleep(settings.sweep_interval)
