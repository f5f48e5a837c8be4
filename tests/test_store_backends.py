"""The store's contract on every backend pair (SQLite or PostgreSQL; blob dir or S3), and
several instances sharing PostgreSQL (and S3) in one process: two `Services`s with their own
data dirs are two instances, as two servers would be. Without HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from filesd.config import S3Config
from filesd.services.core import Services
from filesd.services.errors import FileNotFound, QuotaExceeded
from filesd.services.files import ListQuery, Received
from filesd.services.settings import StoreSettings
from filesd.storage.base import DelegatingBlobs, StagedBlob, StorageBusy, StorageUnavailable
from filesd.storage.blobdir import BlobDir
from filesd.storage.opening import Backends, blob_backend
from filesd.storage.sqlite import SqliteMetadata

from .conftest import chunks_of

PAIRS = ["sqlite-dir", "sqlite-s3", "postgres-dir", "postgres-s3"]
SHARED = ["postgres-dir", "postgres-s3"]

SettingsFactory = Callable[..., StoreSettings]


def _factory(request: pytest.FixtureRequest, tmp_path: Path, pair: str) -> SettingsFactory:
    database, blobs = pair.split("-")
    dsn = request.getfixturevalue("postgres_dsn") if database == "postgres" else ""
    bucket: Any = request.getfixturevalue("s3_bucket") if blobs == "s3" else None

    def make(name: str = "a", **kw: Any) -> StoreSettings:
        s3 = S3Config()
        where = ""
        if bucket is not None:
            where = f"s3://{bucket.bucket}/files"
            s3 = S3Config(
                endpoint=bucket.endpoint,
                region=bucket.region,
                access_key_id=bucket.access_key_id,
                secret_access_key=bucket.secret_access_key,
            )
        return StoreSettings(tmp_path / name, database=dsn, blobs=where, s3=s3, **kw)

    return make


@pytest.fixture(params=PAIRS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> SettingsFactory:
    return _factory(request, tmp_path, request.param)


@pytest.fixture(params=SHARED)
def shared_settings(request: pytest.FixtureRequest, tmp_path: Path) -> SettingsFactory:
    """Metadata shared by instances (each with its own data dir; their bytes are shared only
    on S3)."""
    return _factory(request, tmp_path, request.param)


@pytest.fixture
def shared_bytes(request: pytest.FixtureRequest, tmp_path: Path) -> SettingsFactory:
    """PostgreSQL and S3: everything shared."""
    return _factory(request, tmp_path, "postgres-s3")


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., Awaitable[Services]]]:
    stores: list[Services] = []

    async def open_store(settings: StoreSettings, **kw: Any) -> Services:
        store = await Services.open(settings, **kw)
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        await store.close()


async def stage(store: Services, content: bytes) -> Received:
    return await store.files.receive(chunks_of(content))


async def create(store: Services, content: bytes, project: str = "p", **kw: Any) -> str:
    record = await store.files.create(
        project, await stage(store, content), filename="f.txt", purpose="assistants", **kw
    )
    return record.id


async def content_of(store: Services, project: str, file_id: str) -> bytes:
    record = await store.files.get(project, file_id)
    return b"".join([chunk async for chunk in store.files.read_range(record)])


async def stored_digests(settings: StoreSettings) -> set[str]:
    """The blobs the backend holds, seen from outside the store."""
    if not settings.blobs:  # the blob dir in the store's own data dir
        return set(await blob_backend(settings.backends).digests())
    backend = blob_backend(
        replace(settings, data_dir=settings.data_dir.parent / "outside").backends
    )
    await backend.prepare()
    try:
        return set(await backend.digests())
    finally:
        await backend.close()


async def store_orphan(settings: StoreSettings, content: bytes) -> None:
    """Store a blob no file refers to, as a crash between blob and row would leave it."""
    outside = (
        settings
        if not settings.blobs
        else replace(settings, data_dir=settings.data_dir.parent / "outside")
    )
    backend = blob_backend(outside.backends)
    await backend.prepare()
    try:
        writer = backend.writer()
        await writer.write(content)
        assert await backend.commit([await writer.finish()]) == [True]
    finally:
        await backend.close()


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# --- the contract, on every pair --------------------------------------------------------------


async def test_files_round_trip_and_list_newest_first(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    store = await opened(settings())
    big = bytes(range(256)) * 1024  # 256 KiB: streamed, not read whole
    ids = [await create(store, b"small one"), await create(store, big)]
    assert await content_of(store, "p", ids[0]) == b"small one"
    assert await content_of(store, "p", ids[1]) == big
    record = await store.files.get("p", ids[1])
    ranged = b"".join([c async for c in store.files.read_range(record, 1000, 5000)])
    assert ranged == big[1000:6000]
    page = await store.files.list("p", ListQuery(limit=1))
    assert [f.id for f in page.files] == [ids[1]] and page.has_more and page.total == 2
    page = await store.files.list("p", ListQuery(limit=5, after=ids[1]))
    assert [f.id for f in page.files] == [ids[0]] and not page.has_more
    with pytest.raises(FileNotFound):
        await store.files.get("other-project", ids[0])


async def test_identical_bytes_are_one_blob_reclaimed_with_the_last_file(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    s = settings()
    store = await opened(s)
    first = await create(store, b"same bytes")
    second = await create(store, b"same bytes", project="q")
    assert await stored_digests(s) == {sha(b"same bytes")}
    await store.files.delete("p", first)
    assert await stored_digests(s) == {sha(b"same bytes")}  # q's file still refers to it
    assert await content_of(store, "q", second) == b"same bytes"
    await store.files.delete("q", second)
    assert await stored_digests(s) == set()
    with pytest.raises(FileNotFound):
        await store.files.get("q", second)


async def test_expired_files_are_swept_with_their_blobs(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    now = [1_000_000.0]
    s = settings()
    store = await opened(s, clock=lambda: now[0])
    gone = await create(store, b"expiring", expires_after=60)
    kept = await create(store, b"kept")
    now[0] += 61
    with pytest.raises(FileNotFound):
        await store.files.get("p", gone)
    assert await store.maintenance.sweep_expired() == 1
    assert await stored_digests(s) == {sha(b"kept")}
    assert await content_of(store, "p", kept) == b"kept"


async def test_orphan_blobs_are_swept_and_referenced_ones_kept(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    s = settings()
    store = await opened(s)
    kept = await create(store, b"referenced")
    await store_orphan(s, b"orphan left by a crash")
    assert await stored_digests(s) == {sha(b"referenced"), sha(b"orphan left by a crash")}
    assert await store.maintenance.sweep_orphans() == 1
    assert await stored_digests(s) == {sha(b"referenced")}
    assert await content_of(store, "p", kept) == b"referenced"


async def test_quotas_refuse_and_leave_nothing(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    s = settings(max_files_per_project=2)
    store = await opened(s)
    await create(store, b"one")
    await create(store, b"two")
    with pytest.raises(QuotaExceeded):
        await create(store, b"three")
    assert await stored_digests(s) == {sha(b"one"), sha(b"two")}
    assert (await store.files.list("p", ListQuery())).total == 2


async def test_uploads_in_parts_become_one_file(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    store = await opened(settings())
    uploads = store.uploads
    pieces = [b"a" * 300_000, b"b" * 300_000, b"tail"]
    upload = await uploads.create(
        "p",
        filename="joined.bin",
        purpose="assistants",
        mime_type="application/octet-stream",
        size=sum(map(len, pieces)),
        file_expires_after=None,
    )
    parts = []
    for piece in pieces:
        parts.append(
            await uploads.add_part("p", upload.id, await uploads.receive_part(chunks_of(piece)))
        )
    md5 = hashlib.md5(b"".join(pieces)).hexdigest()  # noqa: S324 (the API's checksum)
    done, record = await uploads.complete("p", upload.id, [p.id for p in parts], md5)
    assert done.status == "completed"
    assert await content_of(store, "p", record.id) == b"".join(pieces)


async def test_export_then_import_keeps_ids_and_bytes(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]], tmp_path: Path
) -> None:
    source = await opened(settings("a"))
    ids = [await create(source, b"exported %d" % i) for i in range(3)]
    export = await source.archives.export("p")
    archive = b"".join([chunk async for chunk in export.chunks])
    await source.maintenance.reset(None)
    assert (await source.files.list("p", ListQuery())).total == 0

    async def chunks() -> AsyncIterator[bytes]:
        yield archive

    assert await source.archives.import_(chunks(), {"assistants"}) == 3
    for i, file_id in enumerate(ids):
        assert await content_of(source, "p", file_id) == b"exported %d" % i


# --- several instances on shared metadata ------------------------------------------------------


async def test_another_instance_reads_lists_and_deletes_at_once(
    shared_bytes: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    a = await opened(shared_bytes("a"))
    b = await opened(shared_bytes("b"))
    file_id = await create(a, b"written on a")
    assert await content_of(b, "p", file_id) == b"written on a"
    assert [f.id for f in (await b.files.list("p", ListQuery())).files] == [file_id]
    await b.files.delete("p", file_id)
    with pytest.raises(FileNotFound):
        await a.files.get("p", file_id)


async def test_an_upload_racing_a_delete_on_another_instance_never_loses_bytes(
    shared_bytes: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    s = shared_bytes("a")
    a = await opened(s)
    b = await opened(shared_bytes("b"))
    for round_ in range(25):
        content = b"contested bytes %d" % round_
        old = await create(b, content)
        # b deletes the last file of these bytes while a uploads the same bytes again.
        new, _ = await asyncio.gather(create(a, content), b.files.delete("p", old))
        assert await content_of(a, "p", new) == content, f"round {round_}"
        assert sha(content) in await stored_digests(s)


async def test_quotas_hold_across_instances(
    shared_settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    a = await opened(shared_settings("a", max_files_per_project=5))
    b = await opened(shared_settings("b", max_files_per_project=5))
    results = await asyncio.gather(
        *(create(store, b"file %d" % i) for i in range(8) for store in (a, b)),
        return_exceptions=True,
    )
    stored = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(stored) == 5 and len(refused) == 11, results
    assert (await a.files.list("p", ListQuery())).total == 5


async def test_paging_never_skips_nor_repeats_while_two_instances_insert(
    shared_settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    a = await opened(shared_settings("a"))
    b = await opened(shared_settings("b"))
    total = 120
    writing = asyncio.gather(
        *(
            create(store, b"page %d %s" % (i, name))
            for i in range(total // 2)
            for name, store in ((b"a", a), (b"b", b))
        )
    )
    seen: list[str] = []
    after: str | None = None
    while True:
        page = await a.files.list("p", ListQuery(limit=7, order="asc", after=after))
        seen += [f.id for f in page.files]
        after = seen[-1] if seen else None
        if writing.done() and not page.has_more:
            break
        await asyncio.sleep(0)
    written = await writing
    assert len(seen) == len(set(seen)), "a file was listed twice"
    assert sorted(seen) == sorted(written), "a file was skipped"


async def test_a_dead_instances_completion_is_settled_by_another(
    shared_settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    a = await opened(shared_settings("a", lease_seconds=3))
    b = await opened(shared_settings("b", lease_seconds=3))
    uploads_a = a.uploads
    upload = await uploads_a.create(
        "p",
        filename="x",
        purpose="assistants",
        mime_type="text/plain",
        size=3,
        file_expires_after=None,
    )
    # a takes the upload into `completing`, then stops sending heartbeats (as if killed).
    meta = a.backends.meta
    assert await meta.set_upload_status(
        upload.id, old="pending", new="completing", file_id="file-never-made", owner=a.instance.id
    )
    uploads_b = b.uploads
    await uploads_b.recover()  # a is alive: its completion is its own
    assert (await meta.get_upload("p", upload.id)).status == "completing"  # type: ignore[union-attr]
    abandoned = await b.backends.meta.abandoned_completions(b.instance.id, now=int(time.time()) + 4)
    assert [u.id for u in abandoned] == [upload.id]


# --- what a review found (each test fails without its fix) --------------------------------------


class _CommitsButReportsFailure(DelegatingBlobs):
    """A backend whose commit stores the bytes yet reports an error, as a timed-out final
    request of a multipart upload can."""

    async def commit(self, staged: Sequence[StagedBlob]) -> list[bool | Exception]:
        await self.inner.commit(staged)
        return [OSError("the request timed out") for _ in staged]


async def test_a_failed_commit_does_not_pin_its_blob(
    settings: SettingsFactory, opened: Callable[..., Awaitable[Services]]
) -> None:
    s = settings()
    store = await opened(s, wrap_blobs=_CommitsButReportsFailure)
    with pytest.raises(OSError, match="timed out"):
        await create(store, b"landed after all")
    # Its claim ended with the failure, so the blob nothing refers to is reclaimed at once
    # (a claim left behind would keep every reclaim and sweep off it for good).
    assert await stored_digests(s) == set()


class _EndReclaimFailsOnce(SqliteMetadata):
    failed = False

    async def end_reclaim(self, digests: Sequence[str], instance: str) -> None:
        if not self.failed:
            self.failed = True
            raise StorageBusy("the database went away for a moment")
        await super().end_reclaim(digests, instance)


async def test_a_failed_end_of_reclaim_is_retried_and_the_delete_still_answers(
    tmp_path: Path,
) -> None:
    settings = StoreSettings(tmp_path, lease_seconds=3)
    meta = await _EndReclaimFailsOnce.open(tmp_path / "filesd.db")
    assert isinstance(meta, _EndReclaimFailsOnce)
    blobs = BlobDir(tmp_path)
    await blobs.prepare()
    store = await Services.over(Backends(meta, blobs), settings)
    try:
        file_id = await create(store, b"deleted, then uploaded again")
        await store.files.delete("p", file_id)  # the reclaim's end fails: still a delete
        assert meta.failed
        # Until the end is retried, the digest is under reclaim: an upload of the same bytes
        # waits for it (the heartbeat loop retries it), then stores them.
        again = await create(store, b"deleted, then uploaded again")
        assert await content_of(store, "p", again) == b"deleted, then uploaded again"
    finally:
        await store.close()


async def test_an_empty_shared_database_over_a_bucket_in_use_is_refused(
    shared_bytes: SettingsFactory,
    opened: Callable[..., Awaitable[Services]],
    postgres_server: Any,
) -> None:
    s = shared_bytes("a")
    store = await opened(s)
    await create(store, b"bytes of the real database's files")
    with postgres_server.database() as other:
        wrong = replace(shared_bytes("b"), database=other)
        with pytest.raises(StorageUnavailable, match=r"storage\.database") as refused:
            await Services.open(wrong)
        assert "1 blob(s)" in str(refused.value)
        assert sha(b"bytes of the real database's files") in await stored_digests(s)
        # On purpose: --new-database.
        fresh = await opened(wrong, new_database=True)
        assert fresh.shared


async def test_fsck_removes_a_corrupt_object_so_the_right_bytes_can_come_back(
    shared_bytes: SettingsFactory, opened: Callable[..., Awaitable[Services]], s3_bucket: Any
) -> None:
    store = await opened(shared_bytes("a"))
    # Above the size kept in memory: the check reads the bucket, not a cached copy.
    content = b"the right bytes, later damaged in the bucket " * 4000
    damaged = await create(store, content)
    key = next(k for k in s3_bucket.object_keys() if k.endswith(sha(content)))
    client = s3_bucket.client()
    try:
        client.put_object(Bucket=s3_bucket.bucket, Key=key, Body=b"bit rot")
    finally:
        client.close()
    audit = await store.fsck(repair=True)
    assert audit.corrupt == [sha(content)]
    assert (await store.files.get("p", damaged)).status == "error"
    assert key not in s3_bucket.object_keys()
    # Uploaded again, the right bytes are stored (not deduplicated onto the wrong ones)...
    again = await create(store, content)
    assert await content_of(store, "p", again) == content
    # ...and the next fsck serves the damaged file again.
    assert (await store.fsck(repair=True)).restored == [sha(content)]
    assert (await store.files.get("p", damaged)).status == "processed"
    assert await content_of(store, "p", damaged) == content
