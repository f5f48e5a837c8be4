"""The content-addressed blob store, without HTTP."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from filesd.blobs import BATCH_BYTES, BlobStore, BlobTooLarge


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    store = BlobStore(tmp_path)
    store.prepare()
    return store


async def write(blobs: BlobStore, chunks: list[bytes], max_bytes: int | None = None):  # type: ignore[no-untyped-def]
    writer = blobs.writer(max_bytes)
    for chunk in chunks:
        await writer.write(chunk)
    return await writer.finish()


async def test_streamed_content_is_hashed_and_staged(blobs: BlobStore) -> None:
    # Odd-sized chunks spanning several batches: the digest covers every byte in order.
    chunks = [os.urandom(300_001) for _ in range(8)]
    staged = await write(blobs, chunks)
    content = b"".join(chunks)
    assert staged.size == len(content) > 2 * BATCH_BYTES
    assert staged.sha256 == hashlib.sha256(content).hexdigest()
    assert staged.temp_path.parent == blobs.temp_dir
    assert staged.temp_path.read_bytes() == content


async def test_empty_content_is_a_valid_blob(blobs: BlobStore) -> None:
    staged = await write(blobs, [])
    assert staged.size == 0
    assert staged.sha256 == hashlib.sha256(b"").hexdigest()
    assert blobs.link(staged)
    assert blobs.path_for(staged.sha256).read_bytes() == b""


async def test_link_moves_into_a_path_made_of_the_digest(blobs: BlobStore) -> None:
    staged = await write(blobs, [b"hello"])
    assert blobs.link(staged) is True
    digest = hashlib.sha256(b"hello").hexdigest()
    path = blobs.path_for(digest)
    assert path == blobs.blob_dir / digest[:2] / digest
    assert path.read_bytes() == b"hello"
    assert not staged.temp_path.exists()
    assert list(blobs.digests()) == [digest]


async def test_identical_content_is_stored_once(blobs: BlobStore) -> None:
    first = await write(blobs, [b"same"])
    second = await write(blobs, [b"sa", b"me"])
    assert blobs.link(first) is True
    assert blobs.link(second) is False
    assert not second.temp_path.exists()
    assert list(blobs.digests()) == [first.sha256]
    assert os.listdir(blobs.temp_dir) == []


async def test_writer_refuses_content_over_its_limit(blobs: BlobStore) -> None:
    writer = blobs.writer(max_bytes=10)
    await writer.write(b"0123456789")
    with pytest.raises(BlobTooLarge) as info:
        await writer.write(b"x")
    assert info.value.limit == 10
    await writer.abort()
    assert os.listdir(blobs.temp_dir) == []


async def test_abort_removes_the_temp_file_at_any_point(blobs: BlobStore) -> None:
    writer = blobs.writer()
    await writer.write(os.urandom(BATCH_BYTES + 1))  # a batch is being written in a thread
    await writer.abort()
    assert os.listdir(blobs.temp_dir) == []
    with pytest.raises(RuntimeError):
        await writer.write(b"more")


def test_prepare_removes_leftover_temp_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    blobs.prepare()
    (blobs.temp_dir / "interrupted.part").write_bytes(b"partial")
    assert blobs.prepare() == 1
    assert os.listdir(blobs.temp_dir) == []


@pytest.mark.parametrize("digest", ["../../etc/passwd", "ABC", "a" * 63, "g" * 64, "A" * 64])
def test_blob_paths_are_made_of_digests_only(blobs: BlobStore, digest: str) -> None:
    with pytest.raises(ValueError):
        blobs.path_for(digest)


async def test_remove_and_stray_names(blobs: BlobStore) -> None:
    staged = await write(blobs, [b"x"])
    blobs.link(staged)
    (blobs.blob_dir / "README").write_text("not a blob")
    (blobs.path_for(staged.sha256).parent / "junk").write_text("not a blob")
    assert list(blobs.digests()) == [staged.sha256]
    assert blobs.remove(staged.sha256) is True
    assert blobs.remove(staged.sha256) is False
    assert list(blobs.digests()) == []
