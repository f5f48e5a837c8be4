"""Content-addressed blob store on the local filesystem.

A blob is a byte string named by its SHA-256 digest, kept at `blobs/ab/<digest>`: 256 fan-out
directories, all made at start-up, so storing a blob never has to create (and fsync) one. Its
path is built from the digest alone, never from anything a client sent. New content is written to
a temp file under `tmp/` on the same filesystem, hashed while it is written, fsynced, and only
then renamed into place, so a blob path either holds the complete bytes of its digest or nothing.

Blocking calls never run on the event loop: `BlobWriter` batches incoming chunks and hands each
batch (at least `BATCH_BYTES`) to a worker thread, which hashes and writes it while the caller goes
on reading the network. Everything else here is synchronous and meant to be called in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .faultrules import storage_fault

BATCH_BYTES = 1024 * 1024
# Content up to this size is kept in memory by its writer (see StagedBlob.content).
SMALL_BYTES = 64 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_TEMP_SUFFIX = ".part"


class BlobTooLarge(Exception):
    """The content being written exceeded the writer's byte limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"content exceeds {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StagedBlob:
    """Complete, fsynced content in a temp file, not yet linked into the store.

    `content` holds the bytes too when they are at most SMALL_BYTES (else None).
    """

    temp_path: Path
    sha256: str
    size: int
    content: bytes | None = None


@dataclass(frozen=True)
class Linked:
    """Staged content now stored: `new` if its blob was not there before; the blob's stat."""

    new: bool
    stat: os.stat_result


@dataclass(frozen=True)
class ConcatResult:
    staged: StagedBlob
    md5: str


class BlobStore:
    """Blobs under `root/blobs`, temp files under `root/tmp`, upload parts under `root/parts`.

    Parts are the pieces of an upload in progress: they outlive a restart (unlike temp files)
    and are named by tokens this server generates, never by ids a client sends.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.temp_dir = root / "tmp"
        self.part_dir = root / "parts"

    def prepare(self) -> int:
        """Create the directories and remove temp files left by interrupted writes.

        Must run before any writer is created. Returns how many temp files were removed.
        """
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.part_dir.mkdir(parents=True, exist_ok=True)
        made = False
        for i in range(256):
            fan_out = self.blob_dir / f"{i:02x}"
            if not fan_out.is_dir():
                fan_out.mkdir()
                made = True
        if made:
            _fsync_dir(self.blob_dir)
        removed = 0
        for entry in os.scandir(self.temp_dir):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
        return removed

    def check_writable(self) -> None:
        """Raise OSError unless a file can be created, synced and removed in the temp area."""
        probe = self.temp_dir / f"{uuid.uuid4().hex}.ready"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    def path_for(self, digest: str) -> Path:
        """The path of the blob with this digest (which need not exist)."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError("not a lowercase hex SHA-256 digest")
        return self.blob_dir / digest[:2] / digest

    def writer(self, max_bytes: int | None = None) -> BlobWriter:
        """A writer for new content; raises `BlobTooLarge` once more than `max_bytes` arrive."""
        return BlobWriter(self.temp_dir / f"{uuid.uuid4().hex}{_TEMP_SUFFIX}", max_bytes)

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def link(self, staged: StagedBlob) -> bool:
        """Move staged content into place under its digest; the temp file is gone afterwards.

        Returns True if the blob was new, False if identical content was already stored (the
        temp file is then simply removed). Durable on return: the directory entry is fsynced.
        """
        result = self.link_all([staged])[0]
        if isinstance(result, BaseException):
            raise result
        return result.new

    def link_all(self, staged: Sequence[StagedBlob]) -> list[Linked | Exception]:
        """`link` for many, with one fsync per directory that gained entries.

        Each result is a `Linked` or the error for that content; every temp file is gone
        afterwards.
        """
        results: list[Linked | Exception] = []
        gained: dict[Path, list[int]] = {}
        for i, item in enumerate(staged):
            try:
                target = self.path_for(item.sha256)
                try:
                    if target.exists():
                        results.append(Linked(new=False, stat=target.stat()))
                        continue
                    os.replace(item.temp_path, target)
                    stat = target.stat()
                finally:
                    item.temp_path.unlink(missing_ok=True)
            except Exception as error:
                results.append(error)
                continue
            results.append(Linked(new=True, stat=stat))
            gained.setdefault(target.parent, []).append(i)
        # Concurrent fsyncs can share one journal commit; one after another, each waits for its own.
        with ThreadPoolExecutor(max_workers=min(8, len(gained) or 1)) as pool:
            outcomes = pool.map(_try_fsync_dir, gained)
            for (_, indexes), failure in zip(gained.items(), outcomes, strict=True):
                if failure is not None:
                    for i in indexes:
                        results[i] = failure
        return results

    def read(self, digest: str) -> tuple[bytes, os.stat_result]:
        """A blob's bytes and stat (for small blobs: it is read whole)."""
        with self.path_for(digest).open("rb", buffering=0) as f:
            return f.read(), os.fstat(f.fileno())

    def discard(self, staged: StagedBlob) -> None:
        staged.temp_path.unlink(missing_ok=True)

    def remove(self, digest: str) -> bool:
        """Delete a blob; returns False if it was not there."""
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        """Every digest stored, in no particular order; stray names are skipped."""
        for fan_out in _subdirs(self.blob_dir):
            with os.scandir(fan_out) as it:
                for entry in it:
                    if _DIGEST.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                        yield entry.name

    # --- upload parts ----------------------------------------------------------------------

    def save_part(self, staged: StagedBlob) -> str:
        """Keep staged content as an upload part; returns the token that names it."""
        token = uuid.uuid4().hex
        try:
            os.replace(staged.temp_path, self.part_path(token))
        except BaseException:
            staged.temp_path.unlink(missing_ok=True)
            raise
        _fsync_dir(self.part_dir)
        return token

    def part_path(self, token: str) -> Path:
        if not _TOKEN.fullmatch(token):
            raise ValueError("not a part token")
        return self.part_dir / token

    def remove_parts(self, tokens: list[str]) -> int:
        removed = 0
        for token in tokens:
            try:
                self.part_path(token).unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    def part_tokens_older_than(self, cutoff: float) -> list[str]:
        """Tokens of the part files last modified before `cutoff` (a Unix time).

        Parts saved since then may still be on their way to the database.
        """
        with os.scandir(self.part_dir) as it:
            return [
                e.name
                for e in it
                if _TOKEN.fullmatch(e.name)
                and e.is_file(follow_symlinks=False)
                and e.stat().st_mtime < cutoff
            ]

    def concat_parts(self, tokens: list[str]) -> ConcatResult:
        """Join parts, in order, into new staged content, computing its SHA-256 and MD5.

        Blocking: run it in a thread. The parts themselves are left in place.
        """
        temp = self.temp_dir / f"{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with temp.open("xb", buffering=0) as out:
                for token in tokens:
                    with self.part_path(token).open("rb", buffering=0) as part:
                        while chunk := part.read(BATCH_BYTES):
                            sha256.update(chunk)
                            md5.update(chunk)
                            _write_all(out.fileno(), chunk)
                            size += len(chunk)
                os.fsync(out.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return ConcatResult(StagedBlob(temp, sha256.hexdigest(), size), md5.hexdigest())


class BlobWriter:
    """Streams content into a temp file, hashing it, with disk work in a worker thread.

    Use `write` for each chunk, then exactly one of `finish` (returns a `StagedBlob`) or `abort`
    (removes the temp file). At most one batch is being written while the next one fills, so
    memory stays near two batches whatever the content size.
    """

    def __init__(self, temp_path: Path, max_bytes: int | None) -> None:
        self._path = temp_path
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        self._size = 0
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._pending: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def size(self) -> int:
        """Bytes accepted so far."""
        return self._size

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("writer is closed")
        if not data:
            return
        await _injected_storage_fault()
        self._size += len(data)
        if self._max_bytes is not None and self._size > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            await self._submit_batch()

    async def finish(self) -> StagedBlob:
        """Write what is left, fsync and close (one thread hop); the content is then complete."""
        await _injected_storage_fault()
        await self._wait_pending()
        self._closed = True
        chunks, self._batch = self._batch, []
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._write_sync_close, chunks)
        # Nothing was written before: all the content is in `chunks`.
        content = b"".join(chunks) if self._size <= SMALL_BYTES else None
        return StagedBlob(self._path, self._hash.hexdigest(), self._size, content)

    async def abort(self) -> None:
        """Stop and remove the temp file. Safe to call at any point, also after `finish`."""
        self._closed = True
        self._batch.clear()
        # The worker may still be writing to the fd: let it finish before closing it.
        with contextlib.suppress(Exception):
            await self._wait_pending()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._close_and_unlink)

    async def _submit_batch(self) -> None:
        await self._wait_pending()
        if not self._batch and self._fd is not None:
            return
        chunks, self._batch, self._batch_bytes = self._batch, [], 0
        loop = asyncio.get_running_loop()
        self._pending = loop.run_in_executor(None, self._write_chunks, chunks)

    async def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    def _write_chunks(self, chunks: list[bytes]) -> None:
        if self._fd is None:
            self._fd = os.open(
                self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
        for chunk in chunks:
            self._hash.update(chunk)
            _write_all(self._fd, chunk)

    def _write_sync_close(self, chunks: list[bytes]) -> None:
        self._write_chunks(chunks)  # opens the file if nothing was written yet
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _close_and_unlink(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._path.unlink(missing_ok=True)


async def _injected_storage_fault() -> None:
    """A fault injected for this request (see filesd.faultrules): a full or slow disk."""
    rule = storage_fault.get()
    if rule is None:
        return
    if rule.storage == "full":
        raise OSError(errno.ENOSPC, "No space left on device (injected fault)")
    if rule.storage == "slow":
        await asyncio.sleep(rule.slow_ms / 1000)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _subdirs(path: Path) -> Iterator[Path]:
    with os.scandir(path) as it:
        for entry in it:
            if len(entry.name) == 2 and entry.is_dir(follow_symlinks=False):
                yield Path(entry.path)


def _try_fsync_dir(path: Path) -> OSError | None:
    try:
        _fsync_dir(path)
    except OSError as error:
        return error
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
