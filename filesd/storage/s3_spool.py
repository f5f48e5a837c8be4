"""The S3 backend's local spool: new content written to a spool file while it is hashed
(SHA-256 and, beside it, the MD5 that a PUT's Content-MD5 needs), and slices of spool files
as request bodies for the parts of a multipart upload. Blocking reads and hashing run in
worker threads; nothing here talks to the bucket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

from .base import SMALL_BYTES, StagedBlob
from .blobdir import BATCH_BYTES, DirWriter


def md5_b64(data: bytes) -> str:
    return b64(hashlib.md5(data, usedforsecurity=False).digest())


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class FileSlice(io.RawIOBase):
    """`length` bytes of an open file from `start`: a seekable, read-only request body whose
    position 0 is `start` (botocore rewinds a body with seek(0) to retry a request).

    Reads use pread, so the slices of one descriptor (the parts of a multipart upload) can be
    read at once; the descriptor stays its owner's to close. Reads block: aiohttp makes them
    in worker threads, 256 KiB at a time, each once the previous one was sent: `progress` (a
    monotonic time) is when the body last moved on."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._length = length
        self._pos = 0
        self.progress = time.monotonic()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._pos + offset
        elif whence == os.SEEK_END:
            position = self._length + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._pos = position
        self.progress = time.monotonic()  # a retry starts over
        return position

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._start + self._pos)
        if not data:  # the file was cut short: fail now, not when the store times out
            raise OSError(errno.EIO, "spool file shorter than its content")
        self._pos += len(data)
        self.progress = time.monotonic()
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def fileno(self) -> int:
        # aiohttp would take the size of the whole file for the body's (Content-Length is set).
        raise io.UnsupportedOperation("a file slice has no descriptor of its own")


def range_md5(fd: int, start: int, length: int) -> bytes:
    """The MD5 of `length` bytes of `fd` from `start` (blocking: runs in a thread)."""
    md5 = hashlib.md5(usedforsecurity=False)
    end = start + length
    while start < end:
        data = os.pread(fd, min(BATCH_BYTES, end - start), start)
        if not data:
            raise OSError(errno.EIO, "spool file shorter than its content")
        md5.update(data)
        start += len(data)
    return md5.digest()


class SpoolWriter:
    """A `DirWriter` of a spool file (SHA-256 and the writes in one worker thread) and an MD5
    of the same bytes (the PUT's Content-MD5) hashed batch by batch in another worker thread
    meanwhile: MD5 is slower than SHA-256, so one thread doing both would slow spooling down.
    When it finishes, it leaves the MD5 in `md5s` under the staged ref."""

    def __init__(self, path: Path, max_bytes: int | None, md5s: dict[str, bytes]) -> None:
        self._ref = path.name
        self._writer = DirWriter(path, max_bytes, durable=False)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._md5s = md5s
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._pending: asyncio.Future[None] | None = None

    @property
    def size(self) -> int:
        return self._writer.size

    async def write(self, data: bytes) -> None:
        await self._writer.write(data)
        if not data:
            return
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            await self._hash_batch()

    async def finish(self) -> StagedBlob:
        if self._batch_bytes > SMALL_BYTES:
            await self._hash_batch()  # beside the writer's last hop
        try:
            staged = await self._writer.finish()
        finally:
            await self._wait_pending()
        update(self._md5, self._batch)  # at most SMALL_BYTES: on the loop, no hop
        self._batch = []
        self._md5s[staged.ref] = self._md5.digest()
        return staged

    async def abort(self) -> None:
        self._batch = []
        self._md5s.pop(self._ref, None)
        with contextlib.suppress(Exception):
            await self._wait_pending()
        await self._writer.abort()

    async def _hash_batch(self) -> None:
        await self._wait_pending()  # one update at a time, in order
        chunks, self._batch, self._batch_bytes = self._batch, [], 0
        self._pending = asyncio.get_running_loop().run_in_executor(None, update, self._md5, chunks)

    async def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending


def update(md5: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        md5.update(chunk)
