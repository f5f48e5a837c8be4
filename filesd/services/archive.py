"""Export and import of files as one tar archive (the admin API's snapshot of a state).

An archive holds `filesd-export.json` (format version and the live files' metadata) and
`blobs/<sha256>` for each blob they use. Files that could not be exported (damaged, or their
blob gone) are listed in the manifest's `skipped` (id and reason) and are not in `files`.
Both directions stream through any blob backend: export writes tar headers around each blob's
bytes as they are read (the length is known in advance), import parses the tar stream as it
arrives and streams each member into a blob writer, which hashes it. Import never takes a path
from the archive: a member is only matched against `blobs/<64 hex digits>`, and a digest that
does not match refuses the whole archive.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tarfile
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass

from ..models import FileRecord
from ..storage.base import BlobBackend, BlobWriter, FileMetadata, StagedBlob
from .commits import Committer
from .manifest import FORMAT, FORMAT_VERSION, ManifestError, parse_manifest

log = logging.getLogger(__name__)

MANIFEST = "filesd-export.json"
MANIFEST_MAX = 64 * 1024 * 1024
_BLOCK = 512
_BLOB_MEMBER = re.compile(r"blobs/([0-9a-f]{64})")
_COPY_CHUNK = 1024 * 1024

OpenBlob = Callable[[str], AsyncIterator[bytes]]


class ArchiveError(ValueError):
    """The archive is malformed, incomplete or does not match its manifest."""


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    # GNU format: one 512-byte header whatever the size (large sizes in base-256).
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


@dataclass(frozen=True)
class SkippedFile:
    """A live file left out of an export, and why."""

    id: str
    reason: str


@dataclass(frozen=True)
class Export:
    """An export archive: its length in bytes, its bytes as a stream, the files left out."""

    length: int
    chunks: AsyncIterator[bytes]
    skipped: Sequence[SkippedFile] = ()


def export_archive(
    records: list[FileRecord], open_blob: OpenBlob, skipped: Sequence[SkippedFile] = ()
) -> Export:
    """The archive of `records` (each blob must be there), listing `skipped` files too."""
    manifest = json.dumps(
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "files": [dataclasses.asdict(r) for r in records],
            "skipped": [dataclasses.asdict(s) for s in skipped],
        }
    ).encode()
    sizes = {r.sha256: r.bytes for r in records}
    blobs = sorted(sizes)
    length = len(_header(MANIFEST, len(manifest))) + len(manifest) + len(_padding(len(manifest)))
    for digest in blobs:
        size = sizes[digest]
        length += len(_header(f"blobs/{digest}", size)) + size + len(_padding(size))
    length += 2 * _BLOCK

    async def stream() -> AsyncIterator[bytes]:
        yield _header(MANIFEST, len(manifest)) + manifest + _padding(len(manifest))
        for digest in blobs:
            size = sizes[digest]
            yield _header(f"blobs/{digest}", size)
            sent = 0
            async for chunk in open_blob(digest):
                sent += len(chunk)
                yield chunk
            if sent != size:
                raise ArchiveError(f"blob {digest} holds {sent} bytes, not {size}")
            yield _padding(size)
        yield b"\0" * (2 * _BLOCK)

    return Export(length, stream(), skipped)


class _Reader:
    """Exact reads over a stream of chunks."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the stream."""
        while len(self._buffer) < n:
            chunk = await anext(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def exactly(self, n: int) -> bytes:
        data = await self.read(n)
        if len(data) != n:
            raise ArchiveError("not a filesd export archive: it ends early")
        return data


async def stage_archive(
    chunks: AsyncIterator[bytes],
    new_writer: Callable[[], BlobWriter],
    staged: list[StagedBlob],
    purposes: Collection[str],
) -> list[FileRecord]:
    """Read an archive: stage each blob it holds (appended to `staged`, which the caller
    commits or discards, also after an error) and return the files of its manifest.

    The manifest is checked field by field (`parse_manifest`, with the purposes this server
    accepts), and each file's size must be its blob's: a bad entry refuses the whole archive.
    """
    reader = _Reader(chunks)
    manifest: object = None
    found_manifest = False
    while True:
        block = await reader.exactly(_BLOCK)
        if block == b"\0" * _BLOCK:
            break
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.TarError as error:
            raise ArchiveError(f"not a filesd export archive: {error}") from None
        if not info.isfile():
            raise ArchiveError(f"unexpected member {info.name!r}")
        if info.name == MANIFEST:
            if info.size > MANIFEST_MAX:
                raise ArchiveError(f"{MANIFEST} is too large")
            try:
                manifest = json.loads(await reader.exactly(info.size))
            # ValueError: bad JSON or UTF-8; RecursionError: JSON nested too deeply to parse.
            except (ValueError, RecursionError) as error:
                raise ArchiveError(f"not a filesd export archive: {error}") from None
            found_manifest = True
        elif match := _BLOB_MEMBER.fullmatch(info.name):
            item = await _stage(reader, info.size, new_writer())
            staged.append(item)
            if item.sha256 != match.group(1):
                raise ArchiveError(f"{info.name} does not hold the bytes of that digest")
        else:
            raise ArchiveError(f"unexpected member {info.name!r}")
        await reader.exactly(-info.size % _BLOCK)
    if not found_manifest:
        raise ArchiveError(f"no {MANIFEST} in the archive")
    try:
        records = parse_manifest(manifest, purposes)
    except ManifestError as error:
        raise ArchiveError(f"{MANIFEST}: {error}") from None
    sizes = {s.sha256: s.size for s in staged}
    missing = {r.sha256 for r in records} - sizes.keys()
    if missing:
        raise ArchiveError(f"blobs missing from the archive: {sorted(missing)[:3]}")
    for record in records:
        if record.bytes != sizes[record.sha256]:
            raise ArchiveError(
                f"file {record.id} says {record.bytes} bytes, its blob holds {sizes[record.sha256]}"
            )
    return records


async def _stage(reader: _Reader, size: int, writer: BlobWriter) -> StagedBlob:
    try:
        left = size
        while left:
            chunk = await reader.exactly(min(_COPY_CHUNK, left))
            await writer.write(chunk)
            left -= len(chunk)
        return await writer.finish()
    except BaseException:
        await writer.abort()
        raise


class Archives:
    """Export and import of the live files (the admin API's snapshots of a state)."""

    def __init__(self, meta: FileMetadata, blobs: BlobBackend, committer: Committer) -> None:
        self._meta = meta
        self._blobs = blobs
        self._committer = committer

    async def export(self, project: str | None) -> Export:
        """A tar archive of the live files (of `project`, or all) and their blobs. Files that
        cannot be exported are left out and listed in `Export.skipped`: those marked damaged
        (status `error`, e.g. quarantined by `filesd fsck --repair`) and those whose blob is
        missing."""
        records = await self._meta.live_files(project)
        gone = await self._blobs.missing(sorted({r.sha256 for r in records if r.status != "error"}))
        kept: list[FileRecord] = []
        skipped: list[SkippedFile] = []
        for record in records:
            if record.status == "error":
                details = record.status_details or "marked damaged"
                skipped.append(SkippedFile(record.id, f"damaged: {details}"))
            elif record.sha256 in gone:
                skipped.append(SkippedFile(record.id, "its content is missing from storage"))
            else:
                kept.append(record)
        if skipped:
            log.warning("export leaves out %d damaged file(s); run `filesd fsck`", len(skipped))
        return export_archive(kept, self._blobs.open_range, skipped)

    async def import_(self, chunks: AsyncIterator[bytes], purposes: Collection[str]) -> int:
        """Store the files of an export archive (ids and times kept); returns how many.

        `purposes` are those this server accepts: a file of another purpose is refused.
        Raises `ArchiveError` for a malformed archive, `ImportConflict` if any id is taken
        already; either way nothing is stored.
        """
        staged: list[StagedBlob] = []
        try:
            records = await stage_archive(
                chunks, lambda: self._blobs.writer(None), staged, purposes
            )
        except BaseException:
            await self._blobs.discard(staged)
            raise
        await self._committer.import_files(records, staged)
        return len(records)
