"""The S3-compatible blob backend: content-addressed objects in a bucket.

A blob is stored at `<prefix>/blobs/<first two hex>/<sha256>`, an upload part at
`<prefix>/parts/<token>` (a token made here); no key holds anything a client sent. New content
is spooled to a local temp file in `spool_dir` while it is hashed (the same `DirWriter` as the
local backend, without fsync: a crash loses the request anyway, and `prepare` removes what it
left). `commit` then uploads it under its digest, unless an object is there already, and removes
the spool file whatever the outcome. An object under a digest key is so either absent or the
complete bytes of its digest: S3 makes a PUT (or a completed multipart upload) visible whole.

S3 features used, all of them offered alike by AWS S3, Cloudflare R2, the XML API of Google
Cloud Storage (interoperability, HMAC keys) and Ceph RGW:

- HeadBucket (start-up and readiness), HeadObject (does a blob exist, before a PUT or delete);
- PutObject with Content-MD5 (below `multipart_threshold`, 1 GiB by default: S3 takes single
  PUTs up to 5 GiB); a small blob's PUT asks `If-None-Match: *` (a conditional write) to save
  the HEAD before it, and falls back to HEAD + PUT on an endpoint that refuses the condition;
- CreateMultipartUpload / UploadPart (Content-MD5) / CompleteMultipartUpload /
  AbortMultipartUpload (from `multipart_threshold` on; parts of at least 5 MiB, `PART_UPLOADS`
  of them at once);
- GetObject, with a `Range` header for partial reads;
- DeleteObjects (batches of 1000, with Content-MD5), ListObjectsV2 (paginated);
- CopyObject, and UploadPartCopy from `multipart_threshold` on (`filesd fsck --repair` moving a
  corrupt blob to `<prefix>/quarantine/`);
- presigned GET URLs (SigV4 query auth) with `response-content-disposition`.

Nothing newer is relied on: no flexible checksums (x-amz-checksum-*, which GCS and older
Ceph/R2 versions refuse or ignore), no conditional writes that cannot fall back (an endpoint
answering 501 to one is asked no more; one that ignores it overwrites an object with the same
bytes), no aws-chunked uploads.

A PUT's Content-MD5 is hashed while the content is spooled (in a worker thread beside the one
hashing SHA-256), so an upload reads its spool file once, and bytes that changed on the local
disk after staging are refused by S3 (BadDigest) instead of stored under a digest they do not
match. A part's Content-MD5 is hashed from the spool file just before the part is sent.

Memory stays bounded: request bodies are streamed from spool files (aiohttp reads them in worker
threads, 256 KiB at a time); only content small enough to be staged in memory is sent from
memory. Other disk work runs in worker threads too, at least `READ_CHUNK` per hop. S3 failures
(unreachable endpoint, refused credentials, a missing bucket, server errors) surface as
`StorageUnavailable` naming `storage.blobs`; a full spool disk as `StorageFull`.

The client is aiobotocore (compared with obstore against one moto server, 200 MiB objects:
put 51-75 vs 67 MB/s, get ~920-960 vs ~560-590 MB/s; obstore cannot add
`response-content-disposition` to a presigned URL, which the downloads need). Presigned URLs
come from a synchronous botocore client beside it, so `download_url` needs no event loop and
does no I/O (see `_refresh_presign_credentials` for credentials that expire).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import botocore.loaders
import botocore.session
from aiobotocore.session import get_session
from aiohttp import ClientError as HttpClientError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ..models import content_disposition
from .base import BlobMissing, StagedBlob, StorageUnavailable, unique_token
from .blobdir import READ_CHUNK, HashedFile, _in_thread
from .s3_spool import FileSlice, SpoolWriter, b64, md5_b64, range_md5

log = logging.getLogger(__name__)

SETTING = "storage.blobs"
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's least part size (but for the last part)
MAX_PARTS = 10_000  # S3's most parts in one multipart upload
MAX_PUT_BYTES = 5 * 1024**3  # S3's largest single PUT
DELETE_BATCH = 1000  # S3's most keys in one DeleteObjects
# One PUT up to this size: filesd's default `max_file_bytes` (512 MiB) is below it, so only
# content assembled from upload parts (up to 8 GiB) goes up in parts. A single PUT costs the
# store the least (a multipart upload is assembled once more at its end) and needs no listing
# of unfinished uploads when an instance dies mid-upload.
MULTIPART_THRESHOLD = 1024**3
PART_BYTES = 16 * 1024 * 1024
# Parts of one multipart upload sent at once (each streamed from the spool file).
PART_UPLOADS = 4
# Requests of one call (HEADs of a delete, items of a commit) in flight at once.
CONCURRENCY = 16
# Connections to the endpoint: each download being streamed holds one while its client reads.
MAX_CONNECTIONS = 128
# Seconds to connect, and without a byte from the endpoint (botocore's connect_timeout and
# read_timeout); a request body must move on within the same time (see `S3Blobs._send`).
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# More digests than this are checked by `missing` with one listing instead of a HEAD each.
LIST_INSTEAD_OF_HEAD = 1000
# SigV4 presigned URLs live at most 7 days.
MAX_URL_SECONDS = 7 * 24 * 3600

_DIGEST = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_STAGED_REF = re.compile(r"[0-9a-f]{32}\.part")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_REFUSED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
)


class _NoSuchKey(Exception):
    """The object asked for is not there (404)."""


class _Exists(Exception):
    """A conditional PUT (If-None-Match: *) found the object there already (412)."""


class _ConditionNotTaken(Exception):
    """A conditional PUT neither stored nor found the object: the endpoint does not support
    the condition (501), or a concurrent conditional write of the key conflicted (409)."""

    def __init__(self, key: str, *, unsupported: bool) -> None:
        super().__init__(key)
        self.unsupported = unsupported


class _PastTheEnd(Exception):
    """A range that starts past the end of the object (416)."""


def _error_code(error: Exception) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError."""
    response: dict[str, Any] = getattr(error, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


async def _all_or_first_error(calls: Sequence[Awaitable[None]]) -> None:
    """Run `calls` at once until all end; the first to fail cancels the others, and its
    error is raised once they ended (a cancel of the caller cancels them all, too)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _add_delete_md5(request: Any, **_: Any) -> None:
    """DeleteObjects needs Content-MD5 on S3-compatible stores that predate flexible checksums
    (botocore >= 1.36 sends a CRC32 header instead): add it when it is missing."""
    body = request.body
    if isinstance(body, bytes) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = md5_b64(body)


class S3Blobs:
    """Blobs and upload parts in an S3-compatible bucket, staged through `spool_dir`.

    Implements `filesd.storage.base.BlobBackend`. `endpoint` None (or "") means AWS, or
    `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` when set; credentials None (or "") mean the
    standard AWS chain (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, config files, instance
    roles). Content below `multipart_threshold` bytes (at most 5 GiB) is uploaded in one PUT,
    larger content in parts of `part_size` (more when 10,000 parts would not hold it),
    `part_uploads` at once. `connect_timeout` and `read_timeout` (seconds) bound how long the
    endpoint may take to accept a connection, to send a byte of an answer, or to take the next
    piece of a request body. `spool_dir` belongs to this backend: every file in it at `prepare`
    is a leftover.
    """

    def __init__(
        self,
        spool_dir: Path,
        *,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_BYTES,
        part_uploads: int = PART_UPLOADS,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        if not bucket:
            raise ValueError("a bucket name is required")
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"part_size must be at least {MIN_PART_BYTES} bytes (S3's minimum)")
        if not 1 <= multipart_threshold <= MAX_PUT_BYTES + 1:
            raise ValueError(
                f"multipart_threshold must be from 1 to {MAX_PUT_BYTES + 1} (S3's largest PUT)"
            )
        if part_uploads < 1:
            raise ValueError("part_uploads must be positive")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.spool_dir = spool_dir
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = (
            endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self.region = region or "us-east-1"
        self._access_key_id = access_key_id or None
        self._secret_access_key = secret_access_key or None
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.part_uploads = part_uploads
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._base = f"{self.prefix}/" if self.prefix else ""
        # MD5s of spooled content (staged ref -> digest), from the writer to the upload; an
        # entry lives as long as its spool file (`commit`, `discard`, `save_part`, `prepare`).
        self._md5s: dict[str, bytes] = {}
        # Cleared for good once the endpoint answers that it does not do conditional PUTs.
        self._conditional_puts = True
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._presigner: Any = None
        self._presign_session: Any = None

    # --- keys --------------------------------------------------------------------------------

    def blob_key(self, digest: str) -> str:
        """The key of the blob with this digest (which need not exist)."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError("not a lowercase hex SHA-256 digest")
        return f"{self._base}blobs/{digest[:2]}/{digest}"

    def part_key(self, token: str) -> str:
        if not _TOKEN.fullmatch(token):
            raise ValueError("not a part token")
        return f"{self._base}parts/{token}"

    def staged_path(self, staged: StagedBlob) -> Path:
        if not _STAGED_REF.fullmatch(staged.ref):
            raise ValueError("not a staged blob of this backend")
        return self.spool_dir / staged.ref

    # --- life cycle --------------------------------------------------------------------------

    async def prepare(self, *, clean: bool = True) -> int:
        """Create the spool directory and (with `clean`) remove what an interrupted run left
        in it; open the client and check that the bucket exists and answers. Returns how many
        spool files were removed. Raises `StorageUnavailable` (naming `storage.blobs`)."""
        if (self._access_key_id is None) != (self._secret_access_key is None):
            raise StorageUnavailable(
                SETTING, "give both access_key_id and secret_access_key, or neither"
            )
        removed = await _in_thread(self._prepare_spool, clean)
        self._md5s.clear()
        if self._client is None:
            await self._open_client()
        try:
            await self._head_bucket()
        except BaseException:
            await self.close()
            raise
        return removed

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        presigner, self._presigner = self._presigner, None
        self._client = None
        self._presign_session = None
        if presigner is not None:
            presigner.close()
        if stack is not None:
            await stack.aclose()

    async def _open_client(self) -> None:
        # The presigning client first, in a thread: making it reads botocore's JSON models,
        # which the shared loader then holds for the async client made on the loop.
        presigner, presign_session = await asyncio.to_thread(self._make_presigner)
        session = get_session()
        session.register_component("data_loader", _shared_loader(session))
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                session.create_client("s3", **self._client_args())
            )
            client.meta.events.register("before-sign.s3.DeleteObjects", _add_delete_md5)
        except BaseException:
            await stack.aclose()
            presigner.close()
            raise
        self._presigner, self._presign_session = presigner, presign_session
        self._client, self._stack = client, stack

    def _client_args(self) -> dict[str, Any]:
        config = Config(
            signature_version="s3v4",
            # Path-style URLs work on every S3-compatible endpoint (an IP address, localhost);
            # AWS itself gets its preferred (virtual-hosted) style.
            s3={
                "addressing_style": "path" if self.endpoint else "auto",
                # Bodies are checked by Content-MD5 (hashed in the reading thread); SHA-256
                # signing would hash every body again, on the event loop.
                "payload_signing_enabled": False,
            },
            # Flexible checksums (botocore >= 1.36 default) break several S3-compatible stores.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=MAX_CONNECTIONS,
        )
        return {
            "region_name": self.region,
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self._access_key_id,
            "aws_secret_access_key": self._secret_access_key,
            "config": config,
        }

    def _make_presigner(self) -> tuple[Any, Any]:
        """A synchronous botocore client, used only to presign URLs (no I/O for that)."""
        session = botocore.session.get_session()
        session.register_component("data_loader", _shared_loader(session))
        client = session.create_client("s3", **self._client_args())
        return client, session

    def _refresh_presign_credentials(self) -> None:
        """Let the presigning client's credentials refresh now if they are about to expire
        (instance roles, SSO): blocking, so it runs in a thread from `prepare` and
        `check_writable` (readiness probes), keeping that I/O out of `download_url`."""
        session = self._presign_session
        if session is None or self._access_key_id is not None:
            return
        credentials = session.get_credentials()
        if credentials is not None:
            credentials.get_frozen_credentials()

    def _prepare_spool(self, clean: bool = True) -> int:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        return self._remove_leftovers_sync(self._leftovers_sync()) if clean else 0

    def _leftovers_sync(self) -> list[str]:
        with os.scandir(self.spool_dir) as it:
            return sorted(e.name for e in it if e.is_file(follow_symlinks=False))

    def _remove_leftovers_sync(self, names: Sequence[str]) -> int:
        removed = 0
        for name in names:
            if "/" in name or name in (".", ".."):
                raise ValueError("not a spool file of this backend")
            try:
                os.unlink(self.spool_dir / name)
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    async def leftovers(self) -> list[str]:
        return await _in_thread(self._leftovers_sync)

    async def remove_leftovers(self, names: Sequence[str]) -> int:
        return await _in_thread(self._remove_leftovers_sync, names)

    @property
    def _s3(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Blobs is not prepared (or closed)")
        return self._client

    # --- errors ------------------------------------------------------------------------------

    def _unavailable(self, error: Exception) -> StorageUnavailable:
        """The neutral error for a failed S3 call (messages name no secret)."""
        code, status = _error_code(error)
        if code == "NoSuchBucket":
            message = f"bucket {self.bucket!r} does not exist"
        elif code in _REFUSED or status == 403:
            message = (
                f"access to bucket {self.bucket!r} was refused ({code or status}): "
                "check the credentials and their permissions"
            )
        elif code or status:
            message = f"bucket {self.bucket!r}: S3 error {code or '?'} (HTTP {status})"
        elif isinstance(error, NoCredentialsError):
            message = (
                "no S3 credentials found: set storage.s3.access_key_id and secret_access_key, "
                "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        elif isinstance(error, BotoCoreError):
            message = f"cannot reach the S3 endpoint: {error}"
        else:
            message = f"S3 request failed: {type(error).__name__}: {error}"
        unavailable = StorageUnavailable(SETTING, message)
        unavailable.__cause__ = error
        return unavailable

    async def _call(self, operation: str, **params: Any) -> Any:
        """One S3 call: `_NoSuchKey` for a 404 on an object, `StorageUnavailable` for any
        other failure."""
        try:
            return await getattr(self._s3, operation)(Bucket=self.bucket, **params)
        except ClientError as error:
            code, status = _error_code(error)
            if code != "NoSuchBucket" and (code in _NOT_FOUND or status == 404):
                raise _NoSuchKey(params.get("Key", "")) from None
            if status == 416:
                raise _PastTheEnd(params.get("Key", "")) from None
            if "IfNoneMatch" in params:
                if status == 412:
                    raise _Exists(params.get("Key", "")) from None
                if status in (409, 501) or code == "NotImplemented":
                    unsupported = status != 409
                    raise _ConditionNotTaken(params["Key"], unsupported=unsupported) from None
            raise self._unavailable(error) from error
        except (BotoCoreError, HttpClientError, TimeoutError) as error:
            raise self._unavailable(error) from error

    async def _head_bucket(self) -> None:
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            code, status = _error_code(error)
            if code in ("404", "NoSuchBucket", "NotFound") or status == 404:
                raise StorageUnavailable(
                    SETTING, f"bucket {self.bucket!r} does not exist"
                ) from error
            raise self._unavailable(error) from error
        except (BotoCoreError, HttpClientError, TimeoutError) as error:
            raise self._unavailable(error) from error

    # --- staging and committing --------------------------------------------------------------

    def writer(self, max_bytes: int | None = None) -> SpoolWriter:
        return SpoolWriter(self.spool_dir / f"{unique_token()}.part", max_bytes, self._md5s)

    async def commit(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        """Upload each staged blob unless its digest's object exists (then False), several
        digests at once; items of one digest go one after the other, so only the first can
        be new. The spool files are removed whatever the outcome (a cancel too).

        A small blob (its content kept in memory) is put with If-None-Match: *, which stores
        it only if the object is not there: one request instead of a HEAD and a PUT, which
        cost alike (a round trip and botocore's CPU each). An endpoint that ignores the
        condition overwrites the object with the same bytes (it is named by their digest).
        """
        slots = asyncio.Semaphore(CONCURRENCY)
        results: list[bool | Exception] = [False] * len(staged)
        by_digest: dict[str, list[int]] = {}
        for i, item in enumerate(staged):
            by_digest.setdefault(item.sha256, []).append(i)

        async def one(item: StagedBlob, stored: bool) -> bool:
            path = self.staged_path(item)
            try:
                key = self.blob_key(item.sha256)
                async with slots:
                    if stored:
                        return False
                    if item.content is not None and self._conditional_puts:
                        try:
                            return await self._put_new(key, item)
                        except _ConditionNotTaken as refused:
                            if refused.unsupported:
                                self._conditional_puts = False
                                log.warning(
                                    "the S3 endpoint does not take conditional PUTs "
                                    "(If-None-Match): small blobs go up as HEAD + PUT"
                                )
                    if await self._exists(key):
                        return False
                    await self._upload(key, path, item)
                return True
            finally:
                await asyncio.to_thread(path.unlink, missing_ok=True)

        async def digest_group(indexes: list[int]) -> None:
            stored = False
            for i in indexes:
                try:
                    results[i] = await one(staged[i], stored)
                except Exception as error:
                    results[i] = error
                else:
                    stored = True

        try:
            await asyncio.gather(*(digest_group(g) for g in by_digest.values()))
        finally:
            # Items a cancel kept from their turn still had spool files.
            paths = [self.spool_dir / s.ref for s in staged if _STAGED_REF.fullmatch(s.ref)]
            self._forget_md5s(staged)
            await asyncio.to_thread(_unlink_all, paths)
        return results

    async def discard(self, staged: Sequence[StagedBlob]) -> None:
        if staged:
            paths = [self.staged_path(item) for item in staged]
            self._forget_md5s(staged)
            await asyncio.to_thread(_unlink_all, paths)

    def _forget_md5s(self, staged: Sequence[StagedBlob]) -> None:
        for item in staged:
            self._md5s.pop(item.ref, None)

    async def _exists(self, key: str) -> bool:
        try:
            await self._call("head_object", Key=key)
        except _NoSuchKey:
            return False
        return True

    async def _put_new(self, key: str, staged: StagedBlob) -> bool:
        """PUT a small blob's content unless the object exists; whether it was stored.
        Raises `_ConditionNotTaken` when the endpoint would not decide (then HEAD + PUT)."""
        assert staged.content is not None
        md5 = self._md5s.get(staged.ref)
        content = staged.content
        try:
            await self._put(
                key, content, b64(md5) if md5 else md5_b64(content), len(content), new=True
            )
        except _Exists:
            return False
        return True

    async def _upload(self, key: str, path: Path, staged: StagedBlob) -> None:
        """Upload the spooled content of `staged` to `key`: one PUT below the multipart
        threshold (from memory if the writer kept the content, else streamed from the file),
        else a multipart upload of slices of the file."""
        md5 = self._md5s.get(staged.ref)
        if staged.content is not None:
            content = staged.content
            await self._put(key, content, b64(md5) if md5 else md5_b64(content), len(content))
            return
        fd = await _in_thread(_open_fd, path)
        try:
            size = staged.size
            if size < self.multipart_threshold:
                if md5 is None:  # staged elsewhere (not by this backend's writer)
                    md5 = await _in_thread(range_md5, fd, 0, size)
                await self._put(key, FileSlice(fd, 0, size), b64(md5), size)
            else:
                await self._multipart(key, fd, size)
        finally:
            # Not in a thread: closing a read-only descriptor writes nothing, and a close handed
            # to a thread is skipped when a cancel comes first, leaking the descriptor. (A read
            # of a cancelled request may still be running in a worker thread: it fails, or
            # reads bytes nobody sends.)
            os.close(fd)

    async def _send(self, operation: str, body: bytes | FileSlice, **params: Any) -> Any:
        """`_call` of an operation with a request body, which fails (`StorageUnavailable`) once
        the endpoint took none of the body for `read_timeout` seconds: aiohttp's read timeout
        starts only once a request is sent, so an endpoint that stops reading a body, or never
        answers its `Expect: 100-continue` (botocore asks for one on every PUT), would hold the
        request forever. A body in memory is handed over at once: it has that long in all."""
        slice_ = body if isinstance(body, FileSlice) else None
        started = time.monotonic()
        call = asyncio.ensure_future(self._call(operation, Body=body, **params))
        try:
            while True:
                moved = started if slice_ is None else max(started, slice_.progress)
                left = moved + self.read_timeout - time.monotonic()
                if left <= 0:
                    raise StorageUnavailable(
                        SETTING,
                        f"bucket {self.bucket!r}: the S3 endpoint took no more of a request "
                        f"body, and gave no answer, for {self.read_timeout:g} s",
                    )
                done, _ = await asyncio.wait([call], timeout=left)
                if done:
                    return call.result()
        finally:
            if not call.done():
                call.cancel()
                await asyncio.wait([call])

    async def _put(
        self, key: str, body: bytes | FileSlice, md5: str, size: int, *, new: bool = False
    ) -> None:
        """PUT an object; with `new`, only if it is not there (else `_Exists`)."""
        await self._send(
            "put_object",
            body,
            Key=key,
            ContentLength=size,
            ContentMD5=md5,
            ContentType="application/octet-stream",
            **({"IfNoneMatch": "*"} if new else {}),
        )

    async def _multipart(self, key: str, fd: int, size: int) -> None:
        """Upload `size` bytes of `fd` in parts, `part_uploads` at once, each streamed from
        the file after its MD5 was hashed from it (in a worker thread)."""
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        count = max(1, math.ceil(size / part_size))
        created = await self._call(
            "create_multipart_upload", Key=key, ContentType="application/octet-stream"
        )
        upload_id = created["UploadId"]
        etags: dict[int, str] = {}
        numbers = iter(range(1, count + 1))

        async def send_parts() -> None:
            for number in numbers:  # shared: each sender takes the next part left
                start = (number - 1) * part_size
                length = min(part_size, size - start)
                md5 = await _in_thread(range_md5, fd, start, length)
                sent = await self._send(
                    "upload_part",
                    FileSlice(fd, start, length),
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    ContentLength=length,
                    ContentMD5=b64(md5),
                )
                etags[number] = sent["ETag"]

        try:
            await _all_or_first_error([send_parts() for _ in range(min(self.part_uploads, count))])
            await self._call(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in range(1, count + 1)]
                },
            )
        except BaseException:
            # Left alone, an unfinished upload's parts are kept (and billed) by the store.
            with contextlib.suppress(Exception):
                await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
            raise

    # --- reading -----------------------------------------------------------------------------

    def download_url(self, digest: str, *, filename: str, expires_in: int) -> str:
        """A presigned GET of the blob, answered with `Content-Disposition: attachment` naming
        `filename`, valid `expires_in` seconds (1 s to 7 days). No I/O."""
        if self._presigner is None:
            raise RuntimeError("S3Blobs is not prepared (or closed)")
        url: str = self._presigner.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.blob_key(digest),
                "ResponseContentDisposition": content_disposition(filename),
            },
            ExpiresIn=min(max(1, expires_in), MAX_URL_SECONDS),
        )
        return url

    async def read(self, digest: str) -> bytes:
        return b"".join([chunk async for chunk in self.open_range(digest)])

    async def open_range(
        self, digest: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.blob_key(digest)
        try:
            # Closed with this one: the object's body (a pooled connection) at once.
            async with contextlib.aclosing(self._get(key, start, length)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except _NoSuchKey:
            raise BlobMissing(digest) from None

    async def _get(self, key: str, start: int, length: int | None) -> AsyncGenerator[bytes, None]:
        """`length` bytes (None: to the end) of an object from `start`, streamed; nothing when
        `start` is past the end. Raises `_NoSuchKey` first if it is not there."""
        if length == 0:
            await self._call("head_object", Key=key)
            return
        params: dict[str, Any] = {}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            params["Range"] = f"bytes={start}-{end}"
        try:
            response = await self._call("get_object", Key=key, **params)
        except _PastTheEnd:
            return
        body = response["Body"]
        # A server that ignores Range answers 200 with everything: cut the range out here.
        skip = start if params and response["ResponseMetadata"]["HTTPStatusCode"] == 200 else 0
        left = length
        try:
            while left is None or left > 0:
                chunk = await self._read_body(body, READ_CHUNK)
                if not chunk:
                    break
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                if left is not None:
                    chunk = chunk[:left]
                    left -= len(chunk)
                yield chunk
        finally:
            body.close()

    async def _read_body(self, body: Any, size: int) -> bytes:
        try:
            chunk: bytes = await body.read(size)
        except (BotoCoreError, HttpClientError, TimeoutError) as error:
            raise self._unavailable(error) from error
        return chunk

    async def open_local(self, digest: str) -> None:
        return None

    # --- listing and removing ----------------------------------------------------------------

    async def delete(self, digests: Sequence[str]) -> int:
        return await self._delete_keys([self.blob_key(d) for d in digests])

    async def quarantine(self, digests: Sequence[str]) -> None:
        """Copy each blob to `<prefix>/quarantine/<digest>` (kept for a look, never served),
        then delete it from under its digest. The copy is made inside the store (nothing
        crosses this process), in parts as uploads are (S3 copies at most 5 GiB at once)."""
        for digest in digests:
            source = self.blob_key(digest)
            target = f"{self._base}quarantine/{digest}"
            try:
                size = int((await self._call("head_object", Key=source))["ContentLength"])
                if size < self.multipart_threshold:
                    await self._call(
                        "copy_object",
                        Key=target,
                        CopySource={"Bucket": self.bucket, "Key": source},
                    )
                else:
                    await self._copy_in_parts(source, target, size)
            except _NoSuchKey:
                continue
        await self.delete(digests)

    async def _copy_in_parts(self, source: str, target: str, size: int) -> None:
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        count = math.ceil(size / part_size)
        created = await self._call(
            "create_multipart_upload", Key=target, ContentType="application/octet-stream"
        )
        upload_id = created["UploadId"]
        try:
            etags = []
            for number in range(1, count + 1):
                start = (number - 1) * part_size
                end = min(size, start + part_size) - 1
                copied = await self._call(
                    "upload_part_copy",
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={start}-{end}",
                )
                etags.append(copied["CopyPartResult"]["ETag"])
            await self._call(
                "complete_multipart_upload",
                Key=target,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
                },
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._call("abort_multipart_upload", Key=target, UploadId=upload_id)
            raise

    async def digests(self) -> list[str]:
        found = []
        async for key, _ in self._objects(f"{self._base}blobs/"):
            fan_out, _, name = key.rpartition("/")
            if _DIGEST.fullmatch(name) and fan_out.endswith(f"/{name[:2]}"):
                found.append(name)
        return found

    async def missing(self, digests: Sequence[str]) -> set[str]:
        wanted = set(digests)
        for digest in wanted:
            self.blob_key(digest)  # only digests
        if len(wanted) > LIST_INSTEAD_OF_HEAD:
            return wanted - set(await self.digests())
        present = await self._bounded(
            [self._exists(self.blob_key(d)) for d in sorted(wanted)], CONCURRENCY
        )
        return {d for d, there in zip(sorted(wanted), present, strict=True) if not there}

    async def check_writable(self) -> None:
        """Raise unless new content can be staged now: a probe file is written and removed in
        the spool directory (local room: `StorageFull` when it is full), and the bucket is
        HEADed (the endpoint answers, the credentials are accepted, the bucket exists:
        else `StorageUnavailable`). Write permission on the bucket is not probed: a test
        write on every readiness check would leave objects (or versions) behind."""
        await _in_thread(self._probe_spool)
        await self._head_bucket()
        await asyncio.to_thread(self._refresh_presign_credentials)

    def _probe_spool(self) -> None:
        probe = HashedFile(self.spool_dir / f"{uuid.uuid4().hex}.ready", durable=False)
        try:
            probe.write(b"ok")
            probe.close()
        finally:
            probe.abort()

    async def _delete_keys(self, keys: Sequence[str]) -> int:
        """Remove objects; returns how many were there (HEADed first: DeleteObjects reports
        a key that was not there as deleted too)."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        there = await self._bounded([self._exists(k) for k in unique], CONCURRENCY)
        existing = [k for k, present in zip(unique, there, strict=True) if present]
        for i in range(0, len(existing), DELETE_BATCH):
            batch = existing[i : i + DELETE_BATCH]
            answer = await self._call(
                "delete_objects",
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageUnavailable(
                    SETTING,
                    f"bucket {self.bucket!r}: {len(errors)} object(s) not deleted "
                    f"({first.get('Code', '?')}: {first.get('Message', '')})",
                )
        return len(existing)

    async def _objects(self, prefix: str) -> AsyncIterator[tuple[str, float]]:
        """(key, last modified as Unix time) of every object under `prefix`, a page (up to
        1000) at a time."""
        paginator = self._s3.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix).__aiter__()
        while True:
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                return
            except (ClientError, BotoCoreError, HttpClientError, TimeoutError) as error:
                raise self._unavailable(error) from error
            for item in page.get("Contents", ()):
                yield item["Key"], item["LastModified"].timestamp()

    @staticmethod
    async def _bounded(calls: Sequence[Awaitable[bool]], limit: int) -> list[bool]:
        slots = asyncio.Semaphore(limit)

        async def run(call: Awaitable[bool]) -> bool:
            async with slots:
                return await call

        return list(await asyncio.gather(*(run(c) for c in calls)))

    # --- upload parts ------------------------------------------------------------------------

    async def save_part(self, staged: StagedBlob) -> str:
        token = uuid.uuid4().hex
        path = self.staged_path(staged)
        try:
            await self._upload(self.part_key(token), path, staged)
        finally:
            self._forget_md5s([staged])
            await asyncio.to_thread(path.unlink, missing_ok=True)
        return token

    async def remove_parts(self, tokens: Sequence[str]) -> int:
        return await self._delete_keys([self.part_key(t) for t in tokens])

    async def part_tokens_older_than(self, cutoff: float) -> list[str]:
        """Tokens of the parts whose objects were last modified before `cutoff` (Unix time).

        LastModified is the object store's clock, not this machine's; SigV4 refuses requests
        from a clock more than 15 minutes off, which bounds the difference."""
        base = f"{self._base}parts/"
        return [
            key[len(base) :]
            async for key, modified in self._objects(base)
            if _TOKEN.fullmatch(key[len(base) :]) and modified < cutoff
        ]

    async def concat_parts(self, tokens: Sequence[str]) -> tuple[StagedBlob, str]:
        """Stream the parts, in order, into a new spool file, hashing SHA-256 and MD5. Raises
        `FileNotFoundError` when a part is gone (as the local backend does)."""
        out = HashedFile(self.spool_dir / f"{uuid.uuid4().hex}.part", md5=True, durable=False)
        try:
            await self._each_part_batch(tokens, out.write)
            await _in_thread(out.close)
        except BaseException:
            await asyncio.to_thread(out.abort)
            raise
        assert out.md5 is not None
        joined = StagedBlob(out.path.name, out.sha256.hexdigest(), out.size)
        self._md5s[joined.ref] = out.md5.digest()
        return joined, out.md5.hexdigest()

    async def parts_md5(self, tokens: Sequence[str]) -> str:
        md5 = hashlib.md5(usedforsecurity=False)
        await self._each_part_batch(tokens, md5.update)
        return md5.hexdigest()

    async def _each_part_batch(self, tokens: Sequence[str], use: Callable[[bytes], Any]) -> None:
        """Hand the bytes of the parts, in order, to `use` in a worker thread, in batches of
        at least READ_CHUNK (while the next batch is being read from the network)."""
        keys = [self.part_key(t) for t in tokens]
        pending: asyncio.Future[Any] | None = None
        batch: list[bytes] = []
        batch_bytes = 0

        def consume(chunks: list[bytes]) -> None:
            for chunk in chunks:
                use(chunk)

        try:
            for key in keys:
                try:
                    async for chunk in self._get(key, 0, None):
                        batch.append(chunk)
                        batch_bytes += len(chunk)
                        if batch_bytes >= READ_CHUNK:
                            if pending is not None:
                                await pending
                            pending = asyncio.ensure_future(_in_thread(consume, batch))
                            batch, batch_bytes = [], 0
                except _NoSuchKey:
                    raise FileNotFoundError(
                        errno.ENOENT, "upload part is missing", key.rsplit("/", 1)[-1]
                    ) from None
            if pending is not None:
                await pending
                pending = None
            await _in_thread(consume, batch)
        finally:
            if pending is not None:  # the thread may still be using the file: let it end
                await asyncio.wait([pending])


_loader: Any = None
_loader_lock = threading.Lock()


def _shared_loader(session: Any) -> Any:
    """One botocore data loader for every client of the process: it caches the JSON models
    it reads, so only the first client pays for reading them."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader(session.get_config_variable("data_path"))
        return _loader


def _open_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
