"""Import manifests: every field checked, a bad entry refuses the whole archive."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from filesd.api.app import create_app
from filesd.config import DEFAULT_PURPOSES
from filesd.services.manifest import ManifestError, parse_manifest

from .conftest import Client, ClientFactory, blob_files, make_config, tar_archive, temp_files

TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CONTENT = b"imported bytes"
DIGEST = hashlib.sha256(CONTENT).hexdigest()


def entry(**changes: Any) -> dict[str, Any]:
    good: dict[str, Any] = {
        "id": "file-imported",
        "project": "alpha",
        "filename": "a.jsonl",
        "purpose": "batch",
        "bytes": len(CONTENT),
        "sha256": DIGEST,
        "created_at": 1_800_000_000,
        "expires_at": None,
        "status": "processed",
        "status_details": None,
    }
    good.update(changes)
    return good


def manifest(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"format": "filesd-export", "version": 1, "files": list(entries)}


def test_a_good_manifest_parses() -> None:
    records = parse_manifest(manifest(entry(), entry(id="file-2")), DEFAULT_PURPOSES)
    assert [r.id for r in records] == ["file-imported", "file-2"]
    assert records[0].bytes == len(CONTENT) and records[0].expires_at is None


BAD_ENTRIES = {
    "negative size": entry(bytes=-1),
    "string for a number": entry(bytes="14"),
    "boolean for a number": entry(created_at=True),
    "float for a number": entry(created_at=1.5),
    "size beyond 2^63": entry(bytes=2**63),
    "unknown purpose": entry(purpose="training"),
    "control character": entry(filename="a\x07b"),
    "C1 control": entry(project="al\x85pha"),
    "bidi override": entry(filename="txt.\u202eexe"),
    "path in filename": entry(filename="../a"),
    "empty id": entry(id=""),
    "number for a string": entry(id=7),
    "bad digest": entry(sha256="A" * 64),
    "unknown status": entry(status="uploaded"),
    "unknown field": {**entry(), "owner": "x"},
    "missing field": {k: v for k, v in entry().items() if k != "created_at"},
    "not an object": ["file-imported"],
}


@pytest.mark.parametrize("bad", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_every_field_is_checked(bad: Any) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(manifest(entry(id="file-ok"), bad), DEFAULT_PURPOSES)


@pytest.mark.parametrize(
    "doc",
    [[entry()], {"version": 2, "files": []}, {"version": 1, "files": {}}, "x", None],
    ids=["array", "version", "files-not-array", "string", "null"],
)
def test_the_manifest_itself_is_checked(doc: Any) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(doc, DEFAULT_PURPOSES)


def test_a_repeated_id_is_refused() -> None:
    with pytest.raises(ManifestError, match="more than once"):
        parse_manifest(manifest(entry(), entry()), DEFAULT_PURPOSES)


def archive(manifest_bytes: bytes, blobs: dict[str, bytes] | None = None) -> bytes:
    return tar_archive(
        {"filesd-export.json": manifest_bytes, **(blobs or {f"blobs/{DIGEST}": CONTENT})}
    )


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Client]:
    config = make_config(tmp_path / "data", admin={"token": TOKEN})
    yield await aiohttp_client(create_app(config))


ARCHIVES = {
    "manifest is an array": archive(json.dumps([entry()]).encode()),
    "repeated id": archive(json.dumps(manifest(entry(), entry())).encode()),
    "negative size": archive(json.dumps(manifest(entry(bytes=-1))).encode()),
    "size not its blob's": archive(json.dumps(manifest(entry(bytes=3))).encode()),
    "unknown purpose": archive(json.dumps(manifest(entry(purpose="x"))).encode()),
    "control character": archive(json.dumps(manifest(entry(filename="a\nb"))).encode()),
    "deeply nested": archive(b"[" * 100_000),
}


@pytest.mark.parametrize("body", ARCHIVES.values(), ids=ARCHIVES.keys())
async def test_bad_manifests_are_a_400_and_import_nothing(
    client: Client, tmp_path: Path, body: bytes
) -> None:
    resp = await client.post("/admin/import", data=body, headers=ADMIN)
    answer = await resp.json()
    assert resp.status == 400, answer
    assert answer["error"]["message"].startswith("Cannot import")
    projects = await (await client.get("/admin/projects", headers=ADMIN)).json()
    assert projects["data"] == []
    assert blob_files(tmp_path / "data") == [] and temp_files(tmp_path / "data") == []


async def test_a_good_archive_imports(client: Client) -> None:
    resp = await client.post(
        "/admin/import", data=archive(json.dumps(manifest(entry())).encode()), headers=ADMIN
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"imported": 1}
