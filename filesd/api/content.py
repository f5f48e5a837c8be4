"""Serving a file's bytes: validators, conditional requests, ranges, and the three ways to send.

A download's validators describe the requesting project's own file, never the blob it shares
with other files: `ETag` is the content digest (a strong validator: the bytes of a digest never
change) and `Last-Modified` the file's `created_at`. Taking either from the blob (its mtime)
would tell project B that project A stored the same bytes, and when.

Conditional requests are evaluated here against those values (RFC 9110 §13.2.2), the same for
every way of sending:
- small files (up to `SMALL_CONTENT`) from memory (the blobs' cache keeps them, or they are
  read whole in one thread hop: that beats opening, sending and closing a file);
- larger files with zero-copy sendfile when the blob backend keeps local files;
- otherwise as a stream of chunks from the backend, holding a download slot (and on S3 a
  pooled connection to the bucket) only while the client keeps reading.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import AsyncGenerator, Mapping
from email.utils import formatdate
from typing import IO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETAG_ANY, ETag, must_be_empty_body

from ..models import FileRecord
from ..services.errors import BlobMissing, StorageUnavailable
from ..services.files import SMALL_CONTENT, FileService
from .drain import DownloadSlots
from .errors import ApiError, RangeNotSatisfiable

log = logging.getLogger(__name__)

# Headers that describe a body: not sent with a 304.
_BODY_HEADERS = ("Content-Type", "Content-Disposition")
# RFC 9110 §14.1.1, strictly: no whitespace inside a range-spec.
_BYTE_RANGE = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
# More digits than this (after leading zeros) is beyond any file: 2^63 has 19.
_MAX_DIGITS = 19


def strong_etag(record: FileRecord) -> str:
    """The file's ETag: its content digest, quoted (a strong validator)."""
    return f'"{record.sha256}"'


def _matches(etag: str, candidates: tuple[ETag, ...], *, weak: bool) -> bool:
    if len(candidates) == 1 and candidates[0].value == ETAG_ANY:
        return True
    value = etag.strip('"')
    return any(c.value == value for c in candidates if weak or not c.is_weak)


def precondition_status(request: web.BaseRequest, record: FileRecord) -> int | None:
    """412 or 304 when a condition of the request decides the answer, else None."""
    etag, modified = strong_etag(record), record.created_at
    if_match = request.if_match
    if if_match is not None:
        if not _matches(etag, if_match, weak=False):
            return 412
    else:
        since = request.if_unmodified_since
        if since is not None and modified > since.timestamp():
            return 412
    if_none_match = request.if_none_match
    if if_none_match is not None:
        if _matches(etag, if_none_match, weak=True):
            return 304 if request.method in ("GET", "HEAD") else 412
    elif request.method in ("GET", "HEAD"):
        since = request.if_modified_since
        if since is not None and modified <= since.timestamp():
            return 304
    return None


def range_applies(request: web.BaseRequest, record: FileRecord) -> bool:
    """False when an `If-Range` does not match the file: then the whole file is sent."""
    raw = request.headers.get("If-Range")
    if raw is None:
        return True
    raw = raw.strip()
    if raw.startswith(('"', "W/")):
        return raw == strong_etag(record)  # a strong comparison: a weak tag never matches
    date = request.if_range
    return date is not None and int(date.timestamp()) == record.created_at


def byte_range(request: web.BaseRequest, size: int) -> tuple[int, int] | None:
    """(start, count) of the single byte range asked for, or None for the whole file.

    RFC 9110 §14: a Range in another unit than bytes, or with several ranges (there is no
    multipart/byteranges here), is ignored: the whole file. A byte range is decided here, every
    case: malformed (whitespace included) or unsatisfiable (`bytes=-0`, a first byte at or past
    the end, any range of an empty file) is a 416 in the envelope with `Content-Range: bytes
    */size`; a last byte past the end is the end; a suffix longer than the file is all of it.
    """
    value = request.headers.get("Range")
    if value is None:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    chosen = _byte_range(spec, size)
    if chosen is None:
        raise RangeNotSatisfiable(
            f"Range not satisfiable for a file of {size} bytes: {value[:100]}",
            param="Range",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return chosen


def _byte_range(spec: str, size: int) -> tuple[int, int] | None:
    """One range-spec as (start, count) within `size`; None if malformed or unsatisfiable."""
    match = _BYTE_RANGE.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "" or size == 0:
        return None
    first, last = (_position(group) for group in match.groups())
    if first is None:  # a suffix: the last `last` bytes (all of them if there are fewer)
        assert last is not None
        if last == 0:
            return None
        count = min(last, size)
        return size - count, count
    if first >= size or (last is not None and last < first):
        return None
    stop = size if last is None or last >= size else last + 1
    return first, stop - first


def _position(digits: str) -> int | None:
    """A byte position: None if absent; anything longer than `_MAX_DIGITS` is 2^63, beyond
    any file (int() would refuse thousands of digits, and need not read them)."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return 2**63 if len(digits) > _MAX_DIGITS else int(digits)


# How long a presigned download URL stays valid (redirect_downloads).
REDIRECT_SECONDS = 300
# A streamed download whose client has not taken its last chunk for RELEASE_AFTER seconds
# gives back its backend stream and its download slot once another download waits for a slot,
# and after RELEASE_IDLE seconds anyway (an idle pooled connection, which the store may drop);
# it takes both again when its client reads on.
RELEASE_AFTER = 1.0
RELEASE_IDLE = 10.0


async def send_content(
    request: web.Request,
    files: FileService,
    record: FileRecord,
    headers: Mapping[str, str],
    *,
    slots: DownloadSlots,
    project: str,
    redirect: bool = False,
) -> web.StreamResponse:
    """The response for a download of `record` (after the caller checked access and Range).

    With `redirect`, and a blob backend that has URLs of its own (S3), a 307 to a short-lived
    presigned URL (which answers with the file's Content-Disposition) once the preconditions
    hold: the client fetches the bytes from the backend, Range included. A body streamed
    from the backend takes one of `slots` for `project` while it is read (see
    `_read_while_read`)."""
    validators = {
        "ETag": strong_etag(record),
        "Last-Modified": formatdate(record.created_at, usegmt=True),
        "Accept-Ranges": "bytes",
    }
    status = precondition_status(request, record)
    if status == 304:
        kept = {k: v for k, v in headers.items() if k not in _BODY_HEADERS}
        return web.Response(status=304, headers={**kept, **validators})
    if status == 412:
        raise ApiError(
            "Precondition failed: the file does not match the request's conditions.",
            code="precondition_failed",
            status=412,
            headers={**validators, "Cache-Control": headers.get("Cache-Control", "no-cache")},
        )
    if redirect:
        url = files.download_url(record, expires_in=REDIRECT_SECONDS)
        if url is not None:
            return web.Response(
                status=307,
                headers={"Location": url, "Cache-Control": "no-store", **validators},
            )
    headers = {**headers, **validators}
    size = record.bytes
    chosen = byte_range(request, size) if range_applies(request, record) else None
    start, count = chosen if chosen is not None else (0, size)
    if chosen is not None:
        headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
    status = 206 if chosen is not None else 200
    if size <= SMALL_CONTENT:
        body = await files.read_small(record)
        return web.Response(body=body[start : start + count], status=status, headers=headers)
    local = await files.open_local(record)
    if local is not None:
        return _SendfileResponse(local, start, count, status=status, headers=headers)
    chunks = _read_while_read(files, record, start, count, slots, project)
    try:
        first = await anext(chunks, b"")  # a missing blob is an error answer, not a cut body
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = count
        try:
            await response.prepare(request)
            if not must_be_empty_body(request.method, status):
                await response.write(first)
                async for chunk in chunks:
                    await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            # The client left mid-body: answered as far as it listened, as aiohttp ends a
            # sendfile it left, not an error in the handler (the status sent is the one
            # logged and counted).
            log.info("client left a download of %s mid-body", record.id)
        except (BlobMissing, StorageUnavailable) as error:
            if not response.prepared:
                raise
            # Taken up again mid-body (its client had stopped reading), the blob was gone or
            # the store failed: the status is sent, so the body is cut (the client sees a
            # short read), as a store failing mid-stream cut it before.
            log.warning("download of %s cut mid-body: %s", record.id, error)
            if request.transport is not None:
                request.transport.abort()
    finally:
        # At once, not whenever the garbage collector gets to it: the stream holds a
        # download slot and (on S3) a pooled connection.
        await chunks.aclose()
    return response


async def _read_while_read(
    files: FileService,
    record: FileRecord,
    start: int,
    count: int,
    slots: DownloadSlots,
    project: str,
) -> AsyncGenerator[bytes, None]:
    """`count` bytes of `record` from `start`, holding a download slot and the backend's
    stream (on S3: a pooled connection to the bucket) only while the client keeps reading.

    Whoever sends the chunks comes back for the next one once the client has taken enough of
    the last: when that takes more than `RELEASE_AFTER` seconds (a slow or stalled client,
    its send queue full) while another download waits for a slot, or more than
    `RELEASE_IDLE` seconds, the stream is closed and the slot given back, and both are taken
    again, from the position reached, when the client comes back (a new ranged GET on S3:
    only under contention or after a long stall, so a slow honest reader costs few).
    Otherwise 130 downloads that never read hold every pooled connection (and slot) for as
    long as they like, and every other download and upload on the instance waits for them.
    """
    loop = asyncio.get_running_loop()
    position, end = start, start + count
    stream: AsyncGenerator[bytes, None] | None = None
    releasing: asyncio.Task[None] | None = None

    async def release() -> None:
        nonlocal stream
        held, stream = stream, None
        try:
            if held is not None:
                await held.aclose()
        finally:
            slots.release(project)

    timer: asyncio.TimerHandle | None = None
    idle_since = 0.0

    def release_soon() -> None:
        nonlocal releasing, timer
        if slots.contended or loop.time() - idle_since >= RELEASE_IDLE:
            timer = None
            releasing = loop.create_task(release())
        else:
            timer = loop.call_later(RELEASE_AFTER, release_soon)

    try:
        while position < end:
            if stream is None:
                await slots.acquire(project)
                stream = files.read_range(record, position, end - position)
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                return
            position += len(chunk)
            idle_since = loop.time()
            timer = loop.call_later(RELEASE_AFTER, release_soon)
            try:
                yield chunk
            finally:
                if timer is not None:
                    timer.cancel()
                if releasing is not None:
                    await releasing
                    releasing = None
    finally:
        if stream is not None:
            await release()


class _SendfileResponse(web.StreamResponse):
    """`count` bytes of an open file from `offset`, sent with the kernel's sendfile (asyncio
    falls back to reads in a thread where it cannot). The file is closed afterwards, also if
    the response is never sent."""

    def __init__(
        self, f: IO[bytes], offset: int, count: int, *, status: int, headers: Mapping[str, str]
    ) -> None:
        super().__init__(status=status, headers=headers)
        self.content_length = count
        self._file = f
        self._offset = offset
        self._count = count
        self._closer = weakref.finalize(self, f.close)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return await super().prepare(request)
        try:
            writer = await super().prepare(request)
            if self._count and not must_be_empty_body(request.method, self.status):
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("Connection lost")
                loop = asyncio.get_running_loop()
                await loop.sendfile(transport, self._file, self._offset, self._count)
            await super().write_eof()
            return writer
        finally:
            # Closed here, not in a thread: a read-only file's close writes nothing, and a close
            # handed to a thread is skipped when the task is cancelled before the thread runs it
            # (a client gone mid-download), which would leak the descriptor.
            self._closer.detach()
            self._file.close()
