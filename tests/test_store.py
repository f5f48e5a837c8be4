"""The store service: dedupe, blob reclaim, races, orphan sweeping, without HTTP."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from filesd.api.app import create_app
from filesd.api.appkeys import SERVICES
from filesd.models import FileRecord
from filesd.services.core import Services
from filesd.services.errors import (
    BlobMissing,
    CursorNotFound,
    DataDirLocked,
    FileIdTaken,
    FileNotFound,
    UploadNotPending,
)
from filesd.services.files import ListQuery, Received
from filesd.services.settings import StoreSettings
from filesd.services.uploads import UploadService
from filesd.storage.blobdir import BlobDir

from .conftest import ALPHA, ClientFactory, chunks_of, make_config, upload, upload_form


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Services]:
    s = await Services.open(StoreSettings(tmp_path))
    yield s
    await s.close()


async def stage(store: Services, content: bytes) -> Received:
    return await store.files.receive(chunks_of(content))


async def create(store: Services, content: bytes, project: str = "p", **kw: object) -> str:
    staged = await stage(store, content)
    record = await store.files.create(
        project,
        staged,
        filename=str(kw.get("filename", "f.txt")),
        purpose=str(kw.get("purpose", "assistants")),
    )
    return record.id


async def read_content(store: Services, project: str, file_id: str) -> bytes:
    record = await store.files.get(project, file_id)
    return b"".join([chunk async for chunk in store.files.read_range(record)])


def blob_path(store: Services, record: FileRecord) -> Path:
    return BlobDir(store.settings.data_dir).path_for(record.sha256)


def blob_count(root: Path) -> int:
    return len(list(BlobDir(root).digests_sync()))


async def test_two_uploads_of_the_same_bytes_are_two_files_and_one_blob(
    store: Services, tmp_path: Path
) -> None:
    a = await create(store, b"same bytes")
    b = await create(store, b"same bytes")
    assert a != b
    assert blob_count(tmp_path) == 1
    await store.files.delete("p", a)
    assert await read_content(store, "p", b) == b"same bytes"
    await store.files.delete("p", b)
    assert blob_count(tmp_path) == 0


async def test_delete_is_soft_and_a_second_delete_is_not_found(store: Services) -> None:
    file_id = await create(store, b"x")
    deleted = await store.files.delete("p", file_id)
    assert deleted.id == file_id
    for call in (store.files.get, store.files.delete):
        with pytest.raises(FileNotFound):
            await call("p", file_id)
    page = await store.files.list("p", ListQuery())
    assert page.files == [] and page.total == 0


async def test_projects_never_see_each_other(store: Services) -> None:
    file_id = await create(store, b"secret", project="alpha")
    for call in (store.files.get, store.files.delete):
        with pytest.raises(FileNotFound):
            await call("beta", file_id)
    assert (await store.files.list("beta", ListQuery())).total == 0
    with pytest.raises(CursorNotFound):
        await store.files.list("beta", ListQuery(after=file_id))
    assert (await store.files.get("alpha", file_id)).id == file_id


async def test_paging_by_offset_and_cursor_covers_every_file_once(store: Services) -> None:
    # Created within one second: insertion order breaks the tie.
    ids = [await create(store, str(i).encode()) for i in range(7)]
    newest_first = list(reversed(ids))
    seen: list[str] = []
    after = None
    while True:
        page = await store.files.list("p", ListQuery(limit=3, after=after))
        assert page.total == 7
        seen += [f.id for f in page.files]
        if not page.has_more:
            break
        after = page.files[-1].id
    assert seen == newest_first
    by_offset = [
        f.id
        for offset in range(0, 7, 2)
        for f in (await store.files.list("p", ListQuery(limit=2, offset=offset))).files
    ]
    assert by_offset == newest_first
    asc = await store.files.list("p", ListQuery(order="asc", limit=100))
    assert [f.id for f in asc.files] == ids and not asc.has_more


async def test_cursor_survives_deletion_of_its_file(store: Services) -> None:
    ids = [await create(store, str(i).encode()) for i in range(4)]
    await store.files.delete("p", ids[2])
    page = await store.files.list("p", ListQuery(after=ids[2]))
    assert [f.id for f in page.files] == [ids[1], ids[0]]


async def test_concurrent_upload_and_delete_of_the_same_bytes(
    store: Services, tmp_path: Path
) -> None:
    # Each round deletes the only file holding a blob while an upload of the same bytes
    # commits. The race to catch: the upload finds the blob already stored, the delete sees no
    # other file referring to it, and reclaims it under the upload's new row. It needs the
    # upload to start near the end of the delete's first database step, so the rounds sweep
    # the offset between the two starts, in both orders, in steps of 100 microseconds.
    content = os.urandom(64 * 1024)
    digest = hashlib.sha256(content).digest()
    for offset in range(-10, 50):
        old = await create(store, content)
        staged = await stage(store, content)
        upload = store.files.create("p", staged, filename="n", purpose="assistants")
        delete = store.files.delete("p", old)
        first, second = (delete, upload) if offset >= 0 else (upload, delete)
        first_task = asyncio.create_task(first)
        await asyncio.sleep(abs(offset) * 0.0001)
        await second
        await first_task
        records = (await store.files.list("p", ListQuery())).files
        assert len(records) == 1, f"offset {offset}"
        stored = await read_content(store, "p", records[0].id)
        assert hashlib.sha256(stored).digest() == digest, f"offset {offset}"
        await store.files.delete("p", records[0].id)
    assert blob_count(tmp_path) == 0


async def test_orphan_blobs_are_swept_and_referenced_ones_kept(
    store: Services, tmp_path: Path
) -> None:
    kept = await create(store, b"kept")
    # A crash between linking a blob and committing its row leaves exactly this state.
    orphan = await stage(store, b"orphan")
    assert await BlobDir(tmp_path).commit([orphan.staged]) == [True]
    assert blob_count(tmp_path) == 2
    assert await store.maintenance.sweep_orphans() == 1
    assert blob_count(tmp_path) == 1
    assert await read_content(store, "p", kept) == b"kept"


async def test_a_missing_blob_is_reported_not_hidden(store: Services, tmp_path: Path) -> None:
    file_id = await create(store, b"doomed" * 20_000)  # too large to be kept in memory
    record = await store.files.get("p", file_id)
    blob_path(store, record).unlink()
    reads = (
        lambda: store.files.open_local(record),
        lambda: read_content(store, "p", file_id),
        lambda: store.files.read_small(record),
    )
    for read in reads:
        with pytest.raises(BlobMissing) as info:
            await read()
        assert info.value.file_id == file_id and info.value.digest == record.sha256


async def test_discarded_uploads_leave_nothing(store: Services, tmp_path: Path) -> None:
    staged = await stage(store, b"never mind")
    await store.files.discard(staged)
    assert os.listdir(tmp_path / "tmp") == []
    assert blob_count(tmp_path) == 0


async def test_one_process_per_data_dir(store: Services, tmp_path: Path) -> None:
    with pytest.raises(DataDirLocked):
        await Services.open(StoreSettings(tmp_path))


async def test_openai_style_ids(tmp_path: Path) -> None:
    s = await Services.open(StoreSettings(tmp_path, id_format="openai"))
    try:
        file_id = await create(s, b"x")
    finally:
        await s.close()
    assert file_id.startswith("file-") and len(file_id) == 29
    assert file_id[5:].isalnum() and file_id[5:].isascii()


async def test_expiry_sets_expires_at_and_hides_the_file(tmp_path: Path) -> None:
    now = [1_000_000.0]
    s = await Services.open(StoreSettings(tmp_path), clock=lambda: now[0])
    try:
        staged = await stage(s, b"short-lived")
        record = await s.files.create(
            "p", staged, filename="f", purpose="batch", expires_after=3600
        )
        assert record.expires_at == 1_000_000 + 3600
        assert (await s.files.get("p", record.id)).expires_at == record.expires_at
        now[0] += 3600
        with pytest.raises(FileNotFound):
            await s.files.get("p", record.id)
        assert (await s.files.list("p", ListQuery())).total == 0
    finally:
        await s.close()


# --- uploads in parts ------------------------------------------------------------------------


async def new_upload(
    uploads: UploadService, chunks: list[bytes], project: str = "p"
) -> tuple[str, list[str]]:
    """A pending upload of `project` holding `chunks` as its parts: (upload id, part ids)."""
    upload = await uploads.create(
        project,
        filename="f",
        purpose="batch",
        mime_type="text/plain",
        size=sum(map(len, chunks)),
        file_expires_after=None,
    )
    ids = []
    for chunk in chunks:
        part = await uploads.add_part(
            project, upload.id, await uploads.receive_part(chunks_of(chunk))
        )
        ids.append(part.id)
    return upload.id, ids


async def test_recovery_finishes_a_completion_whose_file_was_committed(
    store: Services, tmp_path: Path
) -> None:
    uploads = store.uploads
    upload_id, _ = await new_upload(uploads, [b"ab", b"cd"])
    # A crash after the file was committed but before the upload was marked completed:
    file_id = store.files.new_file_id()
    meta, blobs = store.backends.meta, store.backends.blobs
    assert await meta.set_upload_status(upload_id, old="pending", new="completing", file_id=file_id)
    parts = await meta.get_parts(upload_id)
    joined, _ = await blobs.concat_parts([p.token for p in parts])
    content = Received(joined.size, joined.sha256, joined)
    await store.files.create("p", content, filename="f", purpose="batch", file_id=file_id)

    await uploads.recover()
    upload = await meta.get_upload("p", upload_id)
    assert upload is not None and upload.status == "completed" and upload.file_id == file_id
    assert await meta.get_parts(upload_id) == []
    assert os.listdir(tmp_path / "parts") == []


async def test_recovery_reopens_a_completion_that_did_not_commit(
    store: Services, tmp_path: Path
) -> None:
    uploads = store.uploads
    upload_id, part_ids = await new_upload(uploads, [b"ab", b"cd"])
    meta = store.backends.meta
    assert await meta.set_upload_status(
        upload_id, old="pending", new="completing", file_id=store.files.new_file_id()
    )
    await uploads.recover()
    upload = await meta.get_upload("p", upload_id)
    assert upload is not None and upload.status == "pending"
    _, record = await uploads.complete("p", upload_id, part_ids, None)
    assert await read_content(store, "p", record.id) == b"abcd"


async def test_recovery_removes_part_files_without_a_row(tmp_path: Path) -> None:
    store = await Services.open(StoreSettings(tmp_path))
    try:
        uploads = store.uploads
        await new_upload(uploads, [b"kept"])
        stray = tmp_path / "parts" / ("f" * 32)
        stray.write_bytes(b"a part saved just before a crash")
        os.utime(stray, (1, 1))
        await uploads.recover()
        assert not stray.exists()
        assert len(os.listdir(tmp_path / "parts")) == 1  # the recorded part is kept
    finally:
        await store.close()


async def test_a_part_racing_a_completion_is_refused(store: Services, tmp_path: Path) -> None:
    uploads = store.uploads
    upload_id, part_ids = await new_upload(uploads, [b"ab"])
    late = await uploads.receive_part(chunks_of(b"late"))
    await uploads.complete("p", upload_id, part_ids, None)
    with pytest.raises(UploadNotPending):
        await uploads.add_part("p", upload_id, late)
    assert os.listdir(tmp_path / "parts") == []
    assert os.listdir(tmp_path / "tmp") == []


async def test_expired_files_are_swept_and_shared_blobs_kept(tmp_path: Path) -> None:
    now = [1_000_000.0]
    s = await Services.open(StoreSettings(tmp_path), clock=lambda: now[0])
    try:
        short = await s.files.create(
            "p", await stage(s, b"short"), filename="a", purpose="batch", expires_after=3600
        )
        shared = await s.files.create(
            "p", await stage(s, b"shared"), filename="b", purpose="batch", expires_after=3600
        )
        keeper = await s.files.create("p", await stage(s, b"shared"), filename="c", purpose="x")
        now[0] += 3599
        assert await s.maintenance.sweep_expired() == 0
        now[0] += 1
        assert await s.maintenance.sweep_expired() == 2
        assert blob_count(tmp_path) == 1  # "shared" is still used by the keeper
        assert await read_content(s, "p", keeper.id) == b"shared"
        for record in (short, shared):
            with pytest.raises(FileNotFound):
                await s.files.delete("p", record.id)
    finally:
        await s.close()


async def test_default_expiry_by_purpose(tmp_path: Path) -> None:
    s = await Services.open(StoreSettings(tmp_path, default_expires_after={"batch": 86400}))
    try:
        batch = await s.files.create("p", await stage(s, b"b"), filename="b", purpose="batch")
        other = await s.files.create("p", await stage(s, b"o"), filename="o", purpose="vision")
        explicit = await s.files.create(
            "p", await stage(s, b"e"), filename="e", purpose="batch", expires_after=3600
        )
    finally:
        await s.close()
    assert batch.expires_at == batch.created_at + 86400
    assert other.expires_at is None
    assert explicit.expires_at == explicit.created_at + 3600


async def test_small_blobs_are_cached_within_a_bound(tmp_path: Path) -> None:
    s = await Services.open(StoreSettings(tmp_path, small_cache_bytes=10_000))
    try:
        records = [
            await s.files.create("p", await stage(s, bytes([i]) * 4000), filename="f", purpose="x")
            for i in range(3)
        ]
        # Written just now, so kept (write-through) up to the bound: the oldest was pushed out.
        for record in records:
            blob_path(s, record).unlink()
        for record in records[1:]:
            body = await s.files.read_small(record)
            assert body == bytes([records.index(record)]) * 4000
        with pytest.raises(BlobMissing):
            await s.files.read_small(records[0])
        # Large content is never kept.
        big = await s.files.create("p", await stage(s, b"x" * 70_000), filename="b", purpose="x")
        blob_path(s, big).unlink()
        with pytest.raises(BlobMissing):
            await s.files.read_small(big)
    finally:
        await s.close()


async def test_a_sweep_finishes_what_a_crash_cut_short(store: Services, tmp_path: Path) -> None:
    uploads = store.uploads
    upload_id, _ = await new_upload(uploads, [b"ab"])
    # A crash after the upload was marked cancelled, before its parts were removed:
    meta = store.backends.meta
    assert await meta.set_upload_status(upload_id, old="pending", new="cancelled")
    assert os.listdir(tmp_path / "parts") != []
    await uploads.sweep_expired()
    assert os.listdir(tmp_path / "parts") == []
    assert await meta.get_parts(upload_id) == []


# --- seeded ids, group commits, big imports --------------------------------------------------


async def test_a_taken_id_fails_only_its_own_file_in_a_group_commit(tmp_path: Path) -> None:
    s = await Services.open(StoreSettings(tmp_path, id_seed=7))
    try:
        # A row already holds the id the store makes next (as after a restart that repeated
        # the seeded sequence): the first file of the next group collides.
        upcoming = copy.deepcopy(s.files.ids).file_id()
        taken = await stage(s, b"taken")
        await s.files.create("p", taken, filename="t", purpose="batch", file_id=upcoming)
        staged = [await stage(s, b"file %d" % i) for i in range(4)]
        results = await asyncio.gather(
            *(
                s.files.create("p", st, filename=f"f{i}", purpose="batch")
                for i, st in enumerate(staged)
            ),
            return_exceptions=True,
        )
        assert isinstance(results[0], FileIdTaken) and results[0].file_id == upcoming
        stored = [r for r in results if isinstance(r, FileRecord)]
        assert len(stored) == 3
        for i, record in enumerate(stored, start=1):
            assert await read_content(s, "p", record.id) == b"file %d" % i
        page = await s.files.list("p", ListQuery())
        assert page.total == 4  # the taken one and the three
        # The refused file's blob went with it; the others' stay.
        assert await s.maintenance.sweep_orphans() == 0
        assert sum(len(files) for _, _, files in os.walk(tmp_path / "blobs")) == 4
    finally:
        await s.close()


async def _seeded_ids(data_dir: Path, runs: int) -> list[list[str]]:
    """The ids of two files made in each of `runs` openings of a seeded store."""
    made = []
    for _ in range(runs):
        s = await Services.open(StoreSettings(data_dir, id_seed=42))
        try:
            made.append([await create(s, b"x%d" % i) for i in range(2)])
        finally:
            await s.close()
    return made


async def test_seeded_ids_continue_after_a_restart_and_stay_reproducible(
    tmp_path: Path,
) -> None:
    first = await _seeded_ids(tmp_path / "a", 3)
    ids = [i for run in first for i in run]
    assert len(set(ids)) == 6  # no run repeats another's ids (they would collide)
    assert await _seeded_ids(tmp_path / "b", 3) == first  # and fresh dirs agree


async def test_a_restarted_seeded_server_stores_new_files(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path / "data", testing={"id_seed": 5})
    made = []
    for _ in range(2):  # start, upload, stop; start again, upload: 200s, no id repeated
        client = await aiohttp_client(create_app(config))
        made += [(await upload(client, b"same %d" % i))["id"] for i in range(3)]
        await client.close()
    assert len(set(made)) == 6
    client = await aiohttp_client(create_app(config))
    listing = await (await client.get("/v1/files", headers=ALPHA)).json()
    assert listing["total"] == 6


async def test_import_of_30000_files(store: Services) -> None:
    # One shared blob, 30,000 entries: more rows than one statement may bind variables for.
    content = b"shared"
    digest = hashlib.sha256(content).hexdigest()
    count = 30_000
    files = [
        {
            "id": f"file-{i:06d}",
            "project": "p",
            "filename": f"f{i}.txt",
            "purpose": "batch",
            "bytes": len(content),
            "sha256": digest,
            "created_at": 1_700_000_000 + i,
            "expires_at": None,
            "status": "processed",
            "status_details": None,
        }
        for i in range(count)
    ]
    manifest = json.dumps({"format": "filesd-export", "version": 1, "files": files}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("filesd-export.json", manifest), (f"blobs/{digest}", content)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(archive), 1 << 20):
            yield archive[start : start + (1 << 20)]

    assert await store.archives.import_(chunks(), {"batch"}) == count
    page = await store.files.list("p", ListQuery(limit=1000, order="asc"))
    assert page.total == count and page.files[0].id == "file-000000"
    ids = [str(f["id"]) for f in files]
    assert len(await store.backends.meta.existing_ids(ids)) == count


async def test_a_taken_id_is_not_named_to_the_client(
    aiohttp_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The taken id may be another project's file: the 500 must not name it (the log does).
    config = make_config(tmp_path / "data", testing={"id_seed": 3})
    client = await aiohttp_client(create_app(config))
    store = client.app[SERVICES]
    upcoming = copy.deepcopy(store.files.ids).file_id()
    await store.files.create(
        "beta", await stage(store, b"beta's"), filename="b", purpose="batch", file_id=upcoming
    )
    resp = await client.post("/v1/files", data=upload_form(b"alpha's"), headers=ALPHA)
    body = await resp.json()
    assert resp.status == 500 and body["error"]["code"] == "file_id_taken", body
    assert upcoming not in json.dumps(body)
    assert "a file id this server made is taken already" in body["error"]["message"].lower()
    assert upcoming in caplog.text
