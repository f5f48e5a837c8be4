"""Limits that keep one client or project from taking the server: quotas, upload slots,
stalled bodies."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from filesd import cli
from filesd.api.app import create_app, reload_keys
from filesd.api.appkeys import AUTHENTICATOR, UPLOAD_SLOTS
from filesd.config import parse_config

from .conftest import (
    ALPHA,
    ALPHA_KEY,
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


@pytest.mark.slow
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


async def _hold_a_slot(client: Client, headers: dict[str, str] = ALPHA) -> socket.socket:
    """Start an upload whose body trickles in, and wait until it holds an upload slot."""
    before = client.app[UPLOAD_SLOTS].in_use
    sock = socket.create_connection((client.server.host, client.server.port))
    sock.sendall(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + headers["Authorization"].encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n"
        + b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow"\r\n\r\nabc'
    )
    try:
        await wait_until(
            lambda: client.app[UPLOAD_SLOTS].in_use > before, what="the trickling upload's slot"
        )
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.mark.slow
async def test_a_dripping_body_below_min_body_rate_gets_408_and_frees_its_slot(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """1 KiB every 2 s never stalls for body_timeout, but averages too little: 408 once the
    body has taken body_timeout seconds (here: 10 bytes every 0.2 s against 1000 bytes/s)."""
    config = make_config(
        tmp_path,
        limits={"max_concurrent_uploads": 1, "body_timeout": 1, "min_body_rate": 1000},
    )
    client: Client = await aiohttp_client(create_app(config))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + ALPHA["Authorization"].encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        + b'--b\r\nContent-Disposition: form-data; name="file"; filename="drip"\r\n\r\n'
    )
    started = loop.time()

    async def drip() -> None:
        while loop.time() - started < 30:  # then it stops, and would stall after 1 s more
            writer.write(b"x" * 10)
            await writer.drain()
            await asyncio.sleep(0.2)

    dripping = asyncio.create_task(drip())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 40)
        body = await asyncio.wait_for(reader.read(4096), 40)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"too slow" in body, body
        assert not dripping.done()  # cut while the client was still sending, not a stall
    finally:
        dripping.cancel()
        writer.close()
    assert temp_files(tmp_path) == []
    assert client.app[UPLOAD_SLOTS].in_use == 0
    await upload(client, b"next")


@pytest.mark.slow
async def test_a_steady_slow_body_above_min_body_rate_is_accepted(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Every window after the first is checked (3 s against body_timeout 1); the body keeps
    4 times the rate, so a loaded machine cannot make it miss."""
    config = make_config(tmp_path, limits={"body_timeout": 1, "min_body_rate": 500})
    client: Client = await aiohttp_client(create_app(config))

    async def steady() -> Any:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        for _ in range(30):  # 3 s at about 2,000 bytes/s
            yield b"y" * 200
            await asyncio.sleep(0.1)
        yield b"\r\n--b--\r\n"

    resp = await client.post(
        "/v1/files",
        data=steady(),
        headers={**ALPHA, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["bytes"] == 6000


async def _send_head_then(
    client: Client, head: bytes, burst: bytes, drip: bytes, every: float, until: float
) -> tuple[bytes, bytes, float]:
    """Send `head` and `burst` at once, then `drip` every `every` seconds for `until` seconds;
    the server's answer (head, body) and the seconds it took after the burst."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + burst)
    await writer.drain()
    started = loop.time()

    async def dripping() -> None:
        while loop.time() - started < until:
            writer.write(drip)
            await writer.drain()
            await asyncio.sleep(every)

    task = asyncio.create_task(dripping())
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), until + 10)
        took = loop.time() - started
        body = await asyncio.wait_for(reader.read(4096), 10)
    finally:
        task.cancel()
        writer.close()
    return answer, body, took


@pytest.mark.slow
async def test_a_burst_then_a_drip_gets_408_within_two_windows(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """32 KiB at once would buy 32 s of dripping against an average since the start; each
    window of body_timeout must bring its own bytes, so the drip is refused after the second."""
    config = make_config(
        tmp_path,
        limits={"max_concurrent_uploads": 1, "body_timeout": 1, "min_body_rate": 1000},
    )
    client: Client = await aiohttp_client(create_app(config))
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + ALPHA["Authorization"].encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        + b'--b\r\nContent-Disposition: form-data; name="file"; filename="drip"\r\n\r\n'
    )
    answer, body, took = await _send_head_then(
        client, head, b"x" * 32768, b"x" * 10, every=0.1, until=20
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert took < 6, took  # (the average since the start allowed about 30 s)
    assert b"too slow" in body and b"in the last 1 seconds" in body, body
    assert temp_files(tmp_path) == []
    assert client.app[UPLOAD_SLOTS].in_use == 0
    await upload(client, b"next")


def _json_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {ALPHA['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.slow
async def test_json_bodies_keep_the_pace_too(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """A JSON body that drips is refused as too slow (it used to have one overall timeout,
    and to say it had stalled); one that takes longer than body_timeout but keeps the pace
    is read."""
    config = make_config(tmp_path, limits={"body_timeout": 1, "min_body_rate": 200})
    client: Client = await aiohttp_client(create_app(config))
    answer, body, took = await _send_head_then(
        client, _json_head("/v1/uploads", 100_000), b" " * 100, b" " * 5, every=0.1, until=20
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"too slow" in body, body
    assert took < 6, took
    payload = json.dumps(
        {"bytes": 3, "filename": "f.txt", "mime_type": "text/plain", "purpose": "batch"}
    ).encode()
    padded = payload + b" " * 2400  # sent at about 800 bytes/s: 3 s, 4 times the rate

    async def steady() -> Any:
        for start in range(0, len(padded), 80):
            yield padded[start : start + 80]
            await asyncio.sleep(0.1)

    resp = await client.post(
        "/v1/uploads", data=steady(), headers={**ALPHA, "Content-Type": "application/json"}
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "pending"


async def test_one_project_cannot_take_every_upload_slot(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """With keys configured a project holds at most its share (default: half) of the slots."""
    config = make_config(tmp_path, limits={"max_concurrent_uploads": 2, "body_timeout": 30})
    client: Client = await aiohttp_client(create_app(config))
    sock = await _hold_a_slot(client, ALPHA)
    try:
        resp = await client.post("/v1/files", data=upload_form(b"x"), headers=ALPHA)
        body = await resp.json()
        assert resp.status == 429, body
        assert "for this project" in body["error"]["message"]
        assert body["error"]["code"] == "rate_limit_exceeded"
        await upload(client, b"beta still uploads", headers=BETA)
    finally:
        sock.close()


async def test_the_per_project_share_is_configurable_and_off_in_open_mode(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    limits = {"max_concurrent_uploads": 2, "max_concurrent_uploads_per_project": 2}
    client: Client = await aiohttp_client(create_app(make_config(tmp_path / "a", limits=limits)))
    sock = await _hold_a_slot(client, ALPHA)
    try:
        await upload(client, b"a second upload of alpha")
    finally:
        sock.close()
    open_config = parse_config(
        {"storage": {"data_dir": str(tmp_path / "b")}, "limits": {"max_concurrent_uploads": 2}},
        base_dir=tmp_path,
    )
    client = await aiohttp_client(create_app(open_config))
    token = {"Authorization": "Bearer sk-open-token"}
    sock = await _hold_a_slot(client, token)
    try:
        await upload(client, b"the same token again", headers=token)
    finally:
        sock.close()


def _one_key_config(data_dir: Path, **limits: int) -> Any:
    """Keys configured for one project only (alpha), as a CI setup has."""
    return parse_config(
        {
            "storage": {"data_dir": str(data_dir)},
            "auth": {"keys": [{"key": ALPHA_KEY, "project": "alpha"}]},
            "limits": limits,
        },
        base_dir=data_dir,
    )


async def test_a_single_tenant_has_no_default_share_until_a_second_project_has_keys(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """One project with keys has nobody to share the slots with: it may use them all. Once a
    second project has a key (here one made in the database), the default share applies."""
    app = create_app(_one_key_config(tmp_path, max_concurrent_uploads=2, body_timeout=30))
    client: Client = await aiohttp_client(app)
    sock = await _hold_a_slot(client, ALPHA)
    try:
        await upload(client, b"a second upload of the only project")
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            await asyncio.to_thread(
                cli.main, ["keys", "create", "--project", "beta", "--data-dir", str(tmp_path)]
            )
        await reload_keys(app)
        assert app[AUTHENTICATOR].project_count == 2
        resp = await client.post("/v1/files", data=upload_form(b"x"), headers=ALPHA)
        body = await resp.json()
        assert resp.status == 429 and "for this project" in body["error"]["message"], body
        beta_key = re.search(r"sk-[A-Za-z0-9_-]+", printed.getvalue())
        assert beta_key is not None, printed.getvalue()
        await upload(client, b"beta uploads", headers={"Authorization": f"Bearer {beta_key[0]}"})
    finally:
        sock.close()


async def test_an_explicit_share_applies_to_a_single_tenant_too(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    config = _one_key_config(
        tmp_path, max_concurrent_uploads=4, max_concurrent_uploads_per_project=1, body_timeout=30
    )
    client: Client = await aiohttp_client(create_app(config))
    sock = await _hold_a_slot(client, ALPHA)
    try:
        resp = await client.post("/v1/files", data=upload_form(b"x"), headers=ALPHA)
        body = await resp.json()
        assert resp.status == 429 and "at most 1 at once" in body["error"]["message"], body
    finally:
        sock.close()
