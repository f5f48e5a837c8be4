"""Export and import of files as one tar archive (the admin API's snapshot of a state).

An archive holds `filesd-export.json` (format version and the live files' metadata) and
`blobs/<sha256>` for each blob they use. Import never takes a path from the archive: a member
is only matched against `blobs/<64 hex digits>`, its bytes are hashed while copied into the temp
area, and a digest that does not match refuses the whole archive. Blocking: run in a thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tarfile
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import IO

from .blobs import BlobStore, StagedBlob
from .manifest import FORMAT, FORMAT_VERSION, ManifestError, parse_manifest
from .models import FileRecord

MANIFEST = "filesd-export.json"
_BLOB_MEMBER = re.compile(r"blobs/([0-9a-f]{64})")


class ArchiveError(ValueError):
    """The archive is malformed, incomplete or does not match its manifest."""


def write_archive(out: IO[bytes], records: list[FileRecord], blobs: BlobStore) -> None:
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "files": [dataclasses.asdict(r) for r in records],
    }
    with tarfile.open(fileobj=out, mode="w|") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, _BytesReader(data))
        for digest in sorted({r.sha256 for r in records}):
            path = blobs.path_for(digest)
            info = tarfile.TarInfo(f"blobs/{digest}")
            info.size = path.stat().st_size
            with path.open("rb") as f:
                tar.addfile(info, f)


def read_archive(
    source: Path, blobs: BlobStore, purposes: Collection[str]
) -> tuple[list[FileRecord], list[StagedBlob]]:
    """The files of an archive and their blobs, staged (the caller links or discards them).

    The manifest is checked field by field (`parse_manifest`), and each file's size must be its
    blob's: a bad entry refuses the whole archive.
    """
    staged: list[StagedBlob] = []
    manifest: object = None
    found_manifest = False
    try:
        with tarfile.open(source, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    raise ArchiveError(f"unexpected member {member.name!r}")
                f = tar.extractfile(member)
                assert f is not None
                if member.name == MANIFEST:
                    manifest = json.loads(f.read(64 * 1024 * 1024))
                    found_manifest = True
                elif match := _BLOB_MEMBER.fullmatch(member.name):
                    staged.append(_stage(f, match.group(1), blobs))
                else:
                    raise ArchiveError(f"unexpected member {member.name!r}")
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
                    f"file {record.id} says {record.bytes} bytes, its blob holds "
                    f"{sizes[record.sha256]}"
                )
        return records, staged
    except BaseException as error:
        for item in staged:
            blobs.discard(item)
        if isinstance(error, ArchiveError):
            raise
        # ValueError: bad JSON or UTF-8; RecursionError: JSON nested too deeply to parse.
        if isinstance(error, tarfile.TarError | ValueError | RecursionError):
            raise ArchiveError(f"not a filesd export archive: {error}") from None
        raise


def _stage(f: IO[bytes], digest: str, blobs: BlobStore) -> StagedBlob:
    temp = blobs.temp_dir / f"{uuid.uuid4().hex}.import"
    sha, size = hashlib.sha256(), 0
    with temp.open("xb") as out:
        while chunk := f.read(1024 * 1024):
            sha.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())  # renamed into the store later: durable first, like any blob
    staged = StagedBlob(temp, sha.hexdigest(), size)
    if staged.sha256 != digest:
        blobs.discard(staged)
        raise ArchiveError(f"blobs/{digest} does not hold the bytes of that digest")
    return staged


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return chunk
