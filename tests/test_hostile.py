"""Hostile and malformed input: each gets the right 4xx, in the envelope, and changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import ALPHA, BETA, Client, blob_files, temp_files, upload, wait_until

BOUNDARY = "hostile"


def multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    """Raw multipart: (Content-Disposition value, content) pairs, bytes as they go on the wire."""
    out = b""
    for disposition, content in parts:
        out += b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: " + disposition
        out += b"\r\n\r\n" + content + b"\r\n"
    return out + b"--" + BOUNDARY.encode() + b"--\r\n"


async def post(client: Client, body: bytes, headers: dict[str, str] = ALPHA) -> Any:
    return await client.post(
        "/v1/files",
        data=body,
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


async def assert_refused(resp: Any, status: int = 400, param: str | None = None) -> None:
    body = await resp.json()
    assert resp.status == status, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param


async def assert_unchanged(client: Client, tmp_path: Path) -> None:
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 0
    assert blob_files(tmp_path / "data") == [] and temp_files(tmp_path / "data") == []


PURPOSE = (b'form-data; name="purpose"', b"assistants")


@pytest.mark.parametrize(
    "filename",
    [b"../../etc/passwd", b"a/b.txt", b"a\\\\b.txt", b"..", b".", b"\xff\xfe.txt", b"x" * 2000],
)
async def test_hostile_filenames(client: Client, tmp_path: Path, filename: bytes) -> None:
    disposition = b'form-data; name="file"; filename="' + filename + b'"'
    resp = await post(client, multipart([PURPOSE, (disposition, b"data")]))
    await assert_refused(resp, param="file")
    await assert_unchanged(client, tmp_path)


@pytest.mark.parametrize(
    "purpose", [b"x" * 1_000_000, b"assist\x00ants", b"\xff\xfe", b"", b"assistants "]
)
async def test_hostile_purposes(client: Client, tmp_path: Path, purpose: bytes) -> None:
    file = (b'form-data; name="file"; filename="f.txt"', b"data")
    resp = await post(client, multipart([(b'form-data; name="purpose"', purpose), file]))
    await assert_refused(resp, param="purpose")
    await assert_unchanged(client, tmp_path)


async def test_missing_and_duplicate_fields(client: Client, tmp_path: Path) -> None:
    file = (b'form-data; name="file"; filename="f.txt"', b"data")
    for parts, param in [
        ([PURPOSE], "file"),
        ([file], "purpose"),
        ([PURPOSE, PURPOSE, file], "purpose"),
        ([PURPOSE, file, file], "file"),
        ([(b'form-data; filename="f.txt"', b"data")], None),
        ([PURPOSE, file, (b'form-data; name="purpose[]"', b"x")], "purpose[]"),
    ]:
        await assert_refused(await post(client, multipart(parts)), param=param)
    await assert_unchanged(client, tmp_path)


async def test_malformed_multipart(client: Client, tmp_path: Path) -> None:
    for body in [b"not multipart at all", b"--hostile\r\nno headers end", b"--other--\r\n"]:
        resp = await post(client, body)
        assert resp.status == 400, await resp.text()
    await assert_unchanged(client, tmp_path)


async def _raw(client: Client, request: bytes, *, close: bool) -> bytes:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    if close:
        writer.close()
        await writer.wait_closed()
        return b""
    try:
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def _request(body: bytes, content_length: int) -> bytes:
    return (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + ALPHA["Authorization"].encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=hostile\r\nContent-Length: "
        + str(content_length).encode()
        + b"\r\n\r\n"
        + body
    )


async def test_a_truncated_body_leaves_nothing(client: Client, tmp_path: Path) -> None:
    body = multipart([PURPOSE, (b'form-data; name="file"; filename="f"', b"z" * 500_000)])
    await _raw(client, _request(body[: len(body) // 2], len(body)), close=True)
    # The server notices the closed connection and cleans up.
    await wait_until(lambda: temp_files(tmp_path / "data") == [], what="temp files removed")
    await assert_unchanged(client, tmp_path)
    await upload(client, b"the server goes on")


async def test_a_content_length_lie_is_refused(client: Client, tmp_path: Path) -> None:
    body = multipart([PURPOSE, (b'form-data; name="file"; filename="f"', b"z" * 5000)])
    answer = await _raw(client, _request(body, 300), close=False)  # says 300, sends 5,000
    # The excess reads as a malformed pipelined request: aiohttp's parser answers 400 (plain
    # text: it happens below the application) and closes the connection.
    assert answer.split(b" ")[1] == b"400", answer[:200]
    await assert_unchanged(client, tmp_path)
    await upload(client, b"the server goes on")


async def test_oversized_headers_are_refused(client: Client) -> None:
    answer = await _raw(
        client,
        b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        close=False,
    )
    assert answer.split(b" ")[1] in (b"400", b"431"), answer[:200]
    assert (await client.get("/v1/files", headers=ALPHA)).status == 200


async def test_another_projects_upload_cannot_be_touched(client: Client) -> None:
    resp = await client.post(
        "/v1/uploads",
        json={"bytes": 1, "filename": "f", "mime_type": "text/plain", "purpose": "batch"},
        headers=ALPHA,
    )
    upload_id = (await resp.json())["id"]
    bodies: list[tuple[str, dict[str, object]]] = [("complete", {"part_ids": []}), ("cancel", {})]
    for path, body in bodies:
        resp = await client.post(f"/v1/uploads/{upload_id}/{path}", json=body, headers=BETA)
        assert resp.status == 404
    resp = await client.post(f"/v1/uploads/{upload_id}/cancel", json={}, headers=ALPHA)
    assert resp.status == 200


async def test_nosniff_and_attachment_on_every_download_path(client: Client) -> None:
    for size in (10, 200_000):  # from memory, and through FileResponse
        created = await upload(client, b"<script>alert(1)</script>".ljust(size, b" "))
        resp = await client.get(f"/v1/files/{created['id']}/content", headers=ALPHA)
        assert resp.status == 200
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"].startswith("attachment;")


async def test_another_projects_parts_cannot_be_spliced_in(client: Client) -> None:
    async def new_upload(headers: dict[str, str]) -> str:
        resp = await client.post(
            "/v1/uploads",
            json={"bytes": 6, "filename": "f", "mime_type": "text/plain", "purpose": "batch"},
            headers=headers,
        )
        return str((await resp.json())["id"])

    theirs, mine = await new_upload(ALPHA), await new_upload(BETA)
    form = aiohttp.FormData()
    form.add_field("data", b"secret", filename="p")
    resp = await client.post(f"/v1/uploads/{theirs}/parts", data=form, headers=ALPHA)
    their_part = (await resp.json())["id"]
    resp = await client.post(
        f"/v1/uploads/{mine}/complete", json={"part_ids": [their_part]}, headers=BETA
    )
    await assert_refused(resp, param="part_ids")
    assert (await (await client.get("/v1/files", headers=BETA)).json())["total"] == 0
