"""The blob backends through their `BlobBackend` protocol, without HTTP: the contract tests run
against the local `BlobDir` and against `S3Blobs` on a real (moto) S3 server; then what only
one of them has (file paths and modes; keys, multipart uploads, presigned URLs)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import math
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from filesd.models import content_disposition
from filesd.storage.base import (
    BlobBackend,
    BlobMissing,
    BlobTooLarge,
    StagedBlob,
    StorageFull,
    StorageUnavailable,
    neutral_os_error,
)
from filesd.storage.blobdir import BATCH_BYTES, BlobDir, fsync_dir
from filesd.storage.cached import CachedBlobs
from filesd.storage.s3 import MIN_PART_BYTES, S3Blobs
from filesd.storage.s3_spool import FileSlice

from .conftest import wait_until
from .s3_service import S3Bucket

Backend = BlobDir | S3Blobs
PREFIX = "tenant/filesd"
MiB = 1024 * 1024


def s3_blobs(bucket: S3Bucket, spool: Path, **options: object) -> S3Blobs:
    settings: dict[str, object] = {"prefix": PREFIX, **options}
    return S3Blobs(
        spool,
        bucket=bucket.bucket,
        endpoint=bucket.endpoint,
        region=bucket.region,
        access_key_id=bucket.access_key_id,
        secret_access_key=bucket.secret_access_key,
        **settings,  # type: ignore[arg-type]
    )


@pytest.fixture
async def local(tmp_path: Path) -> BlobDir:
    store = BlobDir(tmp_path)
    await store.prepare()
    return store


@pytest.fixture
async def s3(s3_bucket: S3Bucket, tmp_path: Path) -> AsyncIterator[S3Blobs]:
    store = s3_blobs(s3_bucket, tmp_path / "spool")
    await store.prepare()
    yield store
    await store.close()


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn (the S3 one on a fresh bucket of the session's moto server)."""
    backend: Backend = request.getfixturevalue(request.param)
    return backend


def staging(blobs: Backend) -> list[str]:
    """The names in the backend's local staging area (temp dir / spool dir)."""
    return os.listdir(blobs.temp_dir if isinstance(blobs, BlobDir) else blobs.spool_dir)


async def write(
    blobs: BlobBackend, chunks: list[bytes], max_bytes: int | None = None
) -> StagedBlob:
    writer = blobs.writer(max_bytes)
    for chunk in chunks:
        await writer.write(chunk)
    return await writer.finish()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


async def read_all(
    blobs: BlobBackend, digest: str, start: int = 0, length: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in blobs.open_range(digest, start, length)])


# --- the BlobBackend contract, for every backend ---------------------------------------------


async def test_streamed_content_is_hashed_and_staged(blobs: Backend) -> None:
    # Odd-sized chunks spanning several batches: the digest covers every byte in order.
    chunks = [os.urandom(300_001) for _ in range(8)]
    staged = await write(blobs, chunks)
    content = b"".join(chunks)
    assert staged.size == len(content) > 2 * BATCH_BYTES
    assert staged.sha256 == hashlib.sha256(content).hexdigest()
    assert staged.content is None  # too large to keep in memory
    assert blobs.staged_path(staged).read_bytes() == content
    assert await blobs.commit([staged]) == [True]
    assert staging(blobs) == []
    assert await read_all(blobs, staged.sha256) == content
    assert await read_all(blobs, staged.sha256, 1_000_000, 5) == content[1_000_000:1_000_005]
    assert await read_all(blobs, staged.sha256, len(content) - 3) == content[-3:]


async def test_ranges_at_the_edges(blobs: Backend) -> None:
    staged = await write(blobs, [b"0123456789"])
    await blobs.commit([staged])
    digest = staged.sha256
    assert await read_all(blobs, digest, 0, 10) == b"0123456789"
    assert await read_all(blobs, digest, 9) == b"9"
    assert await read_all(blobs, digest, 8, 100) == b"89"  # a length past the end is cut
    assert await read_all(blobs, digest, 10) == b""  # from the end: nothing
    assert await read_all(blobs, digest, 50, 5) == b""  # past the end: nothing
    assert await read_all(blobs, digest, 3, 0) == b""
    assert await blobs.read(digest) == b"0123456789"


async def test_empty_content_is_a_valid_blob(blobs: Backend) -> None:
    staged = await write(blobs, [])
    assert staged.size == 0 and staged.content == b""
    assert staged.sha256 == hashlib.sha256(b"").hexdigest()
    assert await blobs.commit([staged]) == [True]
    assert await blobs.read(staged.sha256) == b""
    assert await read_all(blobs, staged.sha256) == b""
    assert await read_all(blobs, staged.sha256, 0, 5) == b""


async def test_identical_content_is_stored_once(blobs: Backend) -> None:
    first = await write(blobs, [b"same"])
    second = await write(blobs, [b"sa", b"me"])
    assert await blobs.commit([first, second]) == [True, False]
    assert await blobs.commit([await write(blobs, [b"same"])]) == [False]
    assert await blobs.digests() == [first.sha256]
    assert staging(blobs) == []


async def test_commit_answers_per_item(blobs: Backend) -> None:
    good = [await write(blobs, [bytes([i]) * 100]) for i in range(5)]
    foreign = StagedBlob("../../etc/passwd", "0" * 64, 0)  # not this backend's staging
    results = await blobs.commit([*good[:2], foreign, *good[2:]])
    assert results[:2] == [True, True] and results[3:] == [True, True, True]
    assert isinstance(results[2], ValueError)
    assert sorted(await blobs.digests()) == sorted(s.sha256 for s in good)
    assert staging(blobs) == []


async def test_writer_refuses_content_over_its_limit(blobs: Backend) -> None:
    writer = blobs.writer(max_bytes=10)
    await writer.write(b"0123456789")
    with pytest.raises(BlobTooLarge) as info:
        await writer.write(b"x")
    assert info.value.limit == 10
    await writer.abort()
    assert staging(blobs) == []


async def test_abort_removes_the_temp_file_at_any_point(blobs: Backend) -> None:
    writer = blobs.writer()
    await writer.write(os.urandom(BATCH_BYTES + 1))  # a batch is being written in a thread
    await writer.abort()
    assert staging(blobs) == []
    with pytest.raises(RuntimeError):
        await writer.write(b"more")


async def test_discard_removes_staged_content(blobs: Backend) -> None:
    staged = await write(blobs, [b"never mind"])
    await blobs.discard([staged])
    assert staging(blobs) == [] and await blobs.digests() == []


async def test_prepare_removes_leftover_temp_files(blobs: Backend) -> None:
    await write(blobs, [b"interrupted"])  # staged, never committed: a crash left it
    assert await blobs.prepare() == 1
    assert staging(blobs) == []


async def test_delete_missing_and_stray_names(
    blobs: Backend, request: pytest.FixtureRequest
) -> None:
    staged = await write(blobs, [b"x"])
    await blobs.commit([staged])
    digest = staged.sha256
    if isinstance(blobs, BlobDir):
        (blobs.blob_dir / "README").write_text("not a blob")
        (blobs.path_for(digest).parent / "junk").write_text("not a blob")
    else:
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        client = bucket.client()
        for stray in ("blobs/README", f"blobs/{digest[:2]}/junk", f"blobs/zz/{digest}"):
            client.put_object(Bucket=bucket.bucket, Key=f"{PREFIX}/{stray}", Body=b"not a blob")
        client.close()
    assert await blobs.digests() == [digest]
    assert await blobs.missing([digest, "0" * 64]) == {"0" * 64}
    assert await blobs.delete([digest, digest]) == 1
    assert await blobs.delete([digest]) == 0
    assert await blobs.digests() == []
    assert await blobs.missing([digest]) == {digest}
    with pytest.raises(BlobMissing):
        await blobs.read(digest)
    stream = blobs.open_range(digest)  # nothing happens before the first iteration
    with pytest.raises(BlobMissing):
        await stream.__anext__()
    with pytest.raises(BlobMissing):
        await read_all(blobs, digest, 0, 0)


async def test_parts_are_saved_joined_and_removed(blobs: Backend) -> None:
    tokens = [await blobs.save_part(await write(blobs, [chunk])) for chunk in (b"ab", b"", b"cd")]
    assert staging(blobs) == []
    assert sorted(await blobs.part_tokens_older_than(10**10)) == sorted(tokens)
    assert await blobs.part_tokens_older_than(time.time() - 3600) == []
    joined, md5 = await blobs.concat_parts(tokens)
    assert joined.size == 4 and joined.sha256 == hashlib.sha256(b"abcd").hexdigest()
    assert md5 == md5_hex(b"abcd")
    assert await blobs.parts_md5(tokens[::-1]) == md5_hex(b"cdab")
    assert await blobs.commit([joined]) == [True]
    assert await blobs.read(joined.sha256) == b"abcd"
    assert await blobs.remove_parts(tokens) == 3
    assert await blobs.remove_parts(tokens) == 0
    assert await blobs.part_tokens_older_than(math.inf) == []
    assert await blobs.digests() == [joined.sha256]  # parts are not blobs


async def test_a_missing_part_is_file_not_found(blobs: Backend) -> None:
    token = await blobs.save_part(await write(blobs, [b"kept"]))
    await blobs.remove_parts([token])
    with pytest.raises(FileNotFoundError):
        await blobs.parts_md5([token])
    with pytest.raises(FileNotFoundError):
        await blobs.concat_parts([token])
    assert staging(blobs) == []


async def test_check_writable(blobs: Backend) -> None:
    await blobs.check_writable()
    assert staging(blobs) == []


def test_a_full_disk_is_storage_full_by_errno() -> None:
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert isinstance(neutral_os_error(OSError(code, "anything")), StorageFull)
    other = OSError(errno.EIO, "No space left on device")  # the text does not decide
    assert neutral_os_error(other) is other


# --- the local backend only: files and paths -------------------------------------------------


async def test_commit_moves_into_a_path_made_of_the_digest(local: BlobDir) -> None:
    staged = await write(local, [b"hello"])
    assert await local.commit([staged]) == [True]
    digest = hashlib.sha256(b"hello").hexdigest()
    path = local.path_for(digest)
    assert path == local.blob_dir / digest[:2] / digest
    assert path.read_bytes() == b"hello"
    assert not local.staged_path(staged).exists()
    assert await local.digests() == [digest]
    assert local.download_url(digest, filename="x", expires_in=60) is None


class SyncedDirs:
    """A `sync_dir` for BlobDir that records what was synced, and fails where told to."""

    def __init__(self) -> None:
        self.synced: list[Path] = []
        self.failing: set[Path] = set()

    def __call__(self, path: Path) -> None:
        if path in self.failing:
            raise OSError(errno.EIO, "the disk said no")
        fsync_dir(path)
        self.synced.append(path)


def same_fan_out(n: int) -> list[bytes]:
    """`n` different contents whose digests share their first two hex digits."""
    by_prefix: dict[str, list[bytes]] = {}
    for i in range(100_000):
        content = f"content {i}".encode()
        found = by_prefix.setdefault(hashlib.sha256(content).hexdigest()[:2], [])
        found.append(content)
        if len(found) == n:
            return found
    raise AssertionError("unreachable: 256 prefixes")


async def test_a_new_fan_out_directory_is_durable_before_its_blobs_count(tmp_path: Path) -> None:
    """A blob's directory entry in `blobs/` is synced before the blob is reported stored,
    whichever blob of the commit made the directory, and again until a sync succeeded."""
    sync = SyncedDirs()
    blobs = BlobDir(tmp_path, sync_dir=sync)
    await blobs.prepare()
    first, second, third, fourth, fifth = same_fan_out(5)
    fan_out = tmp_path / "blobs" / hashlib.sha256(first).hexdigest()[:2]
    assert not fan_out.exists()  # made with its first blob, not ahead

    sync.failing = {blobs.blob_dir}
    results = await blobs.commit([await write(blobs, [first]), await write(blobs, [second])])
    assert all(isinstance(r, OSError) for r in results), results

    sync.failing = set()
    sync.synced.clear()
    assert await blobs.commit([await write(blobs, [third])]) == [True]
    assert blobs.blob_dir in sync.synced and fan_out in sync.synced

    sync.synced.clear()
    assert await blobs.commit([await write(blobs, [fourth])]) == [True]
    assert sync.synced == [fan_out]  # known durable now: its own directory only

    # A restart syncs `blobs/` once, and then trusts the fan-outs it found.
    sync.synced.clear()
    again = BlobDir(tmp_path, sync_dir=sync)
    await again.prepare()
    assert sync.synced == [again.blob_dir]
    sync.synced.clear()
    assert await again.commit([await write(again, [fifth])]) == [True]
    assert sync.synced == [fan_out]
    await blobs.close()
    await again.close()


@pytest.mark.parametrize("digest", ["../../etc/passwd", "ABC", "a" * 63, "g" * 64, "A" * 64])
def test_blob_paths_are_made_of_digests_only(local: BlobDir, digest: str) -> None:
    with pytest.raises(ValueError):
        local.path_for(digest)


def test_staged_refs_are_names_this_backend_made(local: BlobDir) -> None:
    with pytest.raises(ValueError):
        local.staged_path(StagedBlob("../../etc/passwd", "0" * 64, 0))


async def test_the_cache_keeps_small_content_within_its_bound(local: BlobDir) -> None:
    cached = CachedBlobs(local, limit=10_000)
    staged = [await write(cached, [bytes([i]) * 4000]) for i in range(3)]
    await cached.commit(staged)
    for item in staged:  # gone from disk behind the cache's back
        local.path_for(item.sha256).unlink()
    assert await cached.read(staged[2].sha256) == bytes([2]) * 4000
    assert await cached.read(staged[1].sha256) == bytes([1]) * 4000
    with pytest.raises(BlobMissing):  # the oldest was pushed out
        await cached.read(staged[0].sha256)
    await cached.delete([staged[1].sha256])  # a delete forgets
    with pytest.raises(BlobMissing):
        await cached.read(staged[1].sha256)


# --- the S3 backend only: keys, multipart uploads, presigned URLs, start-up ------------------


@pytest.mark.parametrize("prefix", ["", "a/b"])
async def test_keys_are_made_of_the_prefix_and_digests(
    s3_bucket: S3Bucket, tmp_path: Path, prefix: str
) -> None:
    blobs = s3_blobs(s3_bucket, tmp_path, prefix=prefix)
    await blobs.prepare()
    try:
        staged = await write(blobs, [b"hello"])
        await blobs.commit([staged])
        token = await blobs.save_part(await write(blobs, [b"part"]))
        base = f"{prefix}/" if prefix else ""
        digest = staged.sha256
        assert s3_bucket.object_keys() == sorted(
            [f"{base}blobs/{digest[:2]}/{digest}", f"{base}parts/{token}"]
        )
        assert await blobs.open_local(digest) is None  # type: ignore[func-returns-value]
        for bad in ("../../etc/passwd", "A" * 64, "a" * 63):
            with pytest.raises(ValueError):
                blobs.blob_key(bad)
            with pytest.raises(ValueError):
                blobs.part_key(bad)
        with pytest.raises(ValueError):
            blobs.staged_path(StagedBlob("../x.part", digest, 0))
    finally:
        await blobs.close()


async def test_identical_content_is_one_object(s3: S3Blobs, s3_bucket: S3Bucket) -> None:
    for _ in range(2):
        await s3.commit([await write(s3, [b"twice"])])
    digest = hashlib.sha256(b"twice").hexdigest()
    assert s3_bucket.object_keys() == [f"{PREFIX}/blobs/{digest[:2]}/{digest}"]


@pytest.mark.slow
async def test_large_content_goes_up_in_parts(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    blobs = s3_blobs(
        s3_bucket, tmp_path, multipart_threshold=MIN_PART_BYTES, part_size=MIN_PART_BYTES
    )
    await blobs.prepare()
    try:
        content = os.urandom(11 * MiB + 12_345)
        staged = await write(blobs, [content[i : i + MiB] for i in range(0, len(content), MiB)])
        assert await blobs.commit([staged]) == [True]
        digest = staged.sha256
        head = s3_bucket.client().head_object(Bucket=s3_bucket.bucket, Key=blobs.blob_key(digest))
        assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
        assert head["ContentLength"] == len(content)
        assert hashlib.sha256(await read_all(blobs, digest)).hexdigest() == digest
        boundary = MIN_PART_BYTES
        assert await read_all(blobs, digest, boundary - 3, 6) == content[boundary - 3 :][:6]
        assert await read_all(blobs, digest, len(content) - 5) == content[-5:]
        # Parts take the same path; joining them reads them back.
        token = await blobs.save_part(await write(blobs, [content]))
        joined, md5 = await blobs.concat_parts([token])
        assert joined.sha256 == digest
        assert md5 == md5_hex(content)
        await blobs.discard([joined])
        assert staging(blobs) == []
    finally:
        await blobs.close()


@pytest.mark.slow
async def test_quarantine_moves_blobs_aside_whole_in_one_copy_or_in_parts(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    blobs = s3_blobs(
        s3_bucket, tmp_path, multipart_threshold=MIN_PART_BYTES, part_size=MIN_PART_BYTES
    )
    await blobs.prepare()
    client = s3_bucket.client()
    try:
        small, large = b"bit rot", os.urandom(2 * MIN_PART_BYTES + 12_345)
        digests = []
        for content in (small, large):
            staged = await write(blobs, [content])
            assert await blobs.commit([staged]) == [True]
            digests.append(staged.sha256)
        await blobs.quarantine([*digests, "e" * 64])  # one never stored: passed over
        for digest, content in zip(digests, (small, large), strict=True):
            assert await blobs.missing([digest]) == {digest}
            kept = client.get_object(Bucket=s3_bucket.bucket, Key=f"{PREFIX}/quarantine/{digest}")
            assert kept["Body"].read() == content
        head = client.head_object(Bucket=s3_bucket.bucket, Key=f"{PREFIX}/quarantine/{digests[1]}")
        assert head["ETag"].strip('"').endswith("-3")  # copied in three parts
        assert client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []
        assert sorted(await blobs.digests()) == []  # quarantine is not under blobs/
    finally:
        await blobs.close()


@pytest.mark.slow
async def test_a_cancelled_multipart_upload_is_aborted(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    blobs = s3_blobs(
        s3_bucket, tmp_path, multipart_threshold=MIN_PART_BYTES, part_size=MIN_PART_BYTES
    )
    await blobs.prepare()
    client = s3_bucket.client()

    def uploads() -> list[object]:
        return list(client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", ()))

    try:
        staged = await write(blobs, [os.urandom(MiB)] * 40)
        committing = asyncio.ensure_future(blobs.commit([staged]))
        await wait_until(lambda: asyncio.to_thread(uploads), what="a multipart upload begun")
        committing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await committing
        assert uploads() == []
        assert await blobs.digests() == [] and staging(blobs) == []
    finally:
        client.close()
        await blobs.close()


async def test_a_presigned_url_downloads_as_an_attachment(s3: S3Blobs) -> None:
    staged = await write(s3, [b"report body"])
    await s3.commit([staged])
    filename = 'résumé "final" 📄.txt'
    url = s3.download_url(staged.sha256, filename=filename, expires_in=300)
    assert s3.endpoint is not None
    assert url.startswith(s3.endpoint + "/") and "X-Amz-Signature=" in url
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert await response.read() == b"report body"
        # The very header filesd's own content route sends.
        assert response.headers["Content-Disposition"] == content_disposition(filename)


async def test_a_missing_bucket_is_named_at_start_up(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    blobs = s3_blobs(S3Bucket(s3_bucket.endpoint, "no-such-bucket-here"), tmp_path)
    with pytest.raises(StorageUnavailable) as info:
        await blobs.prepare()
    assert info.value.setting == "storage.blobs"
    assert "bucket 'no-such-bucket-here' does not exist" in str(info.value)


@pytest.mark.slow  # the client retries, with backoff, before it gives up
async def test_an_unreachable_endpoint_is_named_without_secrets(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blobs = S3Blobs(
        tmp_path,
        bucket="anything",
        endpoint=f"http://127.0.0.1:{port}",
        access_key_id="AKIDSECRETLESS",
        secret_access_key="very-secret-value",
    )
    with pytest.raises(StorageUnavailable) as info:
        await blobs.prepare()
    assert info.value.setting == "storage.blobs"
    assert "cannot reach the S3 endpoint" in str(info.value)
    assert "very-secret-value" not in str(info.value)


def test_half_the_credentials_is_refused(tmp_path: Path) -> None:
    blobs = S3Blobs(tmp_path, bucket="b", endpoint="http://127.0.0.1:9", access_key_id="x")
    with pytest.raises(StorageUnavailable, match="both access_key_id and secret_access_key"):
        asyncio.run(blobs.prepare())
    with pytest.raises(ValueError):
        S3Blobs(tmp_path, bucket="b", part_size=MiB)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["one PUT", "in parts"])
async def test_memory_stays_bounded_for_a_large_blob(
    s3_bucket: S3Bucket, tmp_path: Path, how: str
) -> None:
    # One PUT streams the spool file as parts do: neither holds a body in memory.
    parts = {"multipart_threshold": MIN_PART_BYTES, "part_size": MIN_PART_BYTES}
    blobs = s3_blobs(s3_bucket, tmp_path, **(parts if how == "in parts" else {}))
    await blobs.prepare()
    size = 64 * MiB
    chunk = os.urandom(MiB)  # made before tracing starts: not counted
    tracemalloc.start()
    try:
        staged = await write(blobs, [chunk] * (size // MiB))
        assert await blobs.commit([staged]) == [True]
        digest = hashlib.sha256()
        async for piece in blobs.open_range(staged.sha256):
            digest.update(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await blobs.close()
    assert digest.hexdigest() == staged.sha256
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB for a {size // MiB} MiB blob"


class RequestLog:
    """What the S3 client of a backend sends for one operation, seen through botocore's events
    (nothing is changed): the headers and query of each request, and the most in flight."""

    def __init__(self, blobs: S3Blobs, operation: str) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, list[str]]]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        events = blobs._s3.meta.events
        events.register(f"before-send.s3.{operation}", self._sent)
        events.register(f"after-call.s3.{operation}", self._answered)

    def _sent(self, request: Any, **_: Any) -> None:
        self.requests.append((dict(request.headers), parse_qs(urlsplit(request.url).query)))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _answered(self, **_: Any) -> None:
        self.in_flight -= 1

    def header(self, name: str) -> list[str]:
        return [_text(headers[name]) for headers, _ in self.requests]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def object_etag(bucket: S3Bucket, key: str) -> str:
    client = bucket.client()
    try:
        return str(client.head_object(Bucket=bucket.bucket, Key=key)["ETag"]).strip('"')
    finally:
        client.close()


async def test_one_put_carries_the_md5_hashed_while_spooling(
    s3: S3Blobs, s3_bucket: S3Bucket
) -> None:
    chunks = [os.urandom(700_001) for _ in range(4)]  # streamed from the file, not from memory
    content = b"".join(chunks)
    staged = await write(s3, chunks)
    assert staged.content is None
    path = s3.staged_path(staged)
    changed = bytes([content[0] ^ 1]) + content[1:]  # the disk changed after staging
    path.write_bytes(changed)
    puts = RequestLog(s3, "PutObject")
    assert await s3.commit([staged]) == [True]
    # The MD5 of what was spooled, not of the file read back: S3 refuses such a body (BadDigest)
    # rather than store it under the wrong digest (moto does not check Content-MD5).
    assert puts.header("Content-MD5") == [md5_b64(content)]
    assert puts.header("Content-Length") == [str(len(content))]
    assert "-" not in object_etag(s3_bucket, s3.blob_key(staged.sha256))  # one PUT, no parts
    assert await read_all(s3, staged.sha256) == changed


async def test_small_content_is_put_from_memory_with_its_md5(s3: S3Blobs) -> None:
    staged = await write(s3, [b"small", b" content"])
    assert staged.content == b"small content"
    s3.staged_path(staged).unlink()  # not read back
    puts = RequestLog(s3, "PutObject")
    assert await s3.commit([staged]) == [True]
    assert puts.header("Content-MD5") == [md5_b64(b"small content")]
    assert await s3.read(staged.sha256) == b"small content"


async def test_the_md5s_of_staged_content_go_with_their_spool_files(s3: S3Blobs) -> None:
    committed, discarded, part = [await write(s3, [bytes([i]) * 100_000]) for i in range(3)]
    writer = s3.writer()
    await writer.write(b"aborted")
    await writer.abort()
    assert len(s3._md5s) == 3
    await s3.commit([committed])
    await s3.discard([discarded])
    await s3.save_part(part)
    assert s3._md5s == {} and staging(s3) == []


@pytest.mark.slow
async def test_parts_go_up_at_once_and_join_in_order(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    blobs = s3_blobs(
        s3_bucket,
        tmp_path,
        multipart_threshold=MIN_PART_BYTES,
        part_size=MIN_PART_BYTES,
        part_uploads=4,
    )
    await blobs.prepare()
    try:
        content = os.urandom(4 * MIN_PART_BYTES + 12_345)  # five parts, the last one short
        staged = await write(blobs, [content[i : i + MiB] for i in range(0, len(content), MiB)])
        parts = RequestLog(blobs, "UploadPart")
        assert await blobs.commit([staged]) == [True]
        assert parts.most_in_flight > 1
        md5s = {int(q["partNumber"][0]): _text(h["Content-MD5"]) for h, q in parts.requests}
        assert md5s == {
            n + 1: md5_b64(content[n * MIN_PART_BYTES : (n + 1) * MIN_PART_BYTES]) for n in range(5)
        }
        assert object_etag(s3_bucket, blobs.blob_key(staged.sha256)).endswith("-5")
        assert await read_all(blobs, staged.sha256) == content
    finally:
        await blobs.close()


@pytest.mark.slow
async def test_a_failed_part_aborts_the_upload(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    blobs = s3_blobs(
        s3_bucket, tmp_path, multipart_threshold=MIN_PART_BYTES, part_size=MIN_PART_BYTES
    )
    await blobs.prepare()
    client = s3_bucket.client()
    try:
        staged = await write(blobs, [os.urandom(MiB)] * (4 * MIN_PART_BYTES // MiB))
        with blobs.staged_path(staged).open("r+b") as f:  # the third part is cut short
            f.truncate(2 * MIN_PART_BYTES + 1000)
        (result,) = await blobs.commit([staged])
        assert isinstance(result, OSError)
        assert client.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []
        assert await blobs.digests() == [] and staging(blobs) == []
    finally:
        client.close()
        await blobs.close()


def test_a_file_slice_reads_and_rewinds_within_its_bounds(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        body = FileSlice(fd, 2, 5)
        assert body.read(3) == b"234" and body.tell() == 3
        assert body.read() == b"56" and body.read() == b""
        assert body.seek(0) == 0 and body.read(100) == b"23456"  # how botocore retries
        assert body.seek(-2, os.SEEK_END) == 3 and body.read() == b"56"
        body.seek(1)
        buffer = bytearray(3)
        assert body.readinto(buffer) == 3 and buffer == b"345"
        with pytest.raises(OSError):
            body.fileno()  # aiohttp must not size the whole file
        with pytest.raises(ValueError):
            body.seek(-1)
        cut = FileSlice(fd, 8, 5)  # past the end of the file: it was cut short
        assert cut.read() == b"89"
        with pytest.raises(OSError):  # fails the request now, not when the store times out
            cut.read()
    finally:
        os.close(fd)


def test_part_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="largest PUT"):
        S3Blobs(tmp_path, bucket="b", multipart_threshold=6 * 1024**3)
    with pytest.raises(ValueError):
        S3Blobs(tmp_path, bucket="b", part_uploads=0)
    with pytest.raises(ValueError):
        S3Blobs(tmp_path, bucket="b", read_timeout=0)


class StallingPath:
    """A TCP path to the S3 server that stops carrying requests when told (`stall()`): a
    store (or a network) that takes no more bytes and never answers."""

    def __init__(self, upstream: str) -> None:
        self._host, _, port = upstream.removeprefix("http://").partition(":")
        self._port = int(port)
        self._carrying = asyncio.Event()
        self._carrying.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.endpoint = ""

    async def __aenter__(self) -> StallingPath:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.endpoint = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stall(self) -> None:
        self._carrying.clear()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        for task in (self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)):
            self._tasks.add(asyncio.ensure_future(task))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bool
    ) -> None:
        try:
            while True:
                if request:
                    await self._carrying.wait()
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@pytest.mark.slow
@pytest.mark.parametrize("size", [1000, 300_000])  # a body in memory, one read from the file
async def test_an_endpoint_that_takes_no_body_fails_the_request(
    s3_bucket: S3Bucket, tmp_path: Path, size: int
) -> None:
    async with StallingPath(s3_bucket.endpoint) as path:
        bucket = S3Bucket(path.endpoint, s3_bucket.bucket)
        blobs = s3_blobs(bucket, tmp_path, read_timeout=0.5)
        await blobs.prepare()
        try:
            staged = await write(blobs, [os.urandom(size)])
            path.stall()
            # aiohttp's read timeout never starts: the request is never sent whole.
            async with asyncio.timeout(30):
                with pytest.raises(StorageUnavailable, match="took no more of a request body"):
                    await blobs.save_part(staged)
            assert staging(blobs) == []
        finally:
            await blobs.close()


@contextlib.asynccontextmanager
async def refusing_proxy(upstream: str, status: int) -> AsyncIterator[tuple[str, list[str]]]:
    """An S3 endpoint in front of `upstream` that answers every conditional PUT
    (If-None-Match) with `status`: 501 as endpoints without conditional writes do, 409 as S3
    does when concurrent conditional writes of a key conflict. Yields its URL and the keys
    whose conditional PUT it refused."""
    refused: list[str] = []
    codes = {501: "NotImplemented", 409: "ConditionalRequestConflict"}
    hop_by_hop = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}

    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def forward(request: web.Request) -> web.Response:
            if request.method == "PUT" and "If-None-Match" in request.headers:
                refused.append(request.path)
                error = f"<Error><Code>{codes[status]}</Code><Message>no</Message></Error>"
                return web.Response(status=status, text=error, content_type="application/xml")
            headers = {k: v for k, v in request.headers.items() if k.lower() not in hop_by_hop}
            url = upstream + request.path_qs
            body = await request.read()
            async with session.request(request.method, url, headers=headers, data=body) as answer:
                body = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in hop_by_hop}
                return web.Response(status=answer.status, body=body, headers=kept)

        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}", refused
        finally:
            await runner.cleanup()


@pytest.mark.parametrize("status", [501, 409])
async def test_small_blobs_are_stored_where_conditional_puts_are_refused(
    s3_bucket: S3Bucket, tmp_path: Path, status: int
) -> None:
    async with refusing_proxy(s3_bucket.endpoint, status) as (endpoint, refused):
        blobs = S3Blobs(
            tmp_path / "spool",
            bucket=s3_bucket.bucket,
            prefix=PREFIX,
            endpoint=endpoint,
            region=s3_bucket.region,
            access_key_id=s3_bucket.access_key_id,
            secret_access_key=s3_bucket.secret_access_key,
        )
        await blobs.prepare()
        try:
            first = await write(blobs, [b"refused"])
            assert await blobs.commit([first]) == [True]
            assert await blobs.commit([await write(blobs, [b"refused"])]) == [False]
            assert await blobs.commit([await write(blobs, [b"other"])]) == [True]
            assert await blobs.read(first.sha256) == b"refused"
        finally:
            await blobs.close()
    # An endpoint without conditional writes is asked once; a conflict is a single PUT's.
    assert len(refused) == (1 if status == 501 else 3)


async def test_a_commit_still_running_after_close_syncs_its_directories(tmp_path: Path) -> None:
    # A request cancelled at shutdown may leave its commit running in a thread after the
    # backend closed: its blobs (two fan-out directories here) are still stored and synced.
    blobs = BlobDir(tmp_path)
    await blobs.prepare()
    staged = [await write(blobs, [b"one"]), await write(blobs, [b"two"])]
    assert staged[0].sha256[:2] != staged[1].sha256[:2]
    await blobs.close()
    assert await blobs.commit(staged) == [True, True]
    assert [await blobs.read(s.sha256) for s in staged] == [b"one", b"two"]
