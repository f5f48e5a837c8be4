"""The admin API, fault injection, the clock and seeded ids."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from filesd.api.app import create_app
from filesd.clock import CLOCK_MAX
from filesd.testing import serve

from .conftest import (
    ALPHA,
    BETA,
    Client,
    ClientFactory,
    blob_files,
    make_config,
    tar_archive,
    temp_files,
    upload,
    upload_form,
)

TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(aiohttp_client: ClientFactory, tmp_path: Path) -> AsyncIterator[Client]:
    config = make_config(tmp_path / "data", admin={"token": TOKEN})
    yield await aiohttp_client(create_app(config))


async def admin(client: Client, method: str, path: str, **kw: Any) -> Any:
    resp = await client.request(method, f"/admin/{path}", headers=ADMIN, **kw)
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def test_admin_is_off_without_a_token(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    plain = await aiohttp_client(create_app(make_config(tmp_path)))
    resp = await plain.get("/admin/projects", headers=ADMIN)
    assert resp.status == 404


async def test_admin_needs_its_own_token(client: Client) -> None:
    for headers in ({}, ALPHA, {"Authorization": "Bearer wrong-token-0123456789"}):
        resp = await client.get("/admin/projects", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    resp = await client.get("/v1/files", headers=ADMIN)  # and it is no API key
    assert resp.status == 401


async def test_projects_reset_and_journal(client: Client, tmp_path: Path) -> None:
    await upload(client, b"twin" * 10)
    await upload(client, b"twin" * 10)
    await upload(client, b"beta's", headers=BETA)
    projects = (await admin(client, "GET", "projects"))["data"]
    assert projects == [
        {"project": "alpha", "files": 2, "bytes": 80, "physical_bytes": 40},
        {"project": "beta", "files": 1, "bytes": 6, "physical_bytes": 6},
    ]
    journal = (await admin(client, "GET", "requests?method=POST&project=alpha"))["data"]
    assert len(journal) == 2 and journal[0]["path"] == "/v1/files"
    assert journal[0]["status"] == 200 and journal[0]["request_id"].startswith("req_")
    assert journal[0]["bytes_in"] > 40 and journal[0]["duration_ms"] >= 0
    assert len((await admin(client, "GET", "requests?limit=1"))["data"]) == 1

    body = await admin(client, "POST", "reset", json={"project": "alpha"})
    assert body["files_removed"] == 2
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 0
    assert (await (await client.get("/v1/files", headers=BETA)).json())["total"] == 1
    assert len(blob_files(tmp_path / "data")) == 1

    await admin(client, "POST", "reset")
    assert (await admin(client, "GET", "projects"))["data"] == []
    assert blob_files(tmp_path / "data") == []
    assert (await admin(client, "GET", "requests"))["data"] == []


async def test_injected_errors_with_retry_headers(client: Client) -> None:
    created = await upload(client, b"x")
    rule = {
        "method": "GET",
        "route": "/v1/files/{file_id}",
        "status": 503,
        "count": 2,
        "retry_after_ms": 10,
        "should_retry": True,
        "code": "injected",
    }
    rule_id = (await admin(client, "POST", "faults", json=rule))["id"]
    assert (await admin(client, "GET", "faults"))["data"][0]["remaining"] == 2
    for _ in range(2):
        resp = await client.get(f"/v1/files/{created['id']}", headers=ALPHA)
        body = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "injected"
        assert body["error"]["type"] == "server_error"
        assert resp.headers["retry-after-ms"] == "10" and resp.headers["x-should-retry"] == "true"
    assert (await client.get(f"/v1/files/{created['id']}", headers=ALPHA)).status == 200
    assert (await admin(client, "GET", "faults"))["data"] == []  # spent
    resp = await client.delete(f"/admin/faults/{rule_id}", headers=ADMIN)
    assert resp.status == 404


async def test_a_catch_all_rule_spares_the_admin_api(client: Client) -> None:
    await admin(client, "POST", "faults", json={"status": 500})
    assert (await client.get("/v1/files", headers=ALPHA)).status == 500
    assert (await admin(client, "GET", "faults"))["data"] != []  # the admin API still answers
    await admin(client, "DELETE", "faults")
    assert (await client.get("/v1/files", headers=ALPHA)).status == 200


async def test_rules_match_project_route_and_probability(client: Client) -> None:
    await admin(client, "POST", "faults", json={"project": "beta", "status": 500})
    await admin(
        client, "POST", "faults", json={"route": "/v1/files", "status": 429, "probability": 0}
    )
    assert (await client.get("/v1/files", headers=ALPHA)).status == 200
    assert (await client.get("/v1/files", headers=BETA)).status == 500
    await admin(client, "DELETE", "faults")
    assert (await client.get("/v1/files", headers=BETA)).status == 200


async def test_latency_and_disconnect(client: Client) -> None:
    await admin(client, "POST", "faults", json={"latency_ms": 300, "count": 1})
    started = time.monotonic()
    assert (await client.get("/v1/files", headers=ALPHA)).status == 200
    assert time.monotonic() - started >= 0.3
    created = await upload(client, b"0123456789" * 100)
    await admin(client, "POST", "faults", json={"disconnect": True, "count": 1})
    resp = await client.get(f"/v1/files/{created['id']}/content", headers=ALPHA)
    assert resp.status == 200 and resp.headers["Content-Length"] == "1000"
    with pytest.raises(aiohttp.ClientPayloadError):  # the body was cut short
        await resp.read()
    assert (await client.get("/v1/files", headers=ALPHA)).status == 200


async def test_storage_faults(client: Client, tmp_path: Path) -> None:
    await admin(
        client, "POST", "faults", json={"route": "/v1/files", "storage": "full", "count": 1}
    )
    resp = await client.post("/v1/files", data=upload_form(b"x" * 5000), headers=ALPHA)
    body = await resp.json()
    assert resp.status == 507 and body["error"]["code"] == "insufficient_storage"
    assert temp_files(tmp_path / "data") == []
    created = await upload(client, b"y" * 5000)
    await admin(
        client,
        "POST",
        "faults",
        json={"route": "/v1/files/{file_id}/content", "storage": "missing_blob", "count": 1},
    )
    resp = await client.get(f"/v1/files/{created['id']}/content", headers=ALPHA)
    assert resp.status == 500 and (await resp.json())["error"]["code"] == "blob_missing"
    assert (await client.get(f"/v1/files/{created['id']}/content", headers=ALPHA)).status == 200
    await admin(client, "POST", "faults", json={"storage": "slow", "slow_ms": 100, "count": 1})
    started = time.monotonic()
    await upload(client, b"slow disk")
    assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"status": 200}, "status"),
        ({"status": "500"}, "status"),
        ({"storage": "melted"}, "storage"),
        ({"status": 500, "probability": 2}, "probability"),
        ({"colour": "red"}, "colour"),
        ({}, "does nothing"),
        ({"status": 500, "disconnect": True}, "at most one"),
    ],
)
async def test_bad_rules_are_400(client: Client, rule: dict[str, Any], field: str) -> None:
    resp = await client.post("/admin/faults", json=rule, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 400 and field in body["error"]["message"]


async def test_the_clock_freezes_and_moves(client: Client) -> None:
    state = await admin(client, "POST", "clock", json={"freeze": True, "time": 1_800_000_000})
    assert state == {"time": 1_800_000_000, "frozen": True}
    created = await upload(
        client,
        b"x",
        extra={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    assert created["created_at"] == 1_800_000_000
    await admin(client, "POST", "clock", json={"advance": 3600})
    assert (await client.get(f"/v1/files/{created['id']}", headers=ALPHA)).status == 404
    state = await admin(client, "POST", "clock", json={"resume": True})
    assert state["frozen"] is False and abs(state["time"] - time.time()) < 5


@pytest.mark.parametrize(
    ("method", "path", "payload", "message", "param"),
    [
        ("POST", "reset", {"project": 5}, "'project' must be a string.", "project"),
        ("GET", "requests?limit=ten", None, "'limit' must be an integer.", "limit"),
        ("GET", "requests?status=", None, "'status' must be an integer.", "status"),
        ("POST", "clock", {"resume": "yes"}, 'Give {"freeze": true}, {"advance": seconds}', None),
        ("POST", "clock", {"advance": "x"}, 'Give {"freeze": true}, {"advance": seconds}', None),
        ("POST", "clock", {"freeze": True, "time": "now"}, "'time' must be Unix seconds", "time"),
        ("POST", "faults", {"status": "503"}, "fault.status: wrong type (str)", "status"),
    ],
)
async def test_admin_requests_are_checked_against_their_types(
    client: Client, method: str, path: str, payload: Any, message: str, param: str | None
) -> None:
    await upload(client, b"kept")
    resp = await client.request(method, f"/admin/{path}", json=payload, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["message"].startswith(message) and body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"
    # Nothing changed: the file is there, the clock runs, no rule was added.
    assert len((await admin(client, "GET", "projects"))["data"]) == 1
    assert (await admin(client, "GET", "clock"))["frozen"] is False
    assert (await admin(client, "GET", "faults"))["data"] == []


async def test_the_admin_api_reads_what_it_uses_and_ignores_the_rest(client: Client) -> None:
    """Of a query parameter given twice the first counts; a clock request's unused fields are
    not looked at (as before the requests were declared types)."""
    await upload(client, b"one")
    await upload(client, b"two")
    journal = await admin(client, "GET", "requests?limit=1&limit=5&method=POST&method=GET")
    assert len(journal["data"]) == 1 and journal["data"][0]["method"] == "POST"
    state = await admin(client, "POST", "clock", json={"freeze": True, "time": 1_800_000_000})
    state = await admin(client, "POST", "clock", json={"advance": 60, "time": "soon"})
    assert state == {"time": 1_800_000_060, "frozen": True}
    state = await admin(client, "POST", "clock", json={"resume": True, "time": -1})
    assert state["frozen"] is False
    resp = await client.post("/admin/clock", json={"time": -5}, headers=ADMIN)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["message"].startswith('Give {"freeze": true}')


async def test_the_latest_clock_time_start_up_takes_still_serves(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """[testing] frozen_time is refused past CLOCK_MAX (test_config.py); at CLOCK_MAX itself
    every request works, a batch file's expiry 30 days later included."""
    config = make_config(tmp_path / "data", testing={"frozen_time": CLOCK_MAX})
    client = await aiohttp_client(create_app(config))
    created = await upload(client, b'{"a": 1}\n', purpose="batch")
    assert created["created_at"] == CLOCK_MAX
    assert created["expires_at"] == CLOCK_MAX + 30 * 24 * 3600
    listed = await (await client.get("/v1/files", headers=ALPHA)).json()
    assert [f["id"] for f in listed["data"]] == [created["id"]]


async def test_a_clock_given_by_the_test_is_not_adjusted(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path / "data", admin={"token": TOKEN})
    client = await aiohttp_client(create_app(config, clock=lambda: 1_700_000_000.0))
    for payload in ({"freeze": True}, {"advance": "x"}, {}):
        resp = await client.post("/admin/clock", json=payload, headers=ADMIN)
        body = await resp.json()
        assert resp.status == 400 and "not adjustable" in body["error"]["message"], body
    created = await upload(client, b"x")
    assert created["created_at"] == 1_700_000_000


def test_two_failures_then_success_is_one_success_for_the_sdk() -> None:
    rule = {"method": "GET", "route": "/v1/files/{file_id}", "status": 500, "count": 2}
    with serve(admin={"token": TOKEN}, testing={"faults": [rule]}) as server:
        project = server.new_project()
        with project.openai(max_retries=2) as sdk:
            created = sdk.files.create(file=b"retried", purpose="batch")
            assert sdk.files.retrieve(created.id).id == created.id
        req = urllib.request.Request(
            f"{server.url}/admin/faults",
            data=json.dumps({**rule, "count": 1}).encode(),
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=10).close()
        no_retries = project.openai(max_retries=0)
        with no_retries, pytest.raises(openai.InternalServerError):
            no_retries.files.retrieve(created.id)


def test_seeded_ids_repeat() -> None:
    def ids() -> list[str]:
        with serve(testing={"id_seed": 42}, files={"id_format": "openai"}) as server:
            sdk = server.new_project().openai()
            with sdk:
                return [sdk.files.create(file=b"x", purpose="batch").id for _ in range(3)]

    first, second = ids(), ids()
    assert first == second and len(set(first)) == 3 and first[0].startswith("file-")


async def test_export_and_import_round_trip_exactly(client: Client, tmp_path: Path) -> None:
    contents = [b"twin", b"twin", b"\x00binary\xff" * 1000, b""]
    made = [await upload(client, c, filename=f"f{i}.bin") for i, c in enumerate(contents)]
    await upload(client, b"beta's", headers=BETA)
    listing = await (await client.get("/v1/files", headers=ALPHA)).json()
    resp = await client.get("/admin/export?project=alpha", headers=ADMIN)
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-tar"
    archive = await resp.read()

    await admin(client, "POST", "reset")
    body = await admin(client, "POST", "import", data=archive)
    assert body == {"imported": 4}
    assert await (await client.get("/v1/files", headers=ALPHA)).json() == listing
    for created, content in zip(made, contents, strict=True):
        resp = await client.get(f"/v1/files/{created['id']}/content", headers=ALPHA)
        assert await resp.read() == content
    assert (await (await client.get("/v1/files", headers=BETA)).json())["total"] == 0
    # Importing the same files again is a conflict, and changes nothing.
    resp = await client.post("/admin/import", data=archive, headers=ADMIN)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "conflict"
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 4
    assert temp_files(tmp_path / "data") == []


async def test_a_head_of_the_export_is_its_headers_alone(client: Client) -> None:
    await upload(client, b"kept")
    head = await client.head("/admin/export", headers=ADMIN)
    assert head.status == 200 and head.headers["Content-Type"] == "application/x-tar"
    assert await head.read() == b""
    # No archive followed the headers on the connection: the next answer on it is read whole.
    resp = await client.get("/admin/export", headers=ADMIN)
    assert resp.status == 200 and len(await resp.read()) == int(head.headers["Content-Length"])


@pytest.mark.parametrize(
    "archive",
    [
        b"not a tar",
        tar_archive({"../../etc/passwd": b"x"}),
        tar_archive({"filesd-export.json": b'{"version": 1, "files": []}', "blobs/../x": b"x"}),
        tar_archive(
            {"filesd-export.json": b'{"version": 1, "files": []}', "blobs/" + "a" * 64: b"x"}
        ),
        tar_archive({"filesd-export.json": b"{not json"}),
        tar_archive(
            {
                "filesd-export.json": json.dumps(
                    {
                        "version": 1,
                        "files": [
                            {
                                "id": "f",
                                "project": "alpha",
                                "filename": "f",
                                "purpose": "batch",
                                "bytes": 1,
                                "sha256": "b" * 64,
                                "created_at": 1,
                                "expires_at": None,
                                "status": "processed",
                                "status_details": None,
                            }
                        ],
                    }
                ).encode()
            }
        ),
    ],
    ids=["garbage", "traversal", "bad-blob-name", "wrong-digest", "bad-json", "missing-blob"],
)
async def test_bad_archives_are_refused_whole(
    client: Client, tmp_path: Path, archive: bytes
) -> None:
    resp = await client.post("/admin/import", data=archive, headers=ADMIN)
    assert resp.status == 400, await resp.text()
    assert (await admin(client, "GET", "projects"))["data"] == []
    assert blob_files(tmp_path / "data") == [] and temp_files(tmp_path / "data") == []
    assert not (tmp_path / "etc").exists()
