"""`filesd fsck`: every blob checked against its digest, every live file against its blob, on
whichever backends are configured, and the one way damage is repaired.

It runs as one more instance: on the embedded backends it takes the data directory's lock
(so not beside a running server), on PostgreSQL and S3 it runs beside the instances, and its
reclaims respect their claims either way. Repairs:
- a corrupt blob is quarantined (moved out from under its digest, kept for a look) and its
  files marked damaged (status `error`): an upload of the right bytes stores them anew, and
  the next fsck finds them right and serves the damaged files again;
- files whose blob is missing are marked damaged (checked again first: a blob reclaimed since
  the listing may have been stored anew by an upload meanwhile);
- files of a blob that is right again are served again;
- unreferenced blobs are reclaimed; stray upload parts and staging leftovers removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

from ..storage.base import BlobBackend, FileMetadata, UploadMetadata
from .instance import Instance

# With shared metadata, a part without a row is stray only once it is this old: the instance
# that saved it may still be about to record it.
SHARED_PART_GRACE = 3600


@dataclass
class FsckReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    stray_temp_files: list[str] = field(default_factory=list)
    stray_part_files: list[str] = field(default_factory=list)
    # Blobs of files marked damaged whose right bytes are back (put back by an operator, or
    # uploaded anew).
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


async def fsck(
    meta: FileMetadata,
    uploads: UploadMetadata,
    blobs: BlobBackend,
    instance: Instance,
    *,
    repair: bool,
) -> FsckReport:
    """Check everything (see the module's docstring); change nothing unless `repair`."""
    report = FsckReport()
    report.stray_temp_files = await blobs.leftovers()
    live = set(await meta.live_digests())
    # (A digest may be both: files marked damaged, and a file of the bytes stored anew.)
    damaged = set(await meta.live_digests(damaged=True))
    stored = set(await blobs.digests())
    report.missing = sorted(live - stored)
    orphaned = sorted(stored - live - damaged)
    for digest in sorted(stored & (live | damaged)):
        right = await _digest_of(blobs, digest) == digest
        if digest in damaged and right:
            report.restored.append(digest)
        if digest in live:
            report.checked += 1
            if not right:
                report.corrupt.append(digest)
    # Blobs of uploads under way are claimed, and parts young: neither counts as stray.
    in_use = await meta.blobs_in_use(orphaned)
    report.orphaned = [d for d in orphaned if d not in in_use]
    cutoff = time.time() - SHARED_PART_GRACE if instance.shared else time.time() + 1
    parts = await blobs.part_tokens_older_than(cutoff)
    report.stray_part_files = sorted(set(parts) - await uploads.part_tokens_in_use(parts))
    if repair:
        await _repair(meta, blobs, instance, report)
    return report


async def _repair(
    meta: FileMetadata, blobs: BlobBackend, instance: Instance, report: FsckReport
) -> None:
    # Files first, then their blobs: a file is never left pointing at a blob that is gone
    # without saying why (a repair cut short is taken up again by the next fsck).
    for digest in report.corrupt:
        await meta.mark_blob_damaged(
            digest, "The stored content does not match its SHA-256; quarantined by fsck."
        )
    await blobs.quarantine(report.corrupt)
    for digest in sorted(await blobs.missing(report.missing)):
        await meta.mark_blob_damaged(digest, "The stored content is missing; found by fsck.")
    for digest in report.restored:
        await meta.clear_blob_damage(digest)
    await instance.reclaim(report.orphaned)
    await blobs.remove_parts(report.stray_part_files)
    await blobs.remove_leftovers(report.stray_temp_files)


async def _digest_of(blobs: BlobBackend, digest: str) -> str:
    """The SHA-256 of a blob's bytes, hashed in a worker thread (a large blob is seconds of
    CPU, not for the event loop)."""
    hashed = hashlib.sha256()
    async for chunk in blobs.open_range(digest):
        await asyncio.to_thread(hashed.update, chunk)
    return hashed.hexdigest()
