"""Requests that used to get a 500 or the wrong answer (issue 9, section 3): each now gets the
right status in the envelope, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from filesd import cli
from filesd.api.app import create_app
from filesd.testing import serve
from filesd.testing.process import ServerProcess

from .conftest import (
    ALPHA,
    ALPHA_KEY,
    KEYS_TOML,
    Client,
    ClientFactory,
    make_config,
    upload,
    wait_until_sync,
)
from .test_hostile import PURPOSE, multipart, post

ADMIN_TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UPLOAD = {"bytes": 3, "filename": "f.txt", "mime_type": "text/plain", "purpose": "batch"}


@pytest.fixture
async def admin_client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    client: Client = await aiohttp_client(
        create_app(make_config(tmp_path / "data", admin={"token": ADMIN_TOKEN}))
    )
    return client


@pytest.fixture
async def echo_client(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    """The admin API on, and the Batch API on the built-in echo model."""
    config = make_config(
        tmp_path / "data", admin={"token": ADMIN_TOKEN}, batches={"upstream": "echo"}
    )
    client: Client = await aiohttp_client(create_app(config))
    return client


async def assert_400(resp: Any, param: str | None = None) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return dict(body)


# --- 500s that must be 4xx ---------------------------------------------------------------------


async def test_an_offset_beyond_sqlite_integers_is_a_400(client: Client) -> None:
    resp = await client.get("/v1/files?offset=9223372036854775808", headers=ALPHA)
    body = await assert_400(resp, param="offset")
    assert body["error"]["code"] == "integer_above_max_value"
    resp = await client.get("/v1/files?offset=9999999999999999999", headers=ALPHA)
    await assert_400(resp, param="offset")
    resp = await client.get("/v1/files?offset=9223372036854775807", headers=ALPHA)
    assert resp.status == 200 and (await resp.json())["data"] == []


async def test_a_lone_surrogate_echoed_in_an_error_is_still_a_json_400(client: Client) -> None:
    # JSON may escape a lone surrogate; the error naming the field echoes it back, and the
    # response encoder must escape it again rather than fail (a plain-text 500).
    body = b'{"purpose": "batch", "filename": "a.txt", "bytes": 1, "mime_type": "text/plain",'
    body += b' "\\ud800": 1}'
    resp = await client.post(
        "/v1/uploads", data=body, headers={**ALPHA, "Content-Type": "application/json"}
    )
    error = await assert_400(resp)
    assert "\ud800" in error["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "quoted"),
    [
        ("/v1/uploads", {**UPLOAD, "expires_after": {"\ud800": 1}}, "\ud800"),
        ("/v1/uploads", {**UPLOAD, "purpose": "nope", "expires_after": {"\ud800": 1}}, "nope"),
        ("/v1/batches", {"output_expires_after": {"\ud800": 1}}, "\ud800"),
        ("/v1/batches", {"metadata": {"\ud800": 1}}, "\ud800"),
        ("/v1/batches", {"metadata": {"\ud800": "v" * 513}}, "512"),
        ("/admin/faults", {"\ud800": 1}, "\ud800"),
    ],
)
async def test_a_lone_surrogate_quoted_by_a_refusal_is_a_400(
    echo_client: Client, path: str, body: dict[str, Any], quoted: str
) -> None:
    """A refusal worded by filesd that quotes the client's words: the validation library must
    not choke on them (it renders its messages as UTF-8)."""
    if path == "/v1/batches":
        body = {
            "input_file_id": "file-x",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **body,
        }
    headers = {
        **(ADMIN if path.startswith("/admin") else ALPHA),
        "Content-Type": "application/json",
    }
    resp = await echo_client.post(path, data=json.dumps(body), headers=headers)
    error = await assert_400(resp)
    assert quoted in error["error"]["message"]
    # Nothing was made.
    listed = await echo_client.get("/admin/faults", headers=ADMIN)
    assert (await listed.json())["data"] == []
    listed = await echo_client.get("/v1/batches", headers=ALPHA)
    assert (await listed.json())["data"] == []


async def test_a_metadata_value_that_is_no_valid_unicode_is_named_by_its_path(
    echo_client: Client,
) -> None:
    body = {
        "input_file_id": "file-x",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"k": "\ud800"},
    }
    resp = await echo_client.post(
        "/v1/batches",
        data=json.dumps(body),
        headers={**ALPHA, "Content-Type": "application/json"},
    )
    await assert_400(resp, param="metadata.k")


async def test_a_fault_rule_with_a_huge_count_is_listed(admin_client: Client) -> None:
    rule = {"status": 500, "count": 10**20}
    resp = await admin_client.post("/admin/faults", json=rule, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    resp = await admin_client.get("/admin/faults", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    assert [r["count"] for r in (await resp.json())["data"]] == [10**20]


async def test_deeply_nested_json_is_a_400_on_every_json_route(admin_client: Client) -> None:
    client = admin_client
    resp = await client.post("/v1/uploads", json=UPLOAD, headers=ALPHA)
    upload_id = (await resp.json())["id"]
    nested = b"[" * 100_000
    routes = [
        ("/v1/uploads", ALPHA),
        (f"/v1/uploads/{upload_id}/complete", ALPHA),
        (f"/v1/uploads/{upload_id}/cancel", ALPHA),
        ("/admin/reset", ADMIN),
        ("/admin/faults", ADMIN),
        ("/admin/clock", ADMIN),
    ]
    for path, headers in routes:
        resp = await client.post(
            path, data=nested, headers={**headers, "Content-Type": "application/json"}
        )
        body = await assert_400(resp)
        assert "could not parse the JSON body" in body["error"]["message"], path
    # Nothing changed: the upload is still pending and can be cancelled.
    resp = await client.post(f"/v1/uploads/{upload_id}/cancel", json={}, headers=ALPHA)
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_non_finite_numbers_are_refused(admin_client: Client, literal: str) -> None:
    client = admin_client
    before = (await (await client.get("/admin/clock", headers=ADMIN)).json())["time"]
    for payload in [
        f'{{"freeze": true, "time": {literal}}}',
        f'{{"advance": {literal}}}',
    ]:
        resp = await client.post(
            "/admin/clock",
            data=payload,
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        await assert_400(resp)
    body = f'{{"bytes": {literal}, "filename": "f", "mime_type": "t", "purpose": "batch"}}'
    resp = await client.post(
        "/v1/uploads", data=body, headers={**ALPHA, "Content-Type": "application/json"}
    )
    await assert_400(resp)
    state = await (await client.get("/admin/clock", headers=ADMIN)).json()
    assert not state["frozen"] and state["time"] >= before


async def test_the_clock_stays_within_dates(admin_client: Client) -> None:
    client = admin_client
    for payload in [
        {"freeze": True, "time": 10**400},
        {"freeze": True, "time": 1e300},
        {"freeze": True, "time": -1},
        {"advance": 10**400},
        {"advance": 1e300},
    ]:
        resp = await client.post("/admin/clock", json=payload, headers=ADMIN)
        await assert_400(resp)
    resp = await client.post("/admin/clock", json={"freeze": True, "time": 1.8e9}, headers=ADMIN)
    assert resp.status == 200 and (await resp.json())["time"] == 1.8e9
    await upload(client, b"the clock still works")


def test_a_client_gone_mid_upload_is_logged_as_a_disconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real listener (aiohttp's test server cancels the handler instead): the handler sees
    the disconnect, discards everything and logs one line at info."""
    caplog.set_level(logging.INFO)
    with serve() as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-gone\r\n"
                + b"Content-Type: multipart/form-data; boundary=b\r\n"
                + b"Content-Length: 900000\r\n\r\n"
                + b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
                + b"x" * 300_000
            )
        wait_until_sync(lambda: "client disconnected" in caplog.text, what="the disconnect logged")
        project = server.new_project()
        assert project.openai().files.list().data == []
    assert "unhandled error" not in caplog.text and "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.slow
def test_a_disconnect_mid_upload_leaves_no_traceback_in_the_servers_log(tmp_path: Path) -> None:
    config = tmp_path / "filesd.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{KEYS_TOML}')
    server = ServerProcess(["--config", str(config)], cwd=tmp_path)
    try:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + ALPHA_KEY.encode()
                + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                + b"Content-Length: 9000000\r\n\r\n"
                + b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
                + b"x" * 3_000_000
            )
        wait_until_sync(
            lambda: "client disconnected" in server.stderr_text(), what="the disconnect logged"
        )
    finally:
        assert server.stop() == 0
    log = server.stderr_text()
    assert "Traceback" not in log and "unhandled error" not in log and "ERROR" not in log, log
    assert re.search(r"INFO filesd\.api\.bodies: client disconnected mid-body: POST /v1/files", log)


# --- smaller -----------------------------------------------------------------------------------


async def _expect_continue(client: Client, path: str, authorization: bytes | None) -> bytes:
    """Send only the head of a request with `Expect: 100-continue`; the server's first answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: x\r\n"
            + (b"Authorization: " + authorization + b"\r\n" if authorization else b"")
            + b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100\r\n"
            + b"Expect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()


async def test_expect_100_continue_checks_the_key_first(client: Client) -> None:
    resp = await client.post("/v1/uploads", json=UPLOAD, headers=ALPHA)
    upload_id = (await resp.json())["id"]
    for path in ("/v1/files", f"/v1/uploads/{upload_id}/parts"):
        for authorization in (None, b"Bearer sk-wrong-key-0000000000"):
            head = await _expect_continue(client, path, authorization)
            assert head.startswith(b"HTTP/1.1 401 "), (path, head)
        head = await _expect_continue(client, path, ALPHA["Authorization"].encode())
        assert head.startswith(b"HTTP/1.1 100 Continue"), (path, head)


@pytest.mark.parametrize(
    "filename",
    ["a\u0085b.txt", "a\u009bb.txt", "invoice\u202egpj.exe", "a\u2066b", "a\u2069b", "\u202a"],
)
async def test_filenames_with_c1_or_bidi_controls_are_refused(
    client: Client, filename: str
) -> None:
    disposition = b'form-data; name="file"; filename="' + filename.encode() + b'"'
    resp = await post(client, multipart([PURPOSE, (disposition, b"data")]))
    body = await assert_400(resp, param="file")
    assert "control characters" in body["error"]["message"]
    resp = await client.post("/v1/uploads", json={**UPLOAD, "filename": filename}, headers=ALPHA)
    await assert_400(resp, param="filename")
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 0


async def test_other_unicode_filenames_are_still_accepted(client: Client) -> None:
    for filename in ("résumé.txt", "データ.jsonl", "a\u00a0b.txt", "emoji-\U0001f600.txt"):
        disposition = b'form-data; name="file"; filename="' + filename.encode() + b'"'
        resp = await post(client, multipart([PURPOSE, (disposition, b"data")]))
        assert resp.status == 200 and (await resp.json())["filename"] == filename


CONTENT = bytes(range(256)) * 4


async def _download(client: Client, **headers: str) -> Any:
    created = await upload(client, CONTENT)
    url = f"/v1/files/{created['id']}/content"
    first = await client.get(url, headers=ALPHA)
    assert first.status == 200
    return url, first.headers["ETag"], first.headers["Last-Modified"]


async def test_range_edge_cases(client: Client) -> None:
    url, etag, last_modified = await _download(client)

    async def get(**headers: str) -> tuple[int, bytes, Any]:
        resp = await client.get(url, headers={**ALPHA, **headers})
        return resp.status, await resp.read(), resp

    status, body, resp = await get(Range="bytes=-0")
    assert status == 416 and json.loads(body)["error"]["param"] == "Range"
    assert resp.headers["Content-Range"] == "bytes */1024"
    status, body, _ = await get(Range="items=0-1")
    assert (status, body) == (200, CONTENT)
    status, body, _ = await get(Range="bytes=0-1", **{"If-Range": '"not-the-etag"'})
    assert (status, body) == (200, CONTENT)
    status, body, _ = await get(Range="bytes=0-1", **{"If-Range": "W/" + etag})
    assert (status, body) == (200, CONTENT)  # If-Range compares strongly
    status, body, _ = await get(Range="bytes=0-1", **{"If-Range": etag})
    assert (status, body) == (206, CONTENT[:2])
    status, body, _ = await get(Range="bytes=0-1", **{"If-Range": last_modified})
    assert (status, body) == (206, CONTENT[:2])
    status, body, _ = await get(Range="bytes=0-1", **{"If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert (status, body) == (200, CONTENT)
    status, body, resp = await get(Range="bytes=0-1,5-6")
    assert status in (200, 206), status
    if status == 200:
        assert body == CONTENT


async def _assert_416_in_envelope(resp: Any, size: int) -> None:
    assert resp.status == 416, (resp.status, await resp.read())
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"]["param"] == "Range" and body["error"]["message"], body
    assert resp.headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize(
    "value",
    [
        "bytes=" + "9" * 5000 + "-",  # int() refuses that many digits: it was a 500
        "bytes=" + "1" * 20 + "-5",
        "bytes=0 - 5",  # whitespace is not in RFC 9110's grammar (aiohttp's bare 416 before)
        "bytes = 0-5",
        "bytes= 0-5",
        "bytes=0-\t5",
        "bytes=",
        "bytes=-",
        "bytes=abc",
        "bytes=5-1",
        "bytes=1024-",
        "bytes=-0",
    ],
)
async def test_every_unsatisfiable_or_malformed_byte_range_is_a_416_in_the_envelope(
    client: Client, value: str
) -> None:
    url, _, _ = await _download(client)
    await _assert_416_in_envelope(await client.get(url, headers={**ALPHA, "Range": value}), 1024)


async def test_a_byte_range_of_an_empty_file_is_a_416_in_the_envelope(client: Client) -> None:
    created = await upload(client, b"")
    url = f"/v1/files/{created['id']}/content"
    for value in ("bytes=-5", "bytes=0-", "bytes=0-0"):
        await _assert_416_in_envelope(await client.get(url, headers={**ALPHA, "Range": value}), 0)


@pytest.mark.parametrize(
    ("value", "first", "last"),
    [
        ("bytes=0-" + "9" * 5000, 0, 1023),  # a last byte past the end is the end
        ("bytes=1000-" + "9" * 25, 1000, 1023),
        ("bytes=-" + "9" * 5000, 0, 1023),  # a suffix longer than the file is all of it
        ("bytes=" + "0" * 5000 + "5-" + "0" * 30 + "7", 5, 7),  # leading zeros
        ("Bytes=10-19", 10, 19),
        ("bytes=1020-2000", 1020, 1023),
    ],
)
async def test_large_or_padded_byte_positions_are_read_as_numbers(
    client: Client, value: str, first: int, last: int
) -> None:
    url, _, _ = await _download(client)
    resp = await client.get(url, headers={**ALPHA, "Range": value})
    assert resp.status == 206, (resp.status, await resp.read())
    assert await resp.read() == CONTENT[first : last + 1]
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(CONTENT)}"


async def test_304_and_412_carry_the_usual_headers(client: Client) -> None:
    url, etag, last_modified = await _download(client)
    resp = await client.get(url, headers={**ALPHA, "If-None-Match": etag})
    assert resp.status == 304
    assert resp.headers["ETag"] == etag and resp.headers["Last-Modified"] == last_modified
    assert resp.headers["Cache-Control"] == "private, no-cache"
    assert resp.headers["x-request-id"].startswith("req_")
    for condition in (
        {"If-Match": '"not-the-etag"'},
        {"If-Match": "W/" + etag},
        {"If-Unmodified-Since": "Wed, 21 Oct 2015 07:28:00 GMT"},
    ):
        resp = await client.get(url, headers={**ALPHA, **condition})
        assert resp.status == 412, condition
        assert resp.headers["ETag"] == etag and resp.headers["Last-Modified"] == last_modified
        assert resp.headers["Cache-Control"] == "private, no-cache"
        assert resp.headers["x-request-id"].startswith("req_")
        assert (await resp.json())["error"]["code"] == "precondition_failed"
    for condition in (
        {"If-Match": etag},
        {"If-Match": "*"},
        {"If-Unmodified-Since": last_modified},
    ):
        resp = await client.get(url, headers={**ALPHA, **condition})
        assert resp.status == 200 and await resp.read() == CONTENT, condition


def test_keys_create_refuses_an_empty_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["keys", "create", "--project", "", "--data-dir", str(tmp_path / "data")])
    assert exited.value.code == 2
    assert "--project: required, a non-empty string" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
