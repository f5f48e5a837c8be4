"""Limits that keep one client or project from taking the server: quotas, upload slots,
stalled bodies."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from filesd.app import create_app
from filesd.appkeys import UPLOAD_SLOTS

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


async def test_quotas_refuse_and_store_nothing(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path, limits={"max_files_per_project": 2, "max_bytes_per_project": 1000}
    )
    client: Client = await aiohttp_client(create_app(config))
    await upload(client, b"a" * 400)
    await upload(client, b"b" * 400)
    resp = await client.post("/v1/files", data=upload_form(b"c"), headers=ALPHA)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "quota_exceeded"
    assert "at most 2 files" in body["error"]["message"]
    # Another project has its own quota.
    await upload(client, b"x" * 900, headers=BETA)
    resp = await client.post("/v1/files", data=upload_form(b"y" * 200), headers=BETA)
    body = await resp.json()
    assert resp.status == 400 and "at most 1000 bytes" in body["error"]["message"]
    listing = await (await client.get("/v1/files", headers=ALPHA)).json()
    assert listing["total"] == 2
    assert len(blob_files(tmp_path)) == 3 and temp_files(tmp_path) == []
    # Deleting frees quota.
    await client.delete(f"/v1/files/{listing['data'][0]['id']}", headers=ALPHA)
    await upload(client, b"c")


async def test_concurrent_uploads_cannot_overshoot_a_quota(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path, limits={"max_files_per_project": 5})
    client: Client = await aiohttp_client(create_app(config))
    responses = await asyncio.gather(
        *(
            client.post("/v1/files", data=upload_form(os.urandom(100)), headers=ALPHA)
            for _ in range(20)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 5 + [400] * 15
    assert (await (await client.get("/v1/files", headers=ALPHA)).json())["total"] == 5
    assert len(blob_files(tmp_path)) == 5 and temp_files(tmp_path) == []


async def test_too_many_uploads_at_once_get_429(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path, limits={"max_concurrent_uploads": 1, "body_timeout": 5})
    client: Client = await aiohttp_client(create_app(config))
    # Hold the one slot with an upload whose body trickles in.
    host, port = client.server.host, client.server.port
    sock = socket.create_connection((host, port))
    try:
        sock.sendall(
            b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + ALPHA["Authorization"].encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n"
            + b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow"\r\n\r\nabc'
        )
        await wait_until(lambda: client.app[UPLOAD_SLOTS].in_use == 1, what="slot taken")
        resp = await client.post("/v1/files", data=upload_form(b"x"), headers=ALPHA)
        body = await resp.json()
        assert resp.status == 429, body
        assert body["error"]["type"] == "requests"
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert resp.headers["Retry-After"] == "1" and resp.headers["retry-after-ms"] == "1000"
        # Other requests are not limited.
        assert (await client.get("/v1/files", headers=ALPHA)).status == 200
    finally:
        sock.close()


async def test_a_stalled_body_times_out_and_frees_its_slot(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = make_config(tmp_path, limits={"max_concurrent_uploads": 1, "body_timeout": 1})
    client: Client = await aiohttp_client(create_app(config))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + ALPHA["Authorization"].encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n"
        + b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow"\r\n\r\nabc'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # then nothing more is sent
    assert head.startswith(b"HTTP/1.1 408"), head
    writer.close()
    assert temp_files(tmp_path) == []
    assert client.app[UPLOAD_SLOTS].in_use == 0
    await upload(client, b"next")
