"""The local blob backend, through its `BlobBackend` protocol, without HTTP."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from filesd.storage.base import (
    BlobBackend,
    BlobMissing,
    BlobTooLarge,
    StagedBlob,
    StorageFull,
    neutral_os_error,
)
from filesd.storage.blobdir import BATCH_BYTES, BlobDir
from filesd.storage.cached import CachedBlobs


@pytest.fixture
async def local(tmp_path: Path) -> BlobDir:
    store = BlobDir(tmp_path)
    await store.prepare()
    return store


@pytest.fixture
def blobs(local: BlobDir) -> BlobBackend:
    return local


async def write(
    blobs: BlobBackend, chunks: list[bytes], max_bytes: int | None = None
) -> StagedBlob:
    writer = blobs.writer(max_bytes)
    for chunk in chunks:
        await writer.write(chunk)
    return await writer.finish()


async def read_all(
    blobs: BlobBackend, digest: str, start: int = 0, length: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in blobs.open_range(digest, start, length)])


async def test_streamed_content_is_hashed_and_staged(blobs: BlobBackend, local: BlobDir) -> None:
    # Odd-sized chunks spanning several batches: the digest covers every byte in order.
    chunks = [os.urandom(300_001) for _ in range(8)]
    staged = await write(blobs, chunks)
    content = b"".join(chunks)
    assert staged.size == len(content) > 2 * BATCH_BYTES
    assert staged.sha256 == hashlib.sha256(content).hexdigest()
    assert staged.content is None  # too large to keep in memory
    assert local.staged_path(staged).read_bytes() == content
    assert await blobs.commit([staged]) == [True]
    assert await read_all(blobs, staged.sha256) == content
    assert await read_all(blobs, staged.sha256, 1_000_000, 5) == content[1_000_000:1_000_005]
    assert await read_all(blobs, staged.sha256, len(content) - 3) == content[-3:]


async def test_empty_content_is_a_valid_blob(blobs: BlobBackend) -> None:
    staged = await write(blobs, [])
    assert staged.size == 0 and staged.content == b""
    assert staged.sha256 == hashlib.sha256(b"").hexdigest()
    assert await blobs.commit([staged]) == [True]
    assert await blobs.read(staged.sha256) == b""


async def test_commit_moves_into_a_path_made_of_the_digest(
    blobs: BlobBackend, local: BlobDir
) -> None:
    staged = await write(blobs, [b"hello"])
    assert await blobs.commit([staged]) == [True]
    digest = hashlib.sha256(b"hello").hexdigest()
    path = blobs.local_path(digest)
    assert path == local.blob_dir / digest[:2] / digest
    assert path.read_bytes() == b"hello"
    assert not local.staged_path(staged).exists()
    assert await blobs.digests() == [digest]


async def test_identical_content_is_stored_once(blobs: BlobBackend, local: BlobDir) -> None:
    first = await write(blobs, [b"same"])
    second = await write(blobs, [b"sa", b"me"])
    assert await blobs.commit([first, second]) == [True, False]
    assert await blobs.digests() == [first.sha256]
    assert os.listdir(local.temp_dir) == []


async def test_writer_refuses_content_over_its_limit(blobs: BlobBackend, local: BlobDir) -> None:
    writer = blobs.writer(max_bytes=10)
    await writer.write(b"0123456789")
    with pytest.raises(BlobTooLarge) as info:
        await writer.write(b"x")
    assert info.value.limit == 10
    await writer.abort()
    assert os.listdir(local.temp_dir) == []


async def test_abort_removes_the_temp_file_at_any_point(blobs: BlobBackend, local: BlobDir) -> None:
    writer = blobs.writer()
    await writer.write(os.urandom(BATCH_BYTES + 1))  # a batch is being written in a thread
    await writer.abort()
    assert os.listdir(local.temp_dir) == []
    with pytest.raises(RuntimeError):
        await writer.write(b"more")


async def test_discard_removes_staged_content(blobs: BlobBackend, local: BlobDir) -> None:
    staged = await write(blobs, [b"never mind"])
    await blobs.discard([staged])
    assert os.listdir(local.temp_dir) == [] and await blobs.digests() == []


async def test_prepare_removes_leftover_temp_files(tmp_path: Path) -> None:
    blobs = BlobDir(tmp_path)
    await blobs.prepare()
    (blobs.temp_dir / "interrupted.part").write_bytes(b"partial")
    assert await blobs.prepare() == 1
    assert os.listdir(blobs.temp_dir) == []


@pytest.mark.parametrize("digest", ["../../etc/passwd", "ABC", "a" * 63, "g" * 64, "A" * 64])
def test_blob_paths_are_made_of_digests_only(local: BlobDir, digest: str) -> None:
    with pytest.raises(ValueError):
        local.path_for(digest)


def test_staged_refs_are_names_this_backend_made(local: BlobDir) -> None:
    with pytest.raises(ValueError):
        local.staged_path(StagedBlob("../../etc/passwd", "0" * 64, 0))


async def test_delete_missing_and_stray_names(blobs: BlobBackend, local: BlobDir) -> None:
    staged = await write(blobs, [b"x"])
    await blobs.commit([staged])
    (local.blob_dir / "README").write_text("not a blob")
    (local.path_for(staged.sha256).parent / "junk").write_text("not a blob")
    assert await blobs.digests() == [staged.sha256]
    assert await blobs.delete([staged.sha256]) == 1
    assert await blobs.delete([staged.sha256]) == 0
    assert await blobs.digests() == []
    with pytest.raises(BlobMissing):
        await blobs.read(staged.sha256)
    with pytest.raises(BlobMissing):
        await read_all(blobs, staged.sha256)


async def test_parts_are_saved_joined_and_removed(blobs: BlobBackend, local: BlobDir) -> None:
    tokens = [await blobs.save_part(await write(blobs, [chunk])) for chunk in (b"ab", b"", b"cd")]
    assert sorted(await blobs.part_tokens_older_than(10**10)) == sorted(tokens)
    joined, md5 = await blobs.concat_parts(tokens)
    assert joined.size == 4 and joined.sha256 == hashlib.sha256(b"abcd").hexdigest()
    assert md5 == hashlib.md5(b"abcd", usedforsecurity=False).hexdigest()
    assert await blobs.commit([joined]) == [True]
    assert await blobs.read(joined.sha256) == b"abcd"
    assert await blobs.remove_parts(tokens) == 3
    assert os.listdir(local.part_dir) == []


async def test_check_writable(blobs: BlobBackend, local: BlobDir) -> None:
    await blobs.check_writable()
    assert os.listdir(local.temp_dir) == []


def test_a_full_disk_is_storage_full_by_errno() -> None:
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert isinstance(neutral_os_error(OSError(code, "anything")), StorageFull)
    other = OSError(errno.EIO, "No space left on device")  # the text does not decide
    assert neutral_os_error(other) is other


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
