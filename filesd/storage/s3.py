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
- PutObject with Content-MD5 (below `multipart_threshold`);
- CreateMultipartUpload / UploadPart (Content-MD5) / CompleteMultipartUpload /
  AbortMultipartUpload (from `multipart_threshold` on; parts of at least 5 MiB);
- GetObject, with a `Range` header for partial reads;
- DeleteObjects (batches of 1000, with Content-MD5), ListObjectsV2 (paginated);
- presigned GET URLs (SigV4 query auth) with `response-content-disposition`.

Nothing newer is relied on: no flexible checksums (x-amz-checksum-*, which GCS and older
Ceph/R2 versions refuse or ignore), no conditional writes, no aws-chunked uploads.

Memory stays bounded: bodies are read from spool files one part at a time, and all the bodies
held for uploads at once stay within `TRANSFER_BYTES` (one body may exceed it alone). Disk work
runs in worker threads, at least `READ_CHUNK` per hop. S3 failures (unreachable endpoint,
refused credentials, a missing bucket, server errors) surface as `StorageUnavailable` naming
`storage.blobs`; a full spool disk as `StorageFull`.

The client is aiobotocore (compared with obstore against one moto server, 200 MiB objects:
put 51-75 vs 67 MB/s, get ~920-960 vs ~560-590 MB/s; obstore cannot add
`response-content-disposition` to a presigned URL, which the downloads need). Presigned URLs
come from a synchronous botocore client beside it, so `download_url` needs no event loop and
does no I/O (see `_refresh_presign_credentials` for credentials that expire).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import math
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, BinaryIO

import botocore.loaders  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from aiohttp import ClientError as HttpClientError
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError  # type: ignore[import-untyped]

from ..models import content_disposition
from .base import BlobMissing, StagedBlob, StorageUnavailable
from .blobdir import READ_CHUNK, DirWriter, HashedFile, _in_thread

SETTING = "storage.blobs"
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's least part size (but for the last part)
MAX_PARTS = 10_000  # S3's most parts in one multipart upload
DELETE_BATCH = 1000  # S3's most keys in one DeleteObjects
# Bodies of uploads held in memory at once, over all transfers (one may exceed it alone).
TRANSFER_BYTES = 64 * 1024 * 1024
# Requests of one call (HEADs of a delete, items of a commit) in flight at once.
CONCURRENCY = 16
# Connections to the endpoint: each download being streamed holds one while its client reads.
MAX_CONNECTIONS = 128
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


class _PastTheEnd(Exception):
    """A range that starts past the end of the object (416)."""


class _ByteBudget:
    """Bounds the bytes of request bodies held in memory at once, over all transfers.

    A body larger than the whole budget is let through alone (when nothing else is held)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        # No await between the check and the clear: a release cannot slip in between.
        while self._used and self._used + size > self._limit:
            self._changed.clear()
            await self._changed.wait()
        self._used += size
        try:
            yield
        finally:
            self._used -= size
            self._changed.set()


def _error_code(error: Exception) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError."""
    response: dict[str, Any] = getattr(error, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _read_with_md5(f: BinaryIO, size: int) -> tuple[bytes, str]:
    """Up to `size` bytes of `f` and their Content-MD5 (blocking: runs in a thread)."""
    data = f.read(size)
    return data, _md5_b64(data)


def _add_delete_md5(request: Any, **_: Any) -> None:
    """DeleteObjects needs Content-MD5 on S3-compatible stores that predate flexible checksums
    (botocore >= 1.36 sends a CRC32 header instead): add it when it is missing."""
    body = request.body
    if isinstance(body, bytes) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = _md5_b64(body)


class S3Blobs:
    """Blobs and upload parts in an S3-compatible bucket, staged through `spool_dir`.

    Implements `filesd.storage.base.BlobBackend`. `endpoint` None (or "") means AWS, or
    `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` when set; credentials None (or "") mean the
    standard AWS chain (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, config files, instance
    roles). Content from `multipart_threshold` bytes on is uploaded in parts of `part_size`
    (more when 10,000 parts would not hold it). `spool_dir` belongs to this backend: every file
    in it at `prepare` is a leftover.
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
        multipart_threshold: int = 16 * 1024 * 1024,
        part_size: int = 16 * 1024 * 1024,
    ) -> None:
        if not bucket:
            raise ValueError("a bucket name is required")
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"part_size must be at least {MIN_PART_BYTES} bytes (S3's minimum)")
        if multipart_threshold < 1:
            raise ValueError("multipart_threshold must be positive")
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
        self._base = f"{self.prefix}/" if self.prefix else ""
        self._budget: _ByteBudget | None = None
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

    async def prepare(self) -> int:
        """Create the spool directory and remove what an interrupted run left in it; open the
        client and check that the bucket exists and answers. Returns how many spool files
        were removed. Raises `StorageUnavailable` (naming `storage.blobs`)."""
        if (self._access_key_id is None) != (self._secret_access_key is None):
            raise StorageUnavailable(
                SETTING, "give both access_key_id and secret_access_key, or neither"
            )
        removed = await _in_thread(self._prepare_spool)
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
        self._budget = None
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
        self._budget = _ByteBudget(TRANSFER_BYTES)  # its event belongs to this loop

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
            connect_timeout=10,
            read_timeout=60,
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

    def _prepare_spool(self) -> int:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        removed = 0
        with os.scandir(self.spool_dir) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    @property
    def _transfers(self) -> _ByteBudget:
        if self._budget is None:
            raise RuntimeError("S3Blobs is not prepared (or closed)")
        return self._budget

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

    def writer(self, max_bytes: int | None = None) -> DirWriter:
        return DirWriter(self.spool_dir / f"{uuid.uuid4().hex}.part", max_bytes, durable=False)

    async def commit(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        """Upload each staged blob unless its digest's object exists (then False), several
        digests at once; items of one digest go one after the other, so only the first can
        be new. The spool files are removed whatever the outcome (a cancel too)."""
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
                    if stored or await self._exists(key):
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
            await asyncio.to_thread(_unlink_all, paths)
        return results

    async def discard(self, staged: Sequence[StagedBlob]) -> None:
        if staged:
            paths = [self.staged_path(item) for item in staged]
            await asyncio.to_thread(_unlink_all, paths)

    async def _exists(self, key: str) -> bool:
        try:
            await self._call("head_object", Key=key)
        except _NoSuchKey:
            return False
        return True

    async def _upload(self, key: str, path: Path, staged: StagedBlob) -> None:
        """Upload the spooled content of `staged` to `key`: one PUT below the multipart
        threshold, else a multipart upload read from the file part by part."""
        if staged.content is not None:
            async with self._transfers.hold(len(staged.content)):
                await self._put(key, staged.content, _md5_b64(staged.content))
            return
        if staged.size < self.multipart_threshold:
            async with self._transfers.hold(staged.size):
                data, md5 = await _in_thread(_read_file_with_md5, path)
                await self._put(key, data, md5)
            return
        f = await _in_thread(_open_read, path)
        try:
            await self._multipart(key, f, staged.size)
        finally:
            await asyncio.to_thread(f.close)

    async def _put(self, key: str, data: bytes, md5: str) -> None:
        await self._call(
            "put_object",
            Key=key,
            Body=data,
            ContentMD5=md5,
            ContentType="application/octet-stream",
        )

    async def _multipart(self, key: str, f: BinaryIO, size: int) -> None:
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        created = await self._call(
            "create_multipart_upload", Key=key, ContentType="application/octet-stream"
        )
        upload_id = created["UploadId"]
        try:
            parts = []
            number = 1
            while True:
                async with self._transfers.hold(part_size):
                    data, md5 = await _in_thread(_read_with_md5, f, part_size)
                    if not data and number > 1:
                        break
                    sent = await self._call(
                        "upload_part",
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        ContentMD5=md5,
                    )
                    del data
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
                number += 1
            await self._call(
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
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
            async for chunk in self._get(key, start, length):
                yield chunk
        except _NoSuchKey:
            raise BlobMissing(digest) from None

    async def _get(self, key: str, start: int, length: int | None) -> AsyncIterator[bytes]:
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

    def local_path(self, digest: str) -> None:
        return None

    # --- listing and removing ----------------------------------------------------------------

    async def delete(self, digests: Sequence[str]) -> int:
        return await self._delete_keys([self.blob_key(d) for d in digests])

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
        return StagedBlob(out.path.name, out.sha256.hexdigest(), out.size), out.md5.hexdigest()

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


def _open_read(path: Path) -> BinaryIO:
    return path.open("rb")


def _read_file_with_md5(path: Path) -> tuple[bytes, str]:
    with path.open("rb", buffering=0) as f:
        return _read_with_md5(f, -1)


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
