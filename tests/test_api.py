"""Every route end to end through HTTP, and the error envelope on every error path.

Every test that runs an app runs it on both ends of the backend matrix: the embedded pair
(SQLite and the blob dir in `data_dir`) and PostgreSQL + S3 (a fresh database and bucket per
test); see `Backend`. Checks of what is stored look at the bucket or the blob dir alike; only
a test of a mechanism the embedded pair alone has (the SQLite file moved aside) runs on it
alone, through the `embedded` fixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from filesd.api.app import create_app, reload_keys
from filesd.api.appkeys import SERVICES
from filesd.api.health import READINESS, Readiness
from filesd.config import Config, ConfigError, parse_config
from filesd.services.maintenance import Unready

from .conftest import (
    ALPHA,
    BETA,
    Client,
    ClientFactory,
    blob_files,
    make_config,
    temp_files,
    upload,
    upload_form,
    wait_until,
)
from .s3_service import S3Bucket

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


async def assert_error(
    resp: Any, status: int, message: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The response is OpenAI's error envelope with this status (and message/param if given)."""
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert REQUEST_ID.fullmatch(resp.headers["x-request-id"])
    body = await resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if message is not None:
        assert error["message"] == message
    assert error["param"] == param
    return dict(error)


class Backend:
    """Where the apps of a test keep their data, and a look at it from outside the app.

    "embedded": SQLite and the blob dir in `data_dir`. "postgres-s3": a fresh PostgreSQL
    database and S3 bucket of the test's own (blobs under the `files` prefix); `data_dir`
    then holds only spool files.
    """

    PREFIX = "files"

    def __init__(
        self, name: str, data_dir: Path, dsn: str = "", bucket: S3Bucket | None = None
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.dsn = dsn
        self.bucket = bucket

    def config(self, data_dir: Path | None = None, **tables: dict[str, Any]) -> Config:
        """`make_config` (keys alpha and beta unless `auth` is given) on this backend; a
        `storage` table given adds to this backend's."""
        data_dir = data_dir or self.data_dir
        storage: dict[str, Any] = {"data_dir": str(data_dir), **tables.pop("storage", {})}
        if self.bucket is not None:
            storage["database"] = self.dsn
            storage["blobs"] = self.bucket.blobs_url(self.PREFIX)
            storage["s3"] = {
                "endpoint": self.bucket.endpoint,
                "region": self.bucket.region,
                "access_key_id": self.bucket.access_key_id,
                "secret_access_key": self.bucket.secret_access_key,
            }
        return make_config(data_dir, storage=storage, **tables)

    def blobs(self) -> list[str]:
        """The blobs stored (paths in the blob dir, or keys in the bucket)."""
        if self.bucket is None:
            return [str(p) for p in blob_files(self.data_dir)]
        return [k for k in self.bucket.object_keys() if k.startswith(f"{self.PREFIX}/blobs/")]

    def objects(self) -> list[str]:
        """Everything in the bucket (nothing but blobs for the embedded pair)."""
        return self.blobs() if self.bucket is None else self.bucket.object_keys()

    @property
    def scratch_dir(self) -> Path:
        """The local directory new content is written to before it is stored."""
        return self.data_dir / ("tmp" if self.bucket is None else "spool")

    def scratch_files(self) -> list[Path]:
        """What is in `scratch_dir` (temp or spool files)."""
        if self.bucket is None:
            return temp_files(self.data_dir)
        return sorted(self.scratch_dir.iterdir()) if self.scratch_dir.exists() else []

    def remove_blobs(self) -> None:
        """Remove every stored blob behind the server's back."""
        if self.bucket is None:
            for blob in blob_files(self.data_dir):
                blob.unlink()
            return
        s3 = self.bucket.client()
        try:
            for key in self.blobs():
                s3.delete_object(Bucket=self.bucket.bucket, Key=key)
        finally:
            s3.close()


@pytest.fixture(params=["embedded", "postgres-s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        yield Backend(request.param, tmp_path / "data")
        return
    dsn = request.getfixturevalue("postgres_dsn")
    bucket = request.getfixturevalue("s3_bucket")
    yield Backend(request.param, tmp_path / "data", dsn, bucket)
    # With shared backends an instance keeps nothing of its own (SPEC §5): what its apps
    # left in their data dirs is their lock file and an empty spool directory.
    for data_dir in (p for p in tmp_path.iterdir() if p.is_dir()):
        left = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))
        assert left in ([], ["filesd.lock", "spool"]), f"{data_dir}: {left}"


@pytest.fixture
def embedded(tmp_path: Path) -> Backend:
    """The embedded pair alone, for tests of a mechanism only it has."""
    return Backend("embedded", tmp_path / "data")


@pytest.fixture
async def client(aiohttp_client: ClientFactory, backend: Backend) -> AsyncIterator[Client]:
    """A test client of an app with keys for projects alpha and beta, on `backend`."""
    yield await aiohttp_client(create_app(backend.config()))


@pytest.fixture
async def embedded_client(
    aiohttp_client: ClientFactory, embedded: Backend
) -> AsyncIterator[Client]:
    yield await aiohttp_client(create_app(embedded.config()))


async def assert_nothing_stored(client: Client, backend: Backend) -> None:
    resp = await client.get("/v1/files", headers=ALPHA)
    assert (await resp.json())["total"] == 0
    assert backend.objects() == []
    assert backend.scratch_files() == []


# --- POST /v1/files -----------------------------------------------------------------------


@pytest.mark.parametrize("purpose_first", [True, False])
async def test_upload_returns_the_file_object(client: Client, purpose_first: bool) -> None:
    body = await upload(client, b'{"a": 1}\n', purpose="fine-tune", purpose_first=purpose_first)
    assert set(body) == {
        "id",
        "object",
        "bytes",
        "created_at",
        "filename",
        "purpose",
        "status",
        "status_details",
        "expires_at",
    }
    assert uuid.UUID(body["id"])
    assert body["object"] == "file"
    assert body["bytes"] == 9
    assert body["filename"] == "data.jsonl"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert body["status_details"] is None
    assert body["expires_at"] is None
    assert abs(body["created_at"] - __import__("time").time()) < 60


async def test_upload_with_expiry(client: Client) -> None:
    body = await upload(
        client,
        b"x",
        extra={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    assert body["expires_at"] == body["created_at"] + 3600


async def test_upload_with_expiry_as_one_json_part(client: Client) -> None:
    """OpenAPI's encoding of an object in a form (what generated clients send), beside the
    SDK's bracketed parts."""
    policy = json.dumps({"anchor": "created_at", "seconds": 7200})
    body = await upload(client, b"x", extra={"expires_after": policy})
    assert body["expires_at"] == body["created_at"] + 7200


async def test_openai_id_format(aiohttp_client: ClientFactory, backend: Backend) -> None:
    config = backend.config(files={"id_format": "openai"})
    client = await aiohttp_client(create_app(config))
    body = await upload(client, b"x")
    assert re.fullmatch(r"file-[0-9A-Za-z]{24}", body["id"])


async def test_a_large_upload_streams_and_round_trips(client: Client) -> None:
    content = os.urandom(5 * 1024 * 1024 + 17)
    body = await upload(client, content)
    resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
    assert resp.status == 200
    assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(content).digest()


async def test_fifty_concurrent_uploads(aiohttp_client: ClientFactory, backend: Backend) -> None:
    # One project may take every upload slot here (by default it holds at most half of them).
    limits = {"max_concurrent_uploads_per_project": 64}
    client: Client = await aiohttp_client(create_app(backend.config(limits=limits)))
    contents = [os.urandom(20_000 + i) for i in range(50)]
    bodies = await asyncio.gather(
        *(upload(client, c, filename=f"f{i}") for i, c in enumerate(contents))
    )
    assert len({b["id"] for b in bodies}) == 50
    listing = await (await client.get("/v1/files?limit=1000", headers=ALPHA)).json()
    assert listing["total"] == 50
    for body, content in zip(bodies, contents, strict=True):
        resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
        assert await resp.read() == content


BAD_PURPOSE = (
    "'nope' is not one of ['assistants', 'batch', 'fine-tune', 'vision', 'user_data', 'evals']"
    " - 'purpose'"
)


@pytest.mark.parametrize(
    ("form_kwargs", "message", "param"),
    [
        ({"purpose": "nope"}, BAD_PURPOSE, "purpose"),
        ({"purpose": "nope", "purpose_first": False}, BAD_PURPOSE, "purpose"),
        ({"purpose": None}, "'purpose' is a required property", "purpose"),
        ({"extra": {"model": "x"}}, "Unrecognized request argument supplied: model", "model"),
        ({"extra": {"purpose": "batch"}}, "Duplicate field 'purpose'.", "purpose"),
        ({"purpose": "x" * 5000}, None, "purpose"),
        ({"filename": "x" * 2000}, None, "file"),
        ({"extra": {"expires_after[seconds]": "3600"}}, None, "expires_after[anchor]"),
        ({"extra": {"expires_after[anchor]": "created_at"}}, None, "expires_after[seconds]"),
        (
            {"extra": {"expires_after[anchor]": "now", "expires_after[seconds]": "3600"}},
            None,
            "expires_after[anchor]",
        ),
        (
            {"extra": {"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}},
            None,
            "expires_after[seconds]",
        ),
        (
            {
                "extra": {
                    "expires_after[anchor]": "created_at",
                    "expires_after[seconds]": "2592001",
                }
            },
            None,
            "expires_after[seconds]",
        ),
        (
            {"extra": {"expires_after[anchor]": "created_at", "expires_after[seconds]": "1h"}},
            None,
            "expires_after[seconds]",
        ),
        (
            {"extra": {"expires_after": '{"anchor": "created_at", "seconds": 3600'}},
            "Invalid 'expires_after': expected a JSON object such as "
            '{"anchor": "created_at", "seconds": 3600}, but the part is not valid JSON.',
            "expires_after",
        ),
        (
            {"extra": {"expires_after": "3600"}},
            "Invalid type for 'expires_after': expected an object, but got a number instead.",
            "expires_after",
        ),
        (
            {"extra": {"expires_after": '{"anchor": "created_at", "seconds": 60}'}},
            None,
            "expires_after[seconds]",
        ),
        (
            {"extra": {"expires_after": '{"anchor": "created_at", "seconds": 3600, "x": 1}'}},
            "Unrecognized request argument supplied: x",
            "x",
        ),
        (
            {
                "extra": {
                    "expires_after": '{"anchor": "created_at", "seconds": 3600}',
                    "expires_after[seconds]": "3600",
                }
            },
            "Give 'expires_after' either as one part holding a JSON object or as the parts "
            "'expires_after[anchor]' and 'expires_after[seconds]', not both.",
            "expires_after",
        ),
    ],
)
async def test_bad_upload_forms_are_refused_and_store_nothing(
    client: Client, backend: Backend, form_kwargs: dict[str, Any], message: str | None, param: str
) -> None:
    resp = await client.post(
        "/v1/files", data=upload_form(b"content", **form_kwargs), headers=ALPHA
    )
    await assert_error(resp, 400, message, param)
    await assert_nothing_stored(client, backend)


async def test_upload_without_file_or_not_multipart(client: Client, backend: Backend) -> None:
    resp = await post_raw(client, _raw_form([("purpose", None, b"assistants")]))
    await assert_error(resp, 400, "'file' is a required property", "file")
    resp = await client.post("/v1/files", data={"purpose": "assistants"}, headers=ALPHA)
    await assert_error(resp, 400)
    resp = await client.post("/v1/files", json={"purpose": "assistants"}, headers=ALPHA)
    await assert_error(resp, 400)
    resp = await client.post("/v1/files", headers=ALPHA)
    await assert_error(resp, 400)
    resp = await client.post(
        "/v1/files", data=b"x", headers={**ALPHA, "Content-Type": "multipart/form-data"}
    )
    await assert_error(resp, 400)  # no boundary
    # A 'file' field that is not a file upload (no filename).
    resp = await post_raw(
        client, _raw_form([("purpose", None, b"assistants"), ("file", None, b"abc")])
    )
    await assert_error(resp, 400, param="file")
    # A duplicate file part.
    resp = await post_raw(
        client, _raw_form([("file", "a", b"1"), ("file", "b", b"2"), ("purpose", None, b"batch")])
    )
    await assert_error(resp, 400, "Duplicate field 'file'.", "file")
    await assert_nothing_stored(client, backend)


BOUNDARY = "filesd-test-boundary"


async def post_raw(client: Client, body: bytes) -> Any:
    """POST a hand-made multipart body, for what aiohttp's client refuses to produce."""
    return await client.post(
        "/v1/files",
        data=body,
        headers={**ALPHA, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


@pytest.mark.parametrize("filename", ["a\x00b.txt", "a\x01b", "esc\x1b[31m", "del\x7f"])
async def test_raw_control_characters_in_part_headers_are_refused(
    client: Client, backend: Backend, filename: str
) -> None:
    # aiohttp's header parser refuses these before any field is known: a 400, no param.
    resp = await post_raw(
        client, _raw_form([("purpose", None, b"assistants"), ("file", filename, b"abc")])
    )
    await assert_error(resp, 400)
    await assert_nothing_stored(client, backend)


@pytest.mark.parametrize("encoded", ["a%00b.txt", "a%0Ab.txt", "a%0D%0AX-Evil%3A1", "del%7F"])
async def test_encoded_control_characters_in_filenames_are_refused(
    client: Client, backend: Backend, encoded: str
) -> None:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f"filename*=UTF-8''{encoded}\r\n\r\nabc\r\n--{BOUNDARY}--\r\n"
    ).encode()
    resp = await post_raw(client, body)
    await assert_error(resp, 400, "The filename must not contain control characters.", "file")
    await assert_nothing_stored(client, backend)


async def test_malformed_content_disposition_is_400(client: Client, backend: Backend) -> None:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f"filename*=UTF-8''a b:c\r\n\r\nabc\r\n--{BOUNDARY}--\r\n"
    ).encode()
    resp = await post_raw(client, body)
    await assert_error(resp, 400)
    await assert_nothing_stored(client, backend)


def _raw_form(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            # As curl and httpx send it: raw UTF-8 in a quoted string.
            escaped = filename.replace("\\", "\\\\").replace('"', '\\"')
            disposition += f'; filename="{escaped}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
async def small_client(aiohttp_client: ClientFactory, backend: Backend) -> AsyncIterator[Client]:
    config = backend.config(limits={"max_file_bytes": 100_000})
    yield await aiohttp_client(create_app(config))


async def test_too_large_by_content_length_is_refused_at_once(
    small_client: Client, backend: Backend
) -> None:
    resp = await small_client.post(
        "/v1/files", data=upload_form(os.urandom(300_000)), headers=ALPHA
    )
    error = await assert_error(resp, 413, param="file")
    assert error["code"] == "file_too_large"
    await assert_nothing_stored(small_client, backend)


async def test_too_large_while_streaming_is_refused(small_client: Client, backend: Backend) -> None:
    # Chunked: no Content-Length, so the limit is only crossed while the body streams in.
    body = _raw_form([("purpose", None, b"assistants"), ("file", "big", os.urandom(100_001))])

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    resp = await small_client.post(
        "/v1/files",
        data=chunks(),
        headers={**ALPHA, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    await assert_error(resp, 413, param="file")
    await assert_nothing_stored(small_client, backend)
    # Exactly at the limit is fine.
    await upload(small_client, os.urandom(100_000))


async def test_expect_100_continue(small_client: Client) -> None:
    resp = await small_client.post(
        "/v1/files", data=upload_form(b"ok"), headers=ALPHA, expect100=True
    )
    assert resp.status == 200
    resp = await small_client.post(
        "/v1/files", data=upload_form(os.urandom(300_000)), headers=ALPHA, expect100=True
    )
    await assert_error(resp, 413, param="file")


# --- GET /v1/files ---------------------------------------------------------------------------


async def test_list_pages_by_offset_and_after(client: Client) -> None:
    ids = [(await upload(client, str(i).encode(), purpose="batch"))["id"] for i in range(5)]
    await upload(client, b"vision", purpose="vision")
    resp = await client.get("/v1/files?purpose=batch&limit=2", headers=ALPHA)
    page = await resp.json()
    assert page["object"] == "list"
    assert [f["id"] for f in page["data"]] == [ids[4], ids[3]]
    assert page["total"] == 5
    assert page["has_more"] is True
    assert page["first_id"] == ids[4] and page["last_id"] == ids[3]

    page = await (
        await client.get(f"/v1/files?purpose=batch&limit=2&after={ids[3]}", headers=ALPHA)
    ).json()
    assert [f["id"] for f in page["data"]] == [ids[2], ids[1]]

    page = await (
        await client.get("/v1/files?purpose=batch&limit=2&offset=4", headers=ALPHA)
    ).json()
    assert [f["id"] for f in page["data"]] == [ids[0]]
    assert page["has_more"] is False and page["total"] == 5

    page = await (await client.get("/v1/files?order=asc&limit=100", headers=ALPHA)).json()
    assert [f["id"] for f in page["data"]][:5] == ids
    assert page["total"] == 6


async def test_empty_list(client: Client) -> None:
    page = await (await client.get("/v1/files", headers=ALPHA)).json()
    assert page == {
        "object": "list",
        "data": [],
        "total": 0,
        "has_more": False,
        "first_id": None,
        "last_id": None,
    }


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("limit=1_0", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
        ("order=up", "order"),
        ("limit=1&limit=2", "limit"),
        ("after=no-such-file", "after"),
    ],
)
async def test_bad_list_queries_are_400(client: Client, query: str, param: str) -> None:
    resp = await client.get(f"/v1/files?{query}", headers=ALPHA)
    await assert_error(resp, 400, param=param)


# --- GET / DELETE /v1/files/{id} -------------------------------------------------------------


async def test_retrieve_and_delete(client: Client) -> None:
    body = await upload(client, b"bytes")
    file_id = body["id"]
    got = await (await client.get(f"/v1/files/{file_id}", headers=ALPHA)).json()
    assert got == body

    resp = await client.delete(f"/v1/files/{file_id}", headers=ALPHA)
    assert resp.status == 200
    assert await resp.json() == {"id": file_id, "object": "file", "deleted": True}

    for method, path in [
        ("GET", f"/v1/files/{file_id}"),
        ("DELETE", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
    ]:
        resp = await client.request(method, path, headers=ALPHA)
        await assert_error(resp, 404, f"No such File object: {file_id}", "id")
    page = await (await client.get("/v1/files", headers=ALPHA)).json()
    assert page["total"] == 0


@pytest.mark.parametrize("file_id", ["nope", "..%2F..%2Fetc%2Fpasswd", "1%27%20OR%201%3D1"])
async def test_unknown_ids_are_404(client: Client, file_id: str) -> None:
    resp = await client.get(f"/v1/files/{file_id}", headers=ALPHA)
    error = await assert_error(resp, 404, param="id")
    assert error["message"].startswith("No such File object: ")


# --- GET /v1/files/{id}/content --------------------------------------------------------------


async def test_content_headers(client: Client) -> None:
    content = b"0123456789" * 100
    body = await upload(client, content, filename="report.txt")
    resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
    assert resp.status == 200
    assert await resp.read() == content
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Length"] == "1000"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="report.txt"'
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert REQUEST_ID.fullmatch(resp.headers["x-request-id"])


@pytest.mark.parametrize(
    "filename", ["résumé €.txt", "日本語.pdf", 'quote"and.txt', "50%.csv", "..hidden", "a..b"]
)
async def test_content_disposition_is_safe_for_any_name(client: Client, filename: str) -> None:
    resp = await post_raw(
        client, _raw_form([("purpose", None, b"assistants"), ("file", filename, b"x")])
    )
    body = await resp.json()
    assert body["filename"] == filename
    resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
    value = resp.headers["Content-Disposition"]
    assert value.isascii() and "\r" not in value and "\n" not in value
    fallback = re.fullmatch(r'attachment; filename="([^"\\]*)"(; filename\*=(.*))?', value)
    assert fallback is not None
    if fallback.group(3) is not None:
        assert fallback.group(3) == "UTF-8''" + quote(filename, safe="!#$&+^`|~")
    else:
        assert fallback.group(1) == filename


async def test_range_head_and_conditional_get(client: Client) -> None:
    content = bytes(range(256)) * 4
    body = await upload(client, content)
    url = f"/v1/files/{body['id']}/content"

    resp = await client.get(url, headers={**ALPHA, "Range": "bytes=10-19"})
    assert resp.status == 206
    assert await resp.read() == content[10:20]
    assert resp.headers["Content-Range"] == "bytes 10-19/1024"

    resp = await client.get(url, headers={**ALPHA, "Range": "bytes=-4"})
    assert resp.status == 206 and await resp.read() == content[-4:]

    resp = await client.get(url, headers={**ALPHA, "Range": "bytes=5000-"})
    await assert_error(resp, 416, param="Range")
    assert resp.headers["Content-Range"] == "bytes */1024"
    resp = await client.get(url, headers={**ALPHA, "Range": "pages=1-2"})
    assert resp.status == 200 and await resp.read() == content  # an unknown unit is ignored

    resp = await client.head(url, headers=ALPHA)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "1024"
    assert await resp.read() == b""

    resp = await client.get(url, headers=ALPHA)
    etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    resp = await client.get(url, headers={**ALPHA, "If-None-Match": etag})
    assert resp.status == 304
    resp = await client.get(url, headers={**ALPHA, "If-Modified-Since": modified})
    assert resp.status == 304
    resp = await client.get(url, headers={**ALPHA, "If-None-Match": '"other"'})
    assert resp.status == 200 and await resp.read() == content


async def test_empty_file_downloads(client: Client) -> None:
    body = await upload(client, b"")
    assert body["bytes"] == 0
    resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
    assert resp.status == 200 and await resp.read() == b""


async def test_missing_blob_is_a_clear_500(client: Client, backend: Backend) -> None:
    # Larger than the small-file cache's entries, so the bytes can only come from storage.
    body = await upload(client, os.urandom(100_000))
    backend.remove_blobs()
    resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
    error = await assert_error(resp, 500)
    assert error["type"] == "server_error"
    assert error["code"] == "blob_missing"
    assert "fsck" in error["message"]


# --- dedupe, isolation, auth ---------------------------------------------------------------


async def test_dedupe_one_blob_and_delete_one_keeps_the_other(
    client: Client, backend: Backend
) -> None:
    a = await upload(client, b"twin")
    b = await upload(client, b"twin", headers=BETA)
    assert len(backend.blobs()) == 1
    assert (await client.delete(f"/v1/files/{a['id']}", headers=ALPHA)).status == 200
    resp = await client.get(f"/v1/files/{b['id']}/content", headers=BETA)
    assert await resp.read() == b"twin"
    assert (await client.delete(f"/v1/files/{b['id']}", headers=BETA)).status == 200
    assert backend.blobs() == []


async def test_another_projects_file_is_a_404_on_every_route(client: Client) -> None:
    body = await upload(client, b"alpha's secret")
    file_id = body["id"]
    for method, path in [
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("HEAD", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
    ]:
        resp = await client.request(method, path, headers=BETA)
        assert resp.status == 404
    resp = await client.get(f"/v1/files/{file_id}", headers=BETA)
    await assert_error(resp, 404, f"No such File object: {file_id}", "id")
    assert (await (await client.get("/v1/files", headers=BETA)).json())["total"] == 0
    resp = await client.get(f"/v1/files?after={file_id}", headers=BETA)
    await assert_error(resp, 400, param="after")
    # Still there for its owner.
    assert (await client.get(f"/v1/files/{file_id}", headers=ALPHA)).status == 200


NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}],
)
async def test_missing_key_is_401(client: Client, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/v1/files"), ("GET", "/v1/files/x"), ("GET", "/v1/nope")]:
        resp = await client.request(method, path, headers=headers)
        error = await assert_error(resp, 401, NO_KEY)
        assert error["code"] is None


async def test_wrong_key_is_401_with_a_masked_key(client: Client, backend: Backend) -> None:
    resp = await client.post(
        "/v1/files",
        data=upload_form(b"x"),
        headers={"Authorization": "Bearer sk-wrong-key-abcdefyz"},
    )
    error = await assert_error(resp, 401)
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith("Incorrect API key provided. ")
    # Keys come from the config file or from `filesd keys create`: the text names both.
    assert "[[auth.keys]]" in error["message"] and "`filesd keys create`" in error["message"]
    # No part of the key, masked or not (OpenAI echoes `sk-wr***yz`).
    assert "sk-wr" not in error["message"] and "***" not in error["message"]
    resp = await client.get("/v1/files", headers={"Authorization": "Bearer short"})
    error = await assert_error(resp, 401)
    assert "short" not in error["message"]
    await assert_nothing_stored(client, backend)


async def test_key_given_as_sha256(aiohttp_client: ClientFactory, backend: Backend) -> None:
    digest = hashlib.sha256(b"sk-hashed-secret").hexdigest()
    config = backend.config(auth={"keys": [{"key_sha256": digest, "project": "hashed"}]})
    client = await aiohttp_client(create_app(config))
    await upload(client, b"x", headers={"Authorization": "Bearer sk-hashed-secret"})
    resp = await client.get("/v1/files", headers={"Authorization": "bearer sk-hashed-secret"})
    assert (await resp.json())["total"] == 1


async def test_open_mode_each_token_is_its_own_project(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    config = backend.config(auth={})
    client = await aiohttp_client(create_app(config))
    one, two = {"Authorization": "Bearer one"}, {"Authorization": "Bearer two"}
    body = await upload(client, b"x", headers=one)
    assert (await client.get(f"/v1/files/{body['id']}", headers=one)).status == 200
    assert (await client.get(f"/v1/files/{body['id']}", headers=two)).status == 404
    assert (await (await client.get("/v1/files", headers=two)).json())["total"] == 0
    resp = await client.get("/v1/files")
    await assert_error(resp, 401, NO_KEY)


# --- router errors ---------------------------------------------------------------------------


async def test_unknown_routes_and_methods_use_the_envelope(client: Client) -> None:
    resp = await client.get("/v1/nope", headers=ALPHA)
    await assert_error(resp, 404, "Invalid URL (GET /v1/nope)")
    resp = await client.get("/", headers=ALPHA)
    await assert_error(resp, 404, "Invalid URL (GET /)")
    resp = await client.put("/v1/files", headers=ALPHA)
    await assert_error(resp, 405, "Invalid method for URL (PUT /v1/files)")
    assert "POST" in resp.headers["Allow"]
    # A client whose base_url lacks /v1 is told where the API lives.
    host = f"{client.host}:{client.port}"
    for method, path in [("GET", "/files"), ("POST", "/batches"), ("GET", "/uploads/x/y")]:
        resp = await client.request(method, path, headers=ALPHA)
        await assert_error(
            resp,
            404,
            f"Invalid URL ({method} {path}): the API is served under /v1, "
            f"e.g. base_url='http://{host}/v1'",
        )
    resp = await client.post("/v1/files/abc", headers=ALPHA)
    await assert_error(resp, 405)


async def test_every_response_has_a_distinct_request_id(client: Client) -> None:
    ids = set()
    for _ in range(3):
        resp = await client.get("/v1/files", headers=ALPHA)
        ids.add(resp.headers["x-request-id"])
    assert len(ids) == 3 and all(REQUEST_ID.fullmatch(i) for i in ids)


# --- expiry, download refusal, OpenAI's headers -----------------------------------------------


async def test_batch_files_expire_after_30_days_by_default(client: Client) -> None:
    batch = await upload(client, b"b", purpose="batch")
    assert batch["expires_at"] == batch["created_at"] + 30 * 24 * 3600
    vision = await upload(client, b"v", purpose="vision")
    assert vision["expires_at"] is None


async def test_an_expired_file_is_gone_from_every_route_at_once(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    now = [1_800_000_000.0]
    client = await aiohttp_client(create_app(backend.config(), clock=lambda: now[0]))
    body = await upload(
        client,
        b"ephemeral",
        extra={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    assert (await client.get(f"/v1/files/{body['id']}", headers=ALPHA)).status == 200
    now[0] += 3600
    for method, path in [
        ("GET", f"/v1/files/{body['id']}"),
        ("GET", f"/v1/files/{body['id']}/content"),
        ("DELETE", f"/v1/files/{body['id']}"),
    ]:
        await assert_error(await client.request(method, path, headers=ALPHA), 404, param="id")
    page = await (await client.get("/v1/files", headers=ALPHA)).json()
    assert page["total"] == 0 and page["data"] == []


async def test_downloads_refused_like_openai_when_configured(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    config = backend.config(files={"refuse_downloads": True})
    client = await aiohttp_client(create_app(config))
    for purpose in ("assistants", "user_data"):
        body = await upload(client, b"secret", purpose=purpose)
        resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
        await assert_error(resp, 400, f"Not allowed to download files of purpose: {purpose}")
    body = await upload(client, b"fine", purpose="fine-tune")
    resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
    assert resp.status == 200 and await resp.read() == b"fine"


async def test_downloads_allowed_by_default(client: Client) -> None:
    body = await upload(client, b"mine", purpose="assistants")
    resp = await client.get(f"/v1/files/{body['id']}/content", headers=ALPHA)
    assert resp.status == 200 and await resp.read() == b"mine"


async def test_openai_headers_on_every_response(client: Client) -> None:
    for resp in (
        await client.get("/v1/files", headers=ALPHA),
        await client.get("/v1/files"),
        await client.get("/v1/nope", headers=ALPHA),
    ):
        assert REQUEST_ID.fullmatch(resp.headers["x-request-id"])
        assert resp.headers["openai-version"] == "2020-10-01"
        assert int(resp.headers["openai-processing-ms"]) >= 0


@pytest.mark.slow  # the sweeper's least interval is a second
async def test_the_background_sweeper_reclaims_expired_files(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    now = [1_800_000_000.0]
    config = backend.config(storage={"sweep_interval": 1})
    client = await aiohttp_client(create_app(config, clock=lambda: now[0]))
    await upload(
        client,
        b"short-lived bytes",
        extra={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    assert len(backend.blobs()) == 1
    now[0] += 3600
    # The sweeper runs every second.
    await wait_until(lambda: not backend.blobs(), what="the expired blob reclaimed")


class StepClock:
    """A readiness clock the test moves: each `step()` is a second later."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.now += Readiness.TTL


async def test_health_and_readiness_need_no_key(client: Client, backend: Backend) -> None:
    clock = client.app[READINESS].clock = StepClock()
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await client.get("/readyz")
    assert resp.status == 200 and await resp.json() == {"status": "ready"}
    clock.step()  # past the cached answer
    # A data directory that no longer takes writes makes the server not ready (a file where
    # a directory should be stops root too, unlike permission bits).
    tmp_dir = backend.scratch_dir
    moved = tmp_dir.with_name("moved")
    tmp_dir.rename(moved)
    tmp_dir.write_text("not a directory")
    try:
        resp = await client.get("/readyz")
        error = await assert_error(resp, 503)
        assert error["code"] == "not_ready"
        assert error["message"] == "Not ready: the blob storage does not take writes"
    finally:
        tmp_dir.unlink()
        moved.rename(tmp_dir)
    clock.step()
    assert (await client.get("/readyz")).status == 200


async def test_readiness_is_checked_once_a_second_and_probes_share_a_check(
    client: Client,
) -> None:
    probes: list[float] = []
    readiness = client.app[READINESS]
    real_check = readiness.check

    async def counting_check() -> list[Unready]:
        probes.append(time.monotonic())
        problems: list[Unready] = await real_check()
        return problems

    readiness.check = counting_check
    clock = readiness.clock = StepClock()
    # Probes arriving together share one check, and later ones within the second reuse it.
    answers = await asyncio.gather(*(client.get("/readyz") for _ in range(10)))
    answers += [await client.get("/readyz") for _ in range(10)]
    assert [r.status for r in answers] == [200] * 20
    assert len(probes) == 1
    clock.step()
    assert (await client.get("/readyz")).status == 200
    assert len(probes) == 2


async def test_a_database_moved_aside_while_running_is_not_ready(
    aiohttp_client: ClientFactory, embedded: Backend, tmp_path: Path
) -> None:
    config = embedded.config(metrics={"token": METRICS_TOKEN})  # the SQLite file
    client = await aiohttp_client(create_app(config))
    clock = client.app[READINESS].clock = StepClock()
    assert (await client.get("/readyz")).status == 200
    database = tmp_path / "data" / "filesd.db"
    database.rename(tmp_path / "moved.db")
    # SQLite goes on with the open file: the API answers as if nothing happened...
    await upload(client, b"still works")
    clock.step()
    resp = await client.get("/readyz")
    error = await assert_error(resp, 503)
    assert error["code"] == "not_ready"
    assert error["message"] == "Not ready: the database is not usable"  # keyless: no more
    resp = await client.get("/readyz", headers=METRICS)
    assert "filesd.db was moved or deleted" in (await assert_error(resp, 503))["message"]
    # ...and another file put at the path is not the database the server writes to.
    database.write_bytes(b"")
    clock.step()
    resp = await client.get("/readyz", headers=METRICS)
    assert "filesd.db is no longer the file" in (await assert_error(resp, 503))["message"]
    database.unlink()
    (tmp_path / "moved.db").rename(database)
    clock.step()
    assert (await client.get("/readyz")).status == 200


METRICS_TOKEN = "metrics-token-0123456789"
METRICS = {"Authorization": f"Bearer {METRICS_TOKEN}"}
ADMIN_TOKEN = "admin-token-0123456789"


async def test_metrics_need_a_token_once_keys_exist(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    config = backend.config(metrics={"token": METRICS_TOKEN}, admin={"token": ADMIN_TOKEN})
    client = await aiohttp_client(create_app(config))
    for headers in ({}, ALPHA, {"Authorization": "Bearer wrong-token-0123456789"}):
        resp = await client.get("/metrics", headers=headers)
        error = await assert_error(resp, 401)
        assert "[metrics] token" in error["message"]
        assert "filesd_blobs" not in await resp.text()
    for token in (METRICS_TOKEN, ADMIN_TOKEN):
        resp = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200 and "filesd_blobs" in await resp.text()
    # Keys but no scrape token configured: nobody reads the totals.
    bare = await aiohttp_client(create_app(backend.config(backend.data_dir.with_name("b"))))
    await assert_error(await bare.get("/metrics"), 401)


async def test_metrics_are_keyless_in_open_mode_until_a_key_is_made(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    config = backend.config(auth={})
    client = await aiohttp_client(create_app(config))
    assert (await client.get("/metrics")).status == 200
    await client.app[SERVICES].keys.create("alpha")  # `filesd keys create`: no longer open
    await reload_keys(client.app)
    await assert_error(await client.get("/metrics"), 401)


def test_metrics_token_is_checked_like_the_admin_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.token: use at least 16 characters"):
        parse_config({"metrics": {"token": "short"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"metrics\.tokn: unknown key"):
        parse_config({"metrics": {"tokn": METRICS_TOKEN}}, base_dir=tmp_path)


async def test_metrics_in_prometheus_format(
    aiohttp_client: ClientFactory, backend: Backend
) -> None:
    client = await aiohttp_client(create_app(backend.config(metrics={"token": METRICS_TOKEN})))
    await upload(client, b"twin" * 100)
    await upload(client, b"twin" * 100)
    created = await upload(client, b"other")
    await client.get(f"/v1/files/{created['id']}", headers=ALPHA)
    await client.get("/v1/nope", headers=ALPHA)
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['filesd_requests_total{method="POST",route="/v1/files",status="200"}'] == 3
    assert (
        samples['filesd_requests_total{method="GET",route="/v1/files/{file_id}",status="200"}'] == 1
    )
    assert samples['filesd_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    assert samples['filesd_request_duration_seconds_count{route="/v1/files"}'] == 3
    assert samples["filesd_files"] == 3 and samples["filesd_blobs"] == 2
    assert samples["filesd_logical_bytes"] == 805 and samples["filesd_physical_bytes"] == 405
    assert samples["filesd_dedupe_ratio"] == pytest.approx(805 / 405)
    assert samples["filesd_received_bytes_total"] > 805
    assert samples["filesd_uploads_in_flight"] == 0
