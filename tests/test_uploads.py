"""The Uploads API end to end: parts, completion, cancellation, expiry, and every misuse."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from filesd.api.app import create_app
from filesd.api.appkeys import SERVICES, UPLOADS
from filesd.services.core import Services
from filesd.services.errors import Md5Mismatch, QuotaExceeded, UploadNotPending
from filesd.services.files import ListQuery
from filesd.services.settings import StoreSettings
from filesd.services.uploads import UploadService
from filesd.storage.base import DelegatingBlobs, StagedBlob, StorageBusy
from filesd.storage.sqlite import SqliteMetadata
from filesd.storage.sqlite_writes import PART_FACTS

from .conftest import (
    ALPHA,
    BETA,
    Client,
    ClientFactory,
    blob_files,
    chunks_of,
    make_config,
    temp_files,
    wait_until,
)
from .test_store import new_upload


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, tmp_path: Path, clock: Clock
) -> AsyncIterator[Client]:
    config = make_config(tmp_path / "data", limits={"max_part_bytes": 1024 * 1024})
    yield await aiohttp_client(create_app(config, clock=clock))


def part_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "data" / "parts").iterdir())


async def create_upload(
    client: Client, size: int, headers: dict[str, str] = ALPHA, **kw: Any
) -> Any:
    body = {"bytes": size, "filename": "big.jsonl", "mime_type": "text/jsonl", "purpose": "batch"}
    body.update(kw)
    resp = await client.post("/v1/uploads", json=body, headers=headers)
    data = await resp.json()
    assert resp.status == 200, data
    return data


async def add_part(
    client: Client, upload_id: str, data: bytes, headers: dict[str, str] = ALPHA
) -> Any:
    form = aiohttp.FormData()
    form.add_field("data", io.BytesIO(data), filename="upload")
    return await client.post(f"/v1/uploads/{upload_id}/parts", data=form, headers=headers)


async def part_id(client: Client, upload_id: str, data: bytes) -> str:
    resp = await add_part(client, upload_id, data)
    body = await resp.json()
    assert resp.status == 200, body
    return str(body["id"])


async def complete(client: Client, upload_id: str, part_ids: list[str], **kw: Any) -> Any:
    return await client.post(
        f"/v1/uploads/{upload_id}/complete", json={"part_ids": part_ids, **kw}, headers=ALPHA
    )


async def assert_400(resp: Any, param: str | None = None, status: int = 400) -> str:
    body = await resp.json()
    assert resp.status == status, body
    assert body["error"]["param"] == param, body
    assert body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["message"])


async def test_parts_become_one_file_in_the_order_given(client: Client, tmp_path: Path) -> None:
    chunks = [os.urandom(300_000), os.urandom(200_000), os.urandom(7)]
    upload = await create_upload(client, sum(map(len, chunks)))
    assert upload["object"] == "upload"
    assert upload["id"].startswith("upload_")
    assert upload["status"] == "pending"
    assert upload["expires_at"] == upload["created_at"] + 3600
    assert upload["file"] is None

    # Parts arrive in parallel and out of order; part_ids fixes the order.
    ids = await asyncio.gather(*(part_id(client, upload["id"], c) for c in reversed(chunks)))
    ids.reverse()
    content = b"".join(chunks)
    resp = await complete(client, upload["id"], ids, md5=md5(content))
    done = await resp.json()
    assert resp.status == 200, done
    assert done["status"] == "completed"
    assert done["id"] == upload["id"]
    file = done["file"]
    assert file["object"] == "file" and file["bytes"] == len(content)
    assert file["filename"] == "big.jsonl" and file["purpose"] == "batch"
    assert file["status"] == "processed"

    got = await client.get(f"/v1/files/{file['id']}/content", headers=ALPHA)
    assert await got.read() == content
    listing = await (await client.get("/v1/files", headers=ALPHA)).json()
    assert [f["id"] for f in listing["data"]] == [file["id"]]
    assert part_files(tmp_path) == [] and temp_files(tmp_path / "data") == []

    # The same bytes through POST /v1/files: two files, one blob.
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(content), filename="again.jsonl")
    assert (await client.post("/v1/files", data=form, headers=ALPHA)).status == 200
    assert len(blob_files(tmp_path / "data")) == 1


async def test_part_object(client: Client) -> None:
    upload = await create_upload(client, 3)
    resp = await add_part(client, upload["id"], b"abc")
    part = await resp.json()
    assert part["object"] == "upload.part"
    assert part["id"].startswith("part_")
    assert part["upload_id"] == upload["id"]
    assert isinstance(part["created_at"], int)


async def test_expires_after_sets_the_files_expiry(client: Client, clock: Clock) -> None:
    upload = await create_upload(
        client, 1, purpose="assistants", expires_after={"anchor": "created_at", "seconds": 7200}
    )
    done = await (
        await complete(client, upload["id"], [await part_id(client, upload["id"], b"x")])
    ).json()
    assert done["file"]["expires_at"] == done["file"]["created_at"] + 7200


async def test_wrong_md5_size_and_parts_leave_it_pending(client: Client, tmp_path: Path) -> None:
    upload = await create_upload(client, 6)
    a = await part_id(client, upload["id"], b"abc")
    b = await part_id(client, upload["id"], b"def")

    message = await assert_400(await complete(client, upload["id"], [a, b], md5="0" * 32), "md5")
    assert "does not match" in message
    message = await assert_400(await complete(client, upload["id"], [a]), "part_ids")
    assert "3 bytes" in message and "bytes=6" in message
    await assert_400(await complete(client, upload["id"], [a, "part_nope"]), "part_ids")
    await assert_400(await complete(client, upload["id"], [a, a]), "part_ids")
    for bad in ({"part_ids": "a"}, {"part_ids": [1]}, {}, {"part_ids": [a], "md5": "xyz"}):
        resp = await client.post(f"/v1/uploads/{upload['id']}/complete", json=bad, headers=ALPHA)
        assert resp.status == 400
    assert blob_files(tmp_path / "data") == [] and temp_files(tmp_path / "data") == []
    assert len(part_files(tmp_path)) == 2
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 0

    # Still pending: a correct completion goes through.
    resp = await complete(client, upload["id"], [b, a], md5=md5(b"defabc"))
    assert resp.status == 200
    file_id = (await resp.json())["file"]["id"]
    got = await client.get(f"/v1/files/{file_id}/content", headers=ALPHA)
    assert await got.read() == b"defabc"


async def test_finished_uploads_refuse_everything(client: Client, tmp_path: Path) -> None:
    done = await create_upload(client, 1)
    p = await part_id(client, done["id"], b"x")
    assert (await complete(client, done["id"], [p])).status == 200
    cancelled = await create_upload(client, 1)
    await part_id(client, cancelled["id"], b"y")
    resp = await client.post(
        f"/v1/uploads/{cancelled['id']}/cancel",
        data=b"",
        headers={**ALPHA, "Content-Type": "application/json"},
    )
    body = await resp.json()
    assert resp.status == 200 and body["status"] == "cancelled" and body["file"] is None
    assert part_files(tmp_path) == []

    for upload, status in ((done, "completed"), (cancelled, "cancelled")):
        message = await assert_400(await add_part(client, upload["id"], b"z"))
        assert status in message
        await assert_400(await complete(client, upload["id"], [p]))
        resp = await client.post(f"/v1/uploads/{upload['id']}/cancel", json={}, headers=ALPHA)
        await assert_400(resp)
    assert part_files(tmp_path) == [] and temp_files(tmp_path / "data") == []


async def test_unknown_and_foreign_uploads_are_404(client: Client) -> None:
    upload = await create_upload(client, 1)
    for target, headers in (("upload_nope", ALPHA), (upload["id"], BETA)):
        resp = await add_part(client, target, b"x", headers=headers)
        message = await assert_400(resp, "upload_id", status=404)
        assert message == f"No such Upload object: {target}"
        bodies: tuple[tuple[str, dict[str, object]], ...] = (
            ("complete", {"part_ids": []}),
            ("cancel", {}),
        )
        for action, body in bodies:
            resp = await client.post(f"/v1/uploads/{target}/{action}", json=body, headers=headers)
            await assert_400(resp, "upload_id", status=404)
    # The owner still sees it pending.
    assert (await add_part(client, upload["id"], b"x")).status == 200


async def test_expired_uploads_are_refused_and_swept(
    client: Client, clock: Clock, tmp_path: Path
) -> None:
    upload = await create_upload(client, 2)
    p = await part_id(client, upload["id"], b"a")
    clock.now += 3600
    assert "expired" in await assert_400(await add_part(client, upload["id"], b"b"))
    assert "expired" in await assert_400(await complete(client, upload["id"], [p]))
    # Swept by this call or by the app's own background sweep, whichever runs first. A sweep
    # meeting the other's write gives up until its next round (StorageBusy): that is fine here.
    with contextlib.suppress(StorageBusy):
        await client.app[UPLOADS].sweep_expired()
    await wait_until(lambda: not part_files(tmp_path), what="the parts removed")
    stored = await client.app[SERVICES].backends.meta.get_upload("alpha", upload["id"])
    assert stored is not None and stored.status == "expired"


async def test_part_size_limits(client: Client, tmp_path: Path) -> None:
    upload = await create_upload(client, 3 * 1024 * 1024)
    resp = await add_part(client, upload["id"], os.urandom(1024 * 1024 + 1))
    assert "at most 1048576 bytes" in await assert_400(resp, "data")
    assert part_files(tmp_path) == [] and temp_files(tmp_path / "data") == []
    assert (await add_part(client, upload["id"], os.urandom(1024 * 1024))).status == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"filename": "f", "mime_type": "t", "purpose": "batch"}, "bytes"),
        ({"bytes": "1", "filename": "f", "mime_type": "t", "purpose": "batch"}, "bytes"),
        ({"bytes": True, "filename": "f", "mime_type": "t", "purpose": "batch"}, "bytes"),
        ({"bytes": -1, "filename": "f", "mime_type": "t", "purpose": "batch"}, "bytes"),
        ({"bytes": 8 * 2**30 + 1, "filename": "f", "mime_type": "t", "purpose": "batch"}, "bytes"),
        ({"bytes": 1, "mime_type": "t", "purpose": "batch"}, "filename"),
        ({"bytes": 1, "filename": "a\nb", "mime_type": "t", "purpose": "batch"}, "filename"),
        ({"bytes": 1, "filename": "f", "purpose": "batch"}, "mime_type"),
        ({"bytes": 1, "filename": "f", "mime_type": "", "purpose": "batch"}, "mime_type"),
        ({"bytes": 1, "filename": "f", "mime_type": "t", "purpose": "nope"}, "purpose"),
        ({"bytes": 1, "filename": "f", "mime_type": "t"}, "purpose"),
        (
            {"bytes": 1, "filename": "f", "mime_type": "t", "purpose": "batch", "x": 1},
            "x",
        ),
        (
            {
                "bytes": 1,
                "filename": "f",
                "mime_type": "t",
                "purpose": "batch",
                "expires_after": {"anchor": "created_at", "seconds": 10},
            },
            "expires_after[seconds]",
        ),
        (
            {
                "bytes": 1,
                "filename": "f",
                "mime_type": "t",
                "purpose": "batch",
                "expires_after": "soon",
            },
            "expires_after",
        ),
    ],
)
async def test_bad_upload_bodies(client: Client, body: dict[str, Any], param: str) -> None:
    await assert_400(await client.post("/v1/uploads", json=body, headers=ALPHA), param)


async def test_an_empty_filename_is_refused_in_words_about_the_filename(client: Client) -> None:
    """A JSON route: nothing about multipart parts (the words of a form without a file)."""
    body = {"bytes": 1, "filename": "", "mime_type": "t", "purpose": "batch"}
    resp = await client.post("/v1/uploads", json=body, headers=ALPHA)
    assert (resp.status, (await resp.json())["error"]) == (
        400,
        {
            "message": "Invalid 'filename': string too short. Expected a string with minimum "
            "length 1, but got an empty string instead.",
            "type": "invalid_request_error",
            "param": "filename",
            "code": "string_below_min_length",
        },
    )


@pytest.mark.parametrize("raw", [b"", b"{", b"[1]", b"\xff\xfe", b"null"])
async def test_bodies_that_are_not_json_objects(client: Client, raw: bytes) -> None:
    resp = await client.post(
        "/v1/uploads", data=raw, headers={**ALPHA, "Content-Type": "application/json"}
    )
    await assert_400(resp)


async def test_parts_need_a_data_field(client: Client, tmp_path: Path) -> None:
    upload = await create_upload(client, 1)
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b"x"), filename="upload")
    resp = await client.post(f"/v1/uploads/{upload['id']}/parts", data=form, headers=ALPHA)
    await assert_400(resp, "file")
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("other", "x")
    resp = await client.post(f"/v1/uploads/{upload['id']}/parts", data=form, headers=ALPHA)
    await assert_400(resp, "other")
    assert part_files(tmp_path) == [] and temp_files(tmp_path / "data") == []


async def test_recovery_is_done_before_serving(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    # A data dir with an upload a crash left mid-completion: it is reopened before the first
    # request is served, so recovery can never race a completion that is really under way.
    config = make_config(tmp_path / "data")
    first = await aiohttp_client(create_app(config))
    upload = await create_upload(first, 2)
    p = await part_id(first, upload["id"], b"ab")
    store = first.app[SERVICES]
    assert await store.backends.meta.set_upload_status(
        upload["id"], old="pending", new="completing", file_id=store.files.new_file_id()
    )
    await first.close()
    second = await aiohttp_client(create_app(config))
    resp = await complete(second, upload["id"], [p])
    assert resp.status == 200, await resp.json()


# --- hostile clients: parts beyond the declared size or the quota, costly completions -------


async def test_parts_cannot_hold_more_than_the_upload_declared(
    client: Client, tmp_path: Path
) -> None:
    upload = await create_upload(client, 1)
    resp = await add_part(client, upload["id"], b"xy")
    message = await assert_400(resp, "data")
    assert "1 bytes the upload was created with" in message
    assert part_files(tmp_path) == [] and temp_files(tmp_path / "data") == []
    p = await part_id(client, upload["id"], b"x")
    await assert_400(await add_part(client, upload["id"], b"y"), "data")
    assert len(part_files(tmp_path)) == 1
    assert (await complete(client, upload["id"], [p])).status == 200


async def test_concurrent_parts_cannot_overshoot_the_declared_size(
    client: Client, tmp_path: Path
) -> None:
    upload = await create_upload(client, 10)
    resps = await asyncio.gather(*(add_part(client, upload["id"], b"abcd") for _ in range(6)))
    statuses = sorted(r.status for r in resps)
    assert statuses == [200, 200, 400, 400, 400, 400], statuses
    for resp in resps:
        if resp.status == 400:
            await assert_400(resp, "data")
    assert len(part_files(tmp_path)) == 2


async def test_parts_count_toward_the_projects_byte_quota(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path / "data", limits={"max_bytes_per_project": 100})
    client = await aiohttp_client(create_app(config))
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(b"f" * 60), filename="f.jsonl")
    assert (await client.post("/v1/files", data=form, headers=ALPHA)).status == 200
    first = await create_upload(client, 60)
    second = await create_upload(client, 20)
    await part_id(client, first["id"], b"a" * 30)
    await part_id(client, second["id"], b"b" * 10)  # 60 stored + 30 + 10 pending = 100
    resp = await add_part(client, second["id"], b"c")
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "quota_exceeded", body
    assert len(part_files(tmp_path)) == 2
    # Another project's parts are its own business.
    beta = await create_upload(client, 50, headers=BETA)
    assert (await add_part(client, beta["id"], b"z" * 50, headers=BETA)).status == 200


async def test_repeated_wrong_md5_cancels_the_upload(client: Client, tmp_path: Path) -> None:
    upload = await create_upload(client, 6)
    ids = [await part_id(client, upload["id"], b"abc"), await part_id(client, upload["id"], b"def")]
    for attempt in range(3):
        message = await assert_400(await complete(client, upload["id"], ids, md5="0" * 32), "md5")
        assert ("cancelled after 3 checksum mismatches" in message) == (attempt == 2), message
    message = await assert_400(await complete(client, upload["id"], ids, md5=md5(b"abcdef")))
    assert "cancelled" in message
    assert part_files(tmp_path) == [] and temp_files(tmp_path / "data") == []
    assert blob_files(tmp_path / "data") == []


class CountingBlobs(DelegatingBlobs):
    """Counts what completions cost: bytes joined into staging, and bytes of parts read."""

    written = 0
    md5_reads = 0
    joining = 0
    most_joining = 0
    gate: asyncio.Event | None = None

    async def concat_parts(self, tokens: Any) -> tuple[StagedBlob, str]:
        CountingBlobs.joining += 1
        CountingBlobs.most_joining = max(CountingBlobs.most_joining, CountingBlobs.joining)
        try:
            if CountingBlobs.gate is not None:
                await CountingBlobs.gate.wait()
            staged, digest = await self.inner.concat_parts(tokens)
        finally:
            CountingBlobs.joining -= 1
        CountingBlobs.written += staged.size
        return staged, digest

    async def parts_md5(self, tokens: Any) -> str:
        CountingBlobs.md5_reads += 1
        return await self.inner.parts_md5(tokens)


@pytest.fixture
async def counted(tmp_path: Path) -> AsyncIterator[UploadService]:
    for name in ("written", "md5_reads", "joining", "most_joining"):
        setattr(CountingBlobs, name, 0)
    CountingBlobs.gate = None
    store = await Services.open(StoreSettings(tmp_path), wrap_blobs=CountingBlobs)
    yield store.uploads
    await store.close()


async def test_wrong_md5_completions_write_nothing_and_repeats_cost_nothing(
    counted: UploadService,
) -> None:
    chunks = [os.urandom(512 * 1024) for _ in range(4)]
    upload_id, ids = await new_upload(counted, chunks)
    failures = []
    for _ in range(5):
        with pytest.raises((Md5Mismatch, UploadNotPending)) as caught:
            await counted.complete("p", upload_id, ids, "0" * 32)
        failures.append(caught.value)
    # Nothing was joined (no write, no fsync); the parts were read once (the repeats were
    # remembered); the third mismatch cancelled the upload.
    assert CountingBlobs.written == 0
    assert CountingBlobs.md5_reads == 1
    assert [type(f).__name__ for f in failures] == ["Md5Mismatch"] * 3 + ["UploadNotPending"] * 2
    assert [getattr(f, "cancelled", None) for f in failures[:3]] == [False, False, True]

    # A right md5 joins the parts once.
    upload_id, ids = await new_upload(counted, chunks)
    await counted.complete("p", upload_id, ids, md5(b"".join(chunks)))
    assert CountingBlobs.written == 2 * 1024 * 1024


async def test_one_completion_per_project_at_a_time(counted: UploadService) -> None:
    CountingBlobs.gate = asyncio.Event()
    uploads = [await new_upload(counted, [b"%d" % i]) for i in range(3)]
    other = await new_upload(counted, [b"q"], "q")
    tasks = [asyncio.create_task(counted.complete("p", u, ids, None)) for u, ids in uploads]
    tasks.append(asyncio.create_task(counted.complete("q", *other, None)))
    # Project p's first completion and q's are joining; p's others wait their turn.
    await wait_until(lambda: CountingBlobs.joining == 2, what="two completions joining")
    CountingBlobs.gate.set()
    done = await asyncio.gather(*tasks)
    assert CountingBlobs.most_joining == 2
    assert len({record.id for _, record in done}) == 4


async def test_empty_parts_are_refused(client: Client, tmp_path: Path) -> None:
    upload = await create_upload(client, 1)
    for _ in range(3):
        message = await assert_400(await add_part(client, upload["id"], b""), "data")
        assert "empty" in message and "at least 1 byte" in message
    assert part_files(tmp_path) == [] and temp_files(tmp_path / "data") == []
    p = await part_id(client, upload["id"], b"x")
    assert (await complete(client, upload["id"], [p])).status == 200


async def test_an_upload_has_at_most_max_parts_parts(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path / "data", limits={"max_upload_parts": 3})
    client = await aiohttp_client(create_app(config))
    upload = await create_upload(client, 10)
    ids = [await part_id(client, upload["id"], b"a") for _ in range(3)]
    message = await assert_400(await add_part(client, upload["id"], b"b"), "data")
    assert "3 parts already" in message
    assert len(part_files(tmp_path)) == 3
    # The limit is decided with the insert: parts racing past it are refused too.
    other = await create_upload(client, 10)
    resps = await asyncio.gather(*(add_part(client, other["id"], b"c") for _ in range(6)))
    assert sorted(r.status for r in resps) == [200] * 3 + [400] * 3
    assert len(part_files(tmp_path)) == 6
    assert (await complete(client, upload["id"], ids)).status == 400  # 3 bytes of 10


async def test_the_part_checks_search_indexes_and_scan_no_table(tmp_path: Path) -> None:
    # The checks run inside BEGIN IMMEDIATE on the one writer: a scan of every project's parts
    # or uploads there would hold up every write as the tables grow.
    db = await SqliteMetadata.open(tmp_path / "meta.db")
    try:
        params = {"now": 1, "upload_id": "u", "project_bytes": True}
        async with db._reader.execute("EXPLAIN QUERY PLAN " + PART_FACTS, params) as cursor:
            plan = [str(row[3]) for row in await cursor.fetchall()]
    finally:
        await db.close()
    scans = [step for step in plan if step.startswith("SCAN")]
    assert scans == [], plan
    assert any("upload_parts" in s and "USING" in s for s in plan), plan
    assert any("uploads_by_project_status" in s for s in plan), plan


class CancelBeforeMd5(DelegatingBlobs):
    """Runs `before` (a cancel racing the completion) just before the parts' MD5 is read."""

    before: Any = None

    async def parts_md5(self, tokens: Any) -> str:
        if CancelBeforeMd5.before is not None:
            await CancelBeforeMd5.before()
        return await self.inner.parts_md5(tokens)


async def test_a_cancel_racing_a_completion_with_md5_answers_not_pending(
    tmp_path: Path,
) -> None:
    store = await Services.open(StoreSettings(tmp_path), wrap_blobs=CancelBeforeMd5)
    try:
        uploads = store.uploads
        upload_id, ids = await new_upload(uploads, [b"ab", b"cd"])

        async def cancel() -> None:
            await uploads.cancel("p", upload_id)

        CancelBeforeMd5.before = cancel
        with pytest.raises(UploadNotPending) as caught:
            await uploads.complete("p", upload_id, ids, md5(b"abcd"))
        assert caught.value.status == "cancelled"
        assert os.listdir(tmp_path / "parts") == []
    finally:
        CancelBeforeMd5.before = None
        await store.close()


class GatedCommit(DelegatingBlobs):
    """Holds a file's commit (`commit_gate`) and the removal of parts (`remove_gate`), and
    tells when each was reached."""

    commit_gate: asyncio.Event | None = None
    remove_gate: asyncio.Event | None = None
    committing = False
    removing = False

    async def commit(self, staged: Any) -> list[bool | Exception]:
        GatedCommit.committing = True
        if GatedCommit.commit_gate is not None:
            await GatedCommit.commit_gate.wait()
        return await self.inner.commit(staged)

    async def remove_parts(self, tokens: Any) -> int:
        GatedCommit.removing = True
        if GatedCommit.remove_gate is not None:
            await GatedCommit.remove_gate.wait()
        return await self.inner.remove_parts(tokens)


async def test_a_cancelled_completion_whose_file_commits_is_completed_once(
    tmp_path: Path,
) -> None:
    GatedCommit.commit_gate, GatedCommit.remove_gate = asyncio.Event(), asyncio.Event()
    GatedCommit.committing = GatedCommit.removing = False
    store = await Services.open(StoreSettings(tmp_path), wrap_blobs=GatedCommit)
    try:
        uploads = store.uploads
        upload_id, ids = await new_upload(uploads, [b"ab", b"cd"])
        task = asyncio.create_task(uploads.complete("p", upload_id, ids, None))
        # The file's commit is queued (and goes on): the client goes away now.
        await wait_until(lambda: GatedCommit.committing, what="the file's commit under way")
        task.cancel()
        GatedCommit.commit_gate.set()
        # The completion settles by the file it made; a second cancel cannot skip that.
        await wait_until(lambda: GatedCommit.removing, what="the completion being finished")
        task.cancel()
        GatedCommit.remove_gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        meta = store.backends.meta
        upload = await meta.get_upload("p", upload_id)
        assert upload is not None and upload.status == "completed", upload
        assert await meta.get_parts(upload_id) == []
        assert os.listdir(tmp_path / "parts") == []
        with pytest.raises(UploadNotPending):
            await uploads.complete("p", upload_id, ids, None)
        page = await store.files.list("p", ListQuery())
        assert [f.id for f in page.files] == [upload.file_id]
    finally:
        GatedCommit.commit_gate = GatedCommit.remove_gate = None
        await store.close()


def file_form(content: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(content), filename="f.jsonl")
    return form


@pytest.fixture
async def quota_client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    config = make_config(tmp_path / "data", limits={"max_bytes_per_project": 1000})
    client: Client = await aiohttp_client(create_app(config))
    return client


async def assert_over_quota(resp: Any) -> None:
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "quota_exceeded", body


async def test_pending_parts_count_against_new_files(quota_client: Client) -> None:
    client = quota_client
    upload = await create_upload(client, 900)
    await part_id(client, upload["id"], b"p" * 900)
    await assert_over_quota(
        await client.post("/v1/files", data=file_form(b"f" * 900), headers=ALPHA)
    )
    # What fits beside the parts is stored; another project is not concerned.
    assert (await client.post("/v1/files", data=file_form(b"f" * 100), headers=ALPHA)).status == 200
    assert (await client.post("/v1/files", data=file_form(b"f" * 900), headers=BETA)).status == 200


async def test_files_count_against_new_parts(quota_client: Client) -> None:
    client = quota_client
    assert (await client.post("/v1/files", data=file_form(b"f" * 900), headers=ALPHA)).status == 200
    upload = await create_upload(client, 900)
    await assert_over_quota(await add_part(client, upload["id"], b"p" * 900))
    await part_id(client, upload["id"], b"p" * 100)


async def test_completing_an_upload_at_exactly_the_quota(quota_client: Client) -> None:
    # The parts become the file: counted once, not as parts and file.
    client = quota_client
    assert (await client.post("/v1/files", data=file_form(b"f" * 100), headers=ALPHA)).status == 200
    upload = await create_upload(client, 900)
    ids = [await part_id(client, upload["id"], b"a" * 600)]
    ids.append(await part_id(client, upload["id"], b"b" * 300))
    resp = await complete(client, upload["id"], ids, md5=md5(b"a" * 600 + b"b" * 300))
    assert resp.status == 200, await resp.json()
    await assert_over_quota(await client.post("/v1/files", data=file_form(b"x"), headers=ALPHA))


async def test_a_part_and_a_file_cannot_both_slip_under_the_quota(tmp_path: Path) -> None:
    # A group commit checks the quota early, stores the blob, then inserts the row, deciding
    # the quota again in the insert's transaction; a part added in between (it fits: the file
    # is not there yet) must be counted by that decision, which then refuses the file.
    GatedCommit.commit_gate, GatedCommit.remove_gate = asyncio.Event(), None
    GatedCommit.committing = False
    settings = StoreSettings(tmp_path, max_bytes_per_project=10)
    store = await Services.open(settings, wrap_blobs=GatedCommit)
    try:
        upload = await store.uploads.create(
            "p",
            filename="u",
            purpose="batch",
            mime_type="text/plain",
            size=10,
            file_expires_after=None,
        )
        file = await store.files.receive(chunks_of(b"f" * 10))
        filing = asyncio.create_task(store.files.create("p", file, filename="f", purpose="batch"))
        await wait_until(lambda: GatedCommit.committing, what="the file past its early check")
        part = await store.uploads.receive_part(chunks_of(b"p" * 10))
        await store.uploads.add_part("p", upload.id, part)
        GatedCommit.commit_gate.set()
        with pytest.raises(QuotaExceeded):
            await filing
        assert (await store.files.list("p", ListQuery())).total == 0
    finally:
        GatedCommit.commit_gate = None
        await store.close()
