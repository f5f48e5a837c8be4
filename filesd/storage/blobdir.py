"""The local blob backend: content-addressed files in a directory.

A blob is a byte string named by its SHA-256 digest, kept at `blobs/ab/<digest>`, in up to 256
fan-out directories made as the first blob of each arrives (the new directory fsynced with the
commit that made it; making all 256 at start-up cost every fresh data dir ~150 ms to make and
remove, measured, which the test suite paid thousands of times). Its path is built from the digest
alone, never from anything a client sent. New content is written to a temp file under `tmp/` on the
same filesystem, hashed while it is written, fsynced, and only then renamed into place, so a blob
path either holds the complete bytes of its digest or nothing.
Upload parts live under `parts/`, named by tokens made here.

Blocking calls never run on the event loop: the async methods hop to a worker thread, and
`DirWriter` batches incoming chunks and hands each batch (at least `BATCH_BYTES`) to a worker
thread, which hashes and writes it while the caller goes on reading the network. The `*_sync`
methods are for operator commands (fsck, backup), which run outside the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .base import (
    SMALL_BYTES,
    BlobMissing,
    BlobTooLarge,
    StagedBlob,
    neutral_os_error,
    unique_token,
)

BATCH_BYTES = 1024 * 1024
READ_CHUNK = 256 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_TEMP_SUFFIX = ".part"
_STAGED_REF = re.compile(r"[0-9a-f]{32}\.part")

_T = TypeVar("_T")


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run blocking work in a thread; a full disk comes back as `StorageFull`."""
    try:
        return await asyncio.to_thread(fn, *args)
    except OSError as error:
        neutral = neutral_os_error(error)
        if neutral is error:
            raise
        raise neutral from error


class HashedFile:
    """A new file being written while its bytes are hashed: the one hashing copy of filesd.

    `write` hashes (SHA-256, and MD5 when asked) and writes every byte; `close` fsyncs and
    closes (the content is then durable, though not yet renamed into place). Blocking.
    With `durable=False`, `close` skips the fsync: for spool files that a crash may lose
    (their content is made durable elsewhere, e.g. in an object store).
    """

    def __init__(self, path: Path, *, md5: bool = False, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.size = 0
        self._fd: int | None = None

    def write(self, chunk: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
            )
        self.sha256.update(chunk)
        if self.md5 is not None:
            self.md5.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(chunk)

    def close(self) -> None:
        """Fsync (if durable) and close (creating the file if nothing was written: empty)."""
        if self._fd is None:
            self.write(b"")
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.path.unlink(missing_ok=True)


class BlobDir:
    """Blobs under `root/blobs`, temp files under `root/tmp`, upload parts under `root/parts`.

    Implements `filesd.storage.base.BlobBackend` (with `open_local`, for sendfile).
    """

    def __init__(self, root: Path, *, sync_dir: Callable[[Path], None] | None = None) -> None:
        """`sync_dir` makes a directory's entries durable (`fsync_dir`; a test may give one
        that records or fails the calls, as a transport wraps a seam from outside)."""
        self.root = root
        self._sync_dir = sync_dir or fsync_dir
        self.blob_dir = root / "blobs"
        self.temp_dir = root / "tmp"
        self.part_dir = root / "parts"
        # Directory fsyncs of a commit run side by side (they can share a journal commit), in
        # threads kept for it: starting threads for every commit cost more than the fsyncs.
        self._fsyncs = ThreadPoolExecutor(max_workers=8, thread_name_prefix="filesd-fsync")
        # Fan-out directories whose entries in `blobs/` are known to be on disk: those found by
        # `prepare` (which fsyncs `blobs/`) and those a commit's fsync of `blobs/` covered. A
        # blob in any other directory waits on an fsync of `blobs/` too, however its directory
        # came to be (made by another commit whose fsync failed, or is still running). Only
        # ever added to after an fsync succeeded, so a stale read costs an fsync, never safety.
        self._durable_fan_outs: set[str] = set()

    # --- the BlobBackend protocol -------------------------------------------------------------

    async def prepare(self, *, clean: bool = True) -> int:
        return await _in_thread(self.prepare_sync, clean)

    async def close(self) -> None:
        await asyncio.to_thread(self._fsyncs.shutdown)

    def download_url(self, digest: str, *, filename: str, expires_in: int) -> str | None:
        return None

    def writer(self, max_bytes: int | None = None) -> DirWriter:
        return DirWriter(self.temp_dir / f"{unique_token()}{_TEMP_SUFFIX}", max_bytes)

    async def commit(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        results = await asyncio.to_thread(self._commit_sync, staged)
        return [neutral_os_error(r) if isinstance(r, OSError) else r for r in results]

    async def discard(self, staged: Sequence[StagedBlob]) -> None:
        if staged:
            await asyncio.to_thread(self._discard_sync, staged)

    async def read(self, digest: str) -> bytes:
        try:
            return await _in_thread(self._read_sync, digest)
        except FileNotFoundError:
            raise BlobMissing(digest) from None

    async def open_local(self, digest: str) -> BinaryIO:
        try:
            return await _opened(self.path_for(digest))
        except FileNotFoundError:
            raise BlobMissing(digest) from None

    async def open_range(
        self, digest: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        f = await self.open_local(digest)
        try:
            await asyncio.to_thread(f.seek, start)
            left = length
            while left is None or left > 0:
                size = READ_CHUNK if left is None else min(READ_CHUNK, left)
                chunk = await asyncio.to_thread(f.read, size)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            # Here, not in a thread: a close handed to a thread is skipped when a cancel comes
            # first (a reader stopped at shutdown), and closing a file read from writes nothing.
            # A read still running in a worker thread then fails, or reads bytes nobody takes.
            f.close()

    async def delete(self, digests: Sequence[str]) -> int:
        if not digests:
            return 0
        return await _in_thread(lambda: sum(self._remove_sync(d) for d in digests))

    async def digests(self) -> list[str]:
        return await _in_thread(lambda: list(self.digests_sync()))

    async def missing(self, digests: Sequence[str]) -> set[str]:
        if not digests:
            return set()
        return await _in_thread(lambda: {d for d in digests if not self.path_for(d).is_file()})

    async def check_writable(self) -> None:
        await _in_thread(self._check_writable_sync)

    async def leftovers(self) -> list[str]:
        return await _in_thread(self._leftovers_sync)

    async def remove_leftovers(self, names: Sequence[str]) -> int:
        return await _in_thread(self._remove_leftovers_sync, names)

    async def quarantine(self, digests: Sequence[str]) -> None:
        """Move the blobs to `quarantine/` beside `blobs/` (kept for a look, never served)."""
        if digests:
            await _in_thread(self._quarantine_sync, digests)

    async def save_part(self, staged: StagedBlob) -> str:
        return await _in_thread(self._save_part_sync, staged)

    async def remove_parts(self, tokens: Sequence[str]) -> int:
        if not tokens:
            return 0
        return await _in_thread(self.remove_parts_sync, tokens)

    async def part_tokens_older_than(self, cutoff: float) -> list[str]:
        return await _in_thread(self.part_tokens_older_than_sync, cutoff)

    async def concat_parts(self, tokens: Sequence[str]) -> tuple[StagedBlob, str]:
        return await _in_thread(self._concat_parts_sync, tokens)

    async def parts_md5(self, tokens: Sequence[str]) -> str:
        return await _in_thread(self._parts_md5_sync, tokens)

    # --- blocking implementations (also for operator commands) --------------------------------

    def prepare_sync(self, clean: bool = True) -> int:
        """Create the directories and (with `clean`) remove temp files left by interrupted
        writes. Must run before any writer is created. Returns how many temp files were
        removed."""
        made = False
        for directory in (self.blob_dir, self.temp_dir, self.part_dir):
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                made = True
        if made:
            fsync_dir(self.root)
        with os.scandir(self.blob_dir) as it:
            fan_outs = {e.name for e in it if e.is_dir(follow_symlinks=False)}
        if fan_outs and self._try_sync(self.blob_dir) is None:
            self._durable_fan_outs |= fan_outs
        if not clean:
            return 0
        return self._remove_leftovers_sync(self._leftovers_sync())

    def _leftovers_sync(self) -> list[str]:
        with os.scandir(self.temp_dir) as it:
            return sorted(e.name for e in it if e.is_file(follow_symlinks=False))

    def _remove_leftovers_sync(self, names: Sequence[str]) -> int:
        removed = 0
        for name in names:
            if "/" in name or name in (".", ".."):
                raise ValueError("not a temp file of this backend")
            try:
                os.unlink(self.temp_dir / name)
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    def _quarantine_sync(self, digests: Sequence[str]) -> None:
        quarantine = self.root / "quarantine"
        quarantine.mkdir(exist_ok=True)
        for digest in digests:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path_for(digest), quarantine / digest)
        fsync_dir(quarantine)

    def path_for(self, digest: str) -> Path:
        """The path of the blob with this digest (which need not exist)."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError("not a lowercase hex SHA-256 digest")
        return self.blob_dir / digest[:2] / digest

    def staged_path(self, staged: StagedBlob) -> Path:
        if not _STAGED_REF.fullmatch(staged.ref):
            raise ValueError("not a staged blob of this backend")
        return self.temp_dir / staged.ref

    def digests_sync(self) -> Iterator[str]:
        """Every digest stored, in no particular order; stray names are skipped."""
        for fan_out in _subdirs(self.blob_dir):
            with os.scandir(fan_out) as it:
                for entry in it:
                    if _DIGEST.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                        yield entry.name

    def remove_parts_sync(self, tokens: Sequence[str]) -> int:
        removed = 0
        for token in tokens:
            try:
                self.part_path(token).unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    def part_tokens_older_than_sync(self, cutoff: float) -> list[str]:
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

    def part_path(self, token: str) -> Path:
        if not _TOKEN.fullmatch(token):
            raise ValueError("not a part token")
        return self.part_dir / token

    def _commit_sync(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        """Move staged content into place under its digest, with one fsync per directory that
        gained entries (concurrent fsyncs can share one journal commit). A blob whose fan-out
        directory is not yet known durable (the first of its directory) also waits on an fsync
        of `blobs/`, so an acknowledged blob never hangs on a directory entry a crash could
        lose. Every temp file is gone afterwards."""
        results: list[bool | Exception] = []
        gained: dict[Path, list[int]] = {}
        new_fan_outs: set[str] = set()
        for i, item in enumerate(staged):
            try:
                temp = self.staged_path(item)
                target = self.path_for(item.sha256)
                fan_out = target.parent
                try:
                    if target.exists():
                        results.append(False)
                    else:
                        try:
                            os.replace(temp, target)
                        except FileNotFoundError:
                            if not temp.exists():
                                raise
                            fan_out.mkdir(exist_ok=True)  # the first blob of its fan-out
                            os.replace(temp, target)
                        results.append(True)
                        gained.setdefault(fan_out, []).append(i)
                finally:
                    temp.unlink(missing_ok=True)
            except Exception as error:
                results.append(error)
                continue
            if fan_out.name not in self._durable_fan_outs:
                gained.setdefault(self.blob_dir, []).append(i)
                new_fan_outs.add(fan_out.name)
        outcomes: Iterable[OSError | None]
        try:
            if len(gained) <= 1:
                raise RuntimeError("one directory: no need for the pool")
            outcomes = list(self._fsyncs.map(self._try_sync, gained))
        except RuntimeError:  # also: a commit still running after `close` shut the pool
            outcomes = [self._try_sync(path) for path in gained]
        for (path, indexes), failure in zip(gained.items(), outcomes, strict=True):
            if failure is not None:
                for i in indexes:
                    results[i] = failure
            elif path == self.blob_dir:
                self._durable_fan_outs |= new_fan_outs
        return results

    def _try_sync(self, path: Path) -> OSError | None:
        try:
            self._sync_dir(path)
        except OSError as error:
            return error
        return None

    def _discard_sync(self, staged: Sequence[StagedBlob]) -> None:
        for item in staged:
            self.staged_path(item).unlink(missing_ok=True)

    def _read_sync(self, digest: str) -> bytes:
        with self.path_for(digest).open("rb", buffering=0) as f:
            return f.read()

    def _remove_sync(self, digest: str) -> bool:
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def _check_writable_sync(self) -> None:
        """Raise OSError unless a file can be created, synced and removed in the temp area."""
        probe = HashedFile(self.temp_dir / f"{uuid.uuid4().hex}.ready")
        try:
            probe.write(b"ok")
            probe.close()
        finally:
            probe.abort()

    def _save_part_sync(self, staged: StagedBlob) -> str:
        token = uuid.uuid4().hex
        temp = self.staged_path(staged)
        try:
            os.replace(temp, self.part_path(token))
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(self.part_dir)
        return token

    def _concat_parts_sync(self, tokens: Sequence[str]) -> tuple[StagedBlob, str]:
        out = HashedFile(self.temp_dir / f"{uuid.uuid4().hex}{_TEMP_SUFFIX}", md5=True)
        try:
            for token in tokens:
                with self.part_path(token).open("rb", buffering=0) as part:
                    while chunk := part.read(BATCH_BYTES):
                        out.write(chunk)
            out.close()
        except BaseException:
            out.abort()
            raise
        assert out.md5 is not None
        staged = StagedBlob(out.path.name, out.sha256.hexdigest(), out.size)
        return staged, out.md5.hexdigest()

    def _parts_md5_sync(self, tokens: Sequence[str]) -> str:
        md5 = hashlib.md5(usedforsecurity=False)
        for token in tokens:
            with self.part_path(token).open("rb", buffering=0) as part:
                while chunk := part.read(BATCH_BYTES):
                    md5.update(chunk)
        return md5.hexdigest()


class DirWriter:
    """Streams content into a temp file, hashing it, with disk work in a worker thread.

    At most one batch is being written while the next one fills, so memory stays near two
    batches whatever the content size. `durable`: see `HashedFile`.
    """

    def __init__(self, temp_path: Path, max_bytes: int | None, *, durable: bool = True) -> None:
        self._file = HashedFile(temp_path, durable=durable)
        self._max_bytes = max_bytes
        self._size = 0
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._pending: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("writer is closed")
        if not data:
            return
        self._size += len(data)
        if self._max_bytes is not None and self._size > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            await self._submit_batch()

    async def finish(self) -> StagedBlob:
        """Write what is left, fsync and close (one thread hop); the content is then complete."""
        await self._wait_pending()
        self._closed = True
        chunks, self._batch = self._batch, []
        await _in_thread(self._write_and_close, chunks)
        # Nothing was written before: all the content is in `chunks`.
        content = b"".join(chunks) if self._size <= SMALL_BYTES else None
        return StagedBlob(self._file.path.name, self._file.sha256.hexdigest(), self._size, content)

    async def abort(self) -> None:
        self._closed = True
        self._batch.clear()
        # The worker may still be writing to the fd: let it finish before closing it.
        with contextlib.suppress(Exception):
            await self._wait_pending()
        await asyncio.to_thread(self._file.abort)

    async def _submit_batch(self) -> None:
        await self._wait_pending()
        chunks, self._batch, self._batch_bytes = self._batch, [], 0
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._write, chunks)

    async def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                await pending
            except OSError as error:
                neutral = neutral_os_error(error)
                if neutral is error:
                    raise
                raise neutral from error

    def _write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._file.write(chunk)

    def _write_and_close(self, chunks: list[bytes]) -> None:
        self._write(chunks)
        self._file.close()


def _open_read(path: Path) -> BinaryIO:
    return path.open("rb")


async def _opened(path: Path) -> BinaryIO:
    """`path` opened for reading in a worker thread. If the caller is cancelled meanwhile, the
    open goes on in its thread: what it opens is closed then, never a leaked descriptor."""
    opening = asyncio.ensure_future(_in_thread(_open_read, path))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _subdirs(path: Path) -> Iterator[Path]:
    with os.scandir(path) as it:
        for entry in it:
            if len(entry.name) == 2 and entry.is_dir(follow_symlinks=False):
                yield Path(entry.path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
