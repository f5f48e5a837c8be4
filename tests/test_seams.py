"""The seams of issue 9: storage behind one door, the error table, validators of one's own file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import urllib.request
import warnings
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam
from aiohttp.typedefs import Handler

from filesd.api.app import create_app
from filesd.api.boundary import to_api_error
from filesd.clock import Clock
from filesd.faultrules import FaultRule, storage_fault
from filesd.services import operator as ops
from filesd.services.errors import FileNotFound
from filesd.services.settings import StoreSettings
from filesd.testing import serve

from .conftest import ALPHA, BETA, Client, ClientFactory, make_config, temp_files, upload

BOUNDARY = "seams-boundary"


def test_importing_auth_loads_neither_the_store_nor_the_database() -> None:
    code = (
        "import filesd.api.auth, sys; "
        "assert 'filesd.services' not in sys.modules, 'filesd.services'; "
        "assert 'aiosqlite' not in sys.modules, 'aiosqlite'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_error_table_goes_by_the_nearest_class() -> None:
    class VeryMissing(FileNotFound):
        pass

    request: Any = None
    error = to_api_error(request, VeryMissing("file-x"))
    assert error.status == 404 and error.param == "id" and "file-x" in error.message


# --- fault injection lives in a wrapper, installed only when faults can be asked for ---------


@web.middleware
async def _disk_full_for_every_request(request: web.Request, handler: Handler) -> Any:
    token = storage_fault.set(FaultRule(storage="full"))
    try:
        return await handler(request)
    finally:
        storage_fault.reset(token)


@pytest.mark.parametrize("admin_on", [False, True])
async def test_storage_faults_come_only_from_the_wrapper(
    aiohttp_client: ClientFactory, tmp_path: Path, admin_on: bool
) -> None:
    tables: dict[str, Any] = {"admin": {"token": "admin-token-0123456789"}} if admin_on else {}
    app = create_app(make_config(tmp_path / "data", **tables))
    app.middlewares.append(_disk_full_for_every_request)
    client = await aiohttp_client(app)
    form = _form([("purpose", None, b"batch"), ("file", "a.txt", b"x" * 5000)])
    resp = await client.post("/v1/files", data=form, headers=_form_headers())
    body = await resp.json()
    if admin_on:  # the wrapper reads the request's rule
        assert resp.status == 507 and body["error"]["code"] == "insufficient_storage"
        assert temp_files(tmp_path / "data") == []
    else:  # no wrapper: nothing in the storage code looks at fault rules
        assert resp.status == 200, body


# --- a malformed Content-Disposition, with the warning filters a user has --------------------


def _form(parts: list[tuple[str, str | None, bytes]], disposition: str | None = None) -> bytes:
    out = b""
    for name, filename, content in parts:
        value = f'form-data; name="{name}"'
        if filename is not None:
            value += f'; filename="{filename}"'
        if name == "file" and disposition is not None:
            value = disposition
        out += f"--{BOUNDARY}\r\nContent-Disposition: {value}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _form_headers() -> dict[str, str]:
    return {**ALPHA, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.mark.parametrize(
    "disposition",
    [
        # aiohttp drops the bad parameter and keeps the plain filename: stored, before the fix.
        'form-data; name="file"; filename="ok.txt"; filename*=UTF-8\'\'a b:c',
        'form-data; name="file"; filename',
    ],
)
async def test_malformed_content_disposition_is_400_with_default_warning_filters(
    client: Client, tmp_path: Path, disposition: str
) -> None:
    body = _form([("purpose", None, b"batch"), ("file", None, b"abc")], disposition)
    # As in a user's Python: warnings are shown (here: recorded, every time), nothing raises.
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        resp = await client.post("/v1/files", data=body, headers=_form_headers())
        error = (await resp.json())["error"]
    bad = (BadContentDispositionHeader, BadContentDispositionParam)
    assert any(issubclass(w.category, bad) for w in shown)
    assert resp.status == 400, error
    assert error["message"] == "Malformed Content-Disposition header in a multipart part."
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 0


# --- a download's validators describe the project's own file --------------------------------


@pytest.mark.parametrize("size", [1000, 300_000], ids=["from-memory", "sendfile"])
async def test_validators_are_the_files_own_not_the_shared_blobs(
    aiohttp_client: ClientFactory, tmp_path: Path, size: int
) -> None:
    clock = Clock(1_700_000_000)
    client = await aiohttp_client(create_app(make_config(tmp_path / "data"), clock=clock))
    content = os.urandom(size)
    digest = hashlib.sha256(content).hexdigest()
    a = await upload(client, content, headers=ALPHA)
    clock.advance(86_400 * 3 + 17)
    b = await upload(client, content, headers=BETA)  # the same bytes: one blob
    assert b["created_at"] == a["created_at"] + 86_400 * 3 + 17
    # The blob's mtime is neither project's time: an oracle would show it.
    blob = next((tmp_path / "data" / "blobs").rglob(digest))
    os.utime(blob, (1_600_000_000, 1_600_000_000))

    url = f"/v1/files/{b['id']}/content"
    resp = await client.get(url, headers=BETA)
    assert resp.status == 200 and await resp.read() == content
    assert resp.headers["ETag"] == f'"{digest}"'
    assert resp.headers["Last-Modified"] == formatdate(b["created_at"], usegmt=True)
    etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]

    for conditional in ({"If-None-Match": etag}, {"If-Modified-Since": modified}):
        resp = await client.get(url, headers={**BETA, **conditional})
        assert resp.status == 304 and await resp.read() == b""
        assert resp.headers["ETag"] == etag and resp.headers["Last-Modified"] == modified
    # A's time is before B's file existed: for B, it was modified since.
    before = formatdate(a["created_at"], usegmt=True)
    resp = await client.get(url, headers={**BETA, "If-Modified-Since": before})
    assert resp.status == 200 and await resp.read() == content
    resp = await client.get(url, headers={**BETA, "If-Unmodified-Since": before})
    assert resp.status == 412
    resp = await client.get(url, headers={**BETA, "If-Match": '"' + "0" * 64 + '"'})
    assert resp.status == 412 and resp.headers["ETag"] == etag
    resp = await client.get(url, headers={**BETA, "If-Match": etag})
    assert resp.status == 200
    # If-Range: the range only when the validator matches this file.
    ranged = {**BETA, "Range": "bytes=10-19"}
    resp = await client.get(url, headers={**ranged, "If-Range": etag})
    assert resp.status == 206 and await resp.read() == content[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{size}"
    resp = await client.get(url, headers={**ranged, "If-Range": modified})
    assert resp.status == 206
    for stale in (f'W/"{digest}"', '"other"', before):
        resp = await client.get(url, headers={**ranged, "If-Range": stale})
        assert resp.status == 200 and await resp.read() == content
    resp = await client.head(url, headers=BETA)
    assert resp.status == 200 and resp.headers["Content-Length"] == str(size)


# --- one truth for open mode ------------------------------------------------------------------


def test_new_project_on_a_data_dir_whose_database_holds_keys(tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(ops.create_key(StoreSettings(data), "ops-made"))  # what `filesd keys create` does
    with serve(data_dir=data) as server:
        project = server.new_project()
        req = urllib.request.Request(
            f"{server.base_url}/files", headers={"Authorization": f"Bearer {project.api_key}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
