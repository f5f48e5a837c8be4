"""Faults a real deployment meets: a full disk, a busy database, damaged blobs."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from filesd.api.app import create_app

from .conftest import (
    ALPHA,
    ALPHA_KEY,
    ClientFactory,
    ServerProcess,
    make_config,
    upload,
    upload_form,
)
from .test_cli import _read_all, raw_upload_request

pytestmark = pytest.mark.slow


def _on_tmpfs(size: str) -> list[str]:
    """A command prefix that runs a program with its data dir ($DATA) on a tmpfs of `size`,
    in a mount namespace of its own (no mount is left behind, root not required)."""
    flags = ["--mount"] if os.geteuid() == 0 else ["--mount", "--map-root-user"]
    script = f'mount -t tmpfs -o size={size} tmpfs "$DATA" && exec "$@"'
    return ["unshare", *flags, "sh", "-c", script, "sh"]


def _post_file(server: ServerProcess, content_size: int) -> tuple[int, dict[str, Any]]:
    import socket

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    block = os.urandom(256 * 1024)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw_upload_request(host, int(port), b"", total=content_size))
        try:
            for _ in range(content_size // len(block)):
                sock.sendall(block)
            sock.sendall(b"\r\n--crash-test-boundary--\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed
        head, _, body = _read_all(sock).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_full_disk_is_507_and_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(
        ["--data-dir", str(data)], cwd=tmp_path, prefix=_on_tmpfs("6m"), env={"DATA": str(data)}
    )
    try:
        inside = Path(f"/proc/{server.proc.pid}/root") / str(data).lstrip("/")
        status, first = _post_file(server, 2 * 1024 * 1024)
        assert status == 200, first
        status, body = _post_file(server, 8 * 1024 * 1024)
        assert status == 507, body
        assert body["error"]["code"] == "insufficient_storage"
        assert body["error"]["type"] == "server_error"
        assert os.listdir(inside / "tmp") == []
        # The server goes on, and once space is freed, uploads succeed again.
        req = urllib.request.Request(
            f"{server.url}/v1/files/{first['id']}",
            method="DELETE",
            headers={"Authorization": f"Bearer {ALPHA_KEY}"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        status, body = _post_file(server, 3 * 1024 * 1024)
        assert status == 200, body
    finally:
        assert server.stop() == 0
    assert "storage full" in server.stderr_text()


async def test_a_busy_database_is_503_and_never_a_hang(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_config(tmp_path)))
    await upload(client, b"before")
    locked = threading.Event()
    release = threading.Event()
    failures: list[BaseException] = []

    def hold_write_lock() -> None:
        # The server's own writers (its background sweeps) may hold the lock a moment on a
        # busy machine: wait for it as long as it takes, then hold it until told.
        try:
            with sqlite3.connect(tmp_path / "filesd.db", isolation_level=None, timeout=120) as conn:
                conn.execute("BEGIN EXCLUSIVE")
                locked.set()
                release.wait()
                conn.execute("ROLLBACK")
        except BaseException as error:  # seen by the test, not lost in the thread
            failures.append(error)
            locked.set()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait)
        assert failures == []
        # The busy timeout (5 s, SQLite's own, by the wall clock), not a hang nor a longer
        # wait: bounded at twelve times it, which a busy machine's scheduling stays below.
        async with asyncio.timeout(60):
            resp = await client.post("/v1/files", data=upload_form(b"during"), headers=ALPHA)
            body = await resp.json()
        assert resp.status == 503, body
        assert body["error"]["code"] == "database_busy"
        assert resp.headers["Retry-After"] == "1"
        # Reads go on meanwhile (WAL).
        resp = await client.get("/v1/files", headers=ALPHA)
        assert (await resp.json())["total"] == 1
    finally:
        release.set()
        await asyncio.to_thread(holder.join)
    assert failures == []
    await upload(client, b"after")
