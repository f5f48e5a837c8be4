"""Downloads streamed from S3: a slow or stalled reader holds neither a pooled connection to
the bucket nor a download slot that honest clients need, and a client leaving mid-download
ends its request quietly.

Against real in-thread servers on moto's S3 server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import socket
import struct
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from filesd.api.appkeys import CONNECTIONS, DOWNLOAD_SLOTS, REQUESTS
from filesd.api.connections import BUSY
from filesd.api.drain import DownloadSlots
from filesd.api.metrics import METRICS
from filesd.testing import FilesdServer, serve

from .conftest import wait_until_sync
from .s3_service import S3Bucket

SIZE = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def content() -> bytes:
    return os.urandom(SIZE)


def _s3_tables(bucket: S3Bucket, **limits: Any) -> dict[str, Any]:
    return {
        "storage": {
            "blobs": bucket.blobs_url(),
            "s3": {
                "endpoint": bucket.endpoint,
                "region": bucket.region,
                "access_key_id": bucket.access_key_id,
                "secret_access_key": bucket.secret_access_key,
            },
        },
        "limits": limits,
    }


def _address(server: FilesdServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _stalled_download(server: FilesdServer, file_id: str, key: str) -> socket.socket:
    """A download whose client never reads (a 4 KiB receive buffer: the server's queue fills)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(_address(server))
    sock.sendall(
        f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\n\r\n".encode()
    )
    return sock


def _download(server: FilesdServer, file_id: str, key: str) -> bytes:
    request = urllib.request.Request(
        f"{server.url}/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        body: bytes = answer.read()
        return body


@contextlib.contextmanager
def _closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_stalled_downloads_do_not_wedge_the_instance(s3_bucket: S3Bucket, content: bytes) -> None:
    """130 downloads that never read, from one key, used to take all 128 pooled connections to
    the bucket: every other download (and upload) hung, and stayed hung after they left."""
    with serve(**_s3_tables(s3_bucket)) as server:
        attacker, honest = server.new_project(), server.new_project()
        with attacker.openai() as client:
            theirs = client.files.create(file=("a.bin", content), purpose="batch").id
        with honest.openai() as client:
            mine = client.files.create(file=("b.bin", content[::-1]), purpose="batch").id
        gate = server._app[CONNECTIONS]
        with _closing_all([]) as socks:
            for _ in range(130):
                socks.append(_stalled_download(server, theirs, attacker.api_key))
            wait_until_sync(lambda: gate.open >= 130, what="the stalled downloads connected")
            body = _download(server, mine, honest.api_key)
            assert hashlib.sha256(body).digest() == hashlib.sha256(content[::-1]).digest()
            # The same project's own honest download too.
            assert _download(server, theirs, attacker.api_key) == content
        wait_until_sync(lambda: server._app[REQUESTS].running == 0, what="no request running")
        assert server._app[DOWNLOAD_SLOTS].in_use == 0
        assert _download(server, mine, honest.api_key) == content[::-1]


@pytest.mark.slow
def test_a_slow_reader_on_s3_is_cut_off_quietly(
    s3_bucket: S3Bucket, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """The send watchdog and `min_body_rate` hold for bodies streamed from the bucket: a
    client taking a few hundred bytes a second is cut off, its slot given back, and the
    request ends like a client's disconnect (no error, no traceback)."""
    caplog.set_level(logging.WARNING, logger="filesd")
    tables = _s3_tables(s3_bucket, body_timeout=1, min_body_rate=64 * 1024)
    with serve(**tables) as server:
        project = server.new_project()
        with project.openai() as client:
            file_id = client.files.create(file=("a.bin", content), purpose="batch").id
        gate = server._app[CONNECTIONS]
        wait_until_sync(lambda: gate.open == 0, what="the upload's connection gone")
        with _closing_all([_stalled_download(server, file_id, project.api_key)]) as (sock,):
            wait_until_sync(lambda: gate.census() == {BUSY: 1}, what="the download running")
            received = 0

            def cut_off() -> bool:
                nonlocal received
                try:
                    chunk = sock.recv(64)
                except ConnectionResetError:
                    return True
                received += len(chunk)
                return not chunk

            wait_until_sync(cut_off, what="the slow reader cut off")
        wait_until_sync(lambda: server._app[REQUESTS].running == 0, what="no request running")
        assert server._app[DOWNLOAD_SLOTS].in_use == 0 and gate.open == 0
        assert received < SIZE // 10
    assert [r for r in caplog.records if "reads too slowly" in r.getMessage()]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _counted(server: FilesdServer, status: int) -> float:
    counted = server._app[METRICS].registry.get_sample_value(
        "filesd_requests_total",
        {"method": "GET", "route": "/v1/files/{file_id}/content", "status": str(status)},
    )
    return counted or 0.0


@pytest.mark.slow
def test_a_client_leaving_mid_download_is_one_200_and_no_traceback(
    s3_bucket: S3Bucket, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to be counted as a 200 and a 500, with two tracebacks in the log."""
    caplog.set_level(logging.INFO)
    with serve(**_s3_tables(s3_bucket)) as server:
        project = server.new_project()
        with project.openai() as client:
            file_id = client.files.create(file=("a.bin", content), purpose="batch").id
        with _closing_all([_stalled_download(server, file_id, project.api_key)]) as (sock,):
            assert sock.recv(12) == b"HTTP/1.1 200"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until_sync(lambda: server._app[REQUESTS].running == 0, what="no request running")
        wait_until_sync(lambda: server._app[DOWNLOAD_SLOTS].in_use == 0, what="the slot back")
        assert (_counted(server, 200), _counted(server, 500)) == (1.0, 0.0)
        assert _download(server, file_id, project.api_key) == content
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.slow
def test_a_project_beyond_its_share_of_download_slots_waits_its_turn(
    s3_bucket: S3Bucket, content: bytes
) -> None:
    """Two slots, two projects: one slot each at most. Three downloads of one project at once
    are not refused: they take turns, and every byte arrives."""
    with serve(**_s3_tables(s3_bucket, max_concurrent_downloads=2)) as server:
        project, _other = server.new_project(), server.new_project()
        with project.openai() as client:
            file_id = client.files.create(file=("a.bin", content), purpose="batch").id
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            bodies = list(pool.map(lambda _: _download(server, file_id, project.api_key), "abc"))
        assert bodies == [content] * 3
        assert server._app[DOWNLOAD_SLOTS].in_use == 0


async def test_download_slots_go_to_projects_below_their_share_in_order() -> None:
    """The rule itself: a project at its share waits without holding up another project's
    download behind it, keeps its place, and a cancelled wait takes no slot."""
    slots = DownloadSlots(4, project_count=lambda: 2)  # a share of 2 each
    for project in "aab":
        await slots.acquire(project)
    third_a = asyncio.ensure_future(slots.acquire("a"))
    cancelled_b = asyncio.ensure_future(slots.acquire("b"))
    await asyncio.sleep(0)
    assert cancelled_b.done() and not third_a.done()  # b was below its share: a slot at once
    fourth_b = asyncio.ensure_future(slots.acquire("b"))
    await asyncio.sleep(0)
    assert not fourth_b.done() and slots.in_use == 4
    slots.release("b")  # b's turn: it is below its share now, a is not
    await asyncio.sleep(0)
    assert fourth_b.done() and not third_a.done()
    slots.release("a")
    await asyncio.sleep(0)
    assert third_a.done() and slots.in_use == 4
    waiting = asyncio.ensure_future(slots.acquire("c"))
    await asyncio.sleep(0)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    for project in "aabb":
        slots.release(project)
    assert slots.in_use == 0
    lone = DownloadSlots(2, project_count=lambda: 1)  # a single tenant: no share
    await lone.acquire("a")
    await asyncio.wait_for(lone.acquire("a"), 60)
    assert lone.in_use == 2


async def test_a_waiter_whose_share_grew_is_served_before_a_newcomer() -> None:
    """A project's waiting download keeps its place when its share grows (fewer projects):
    the next take of that project serves the older one first."""
    projects = [2]
    slots = DownloadSlots(3, project_count=lambda: projects[0])  # a share of 1
    await slots.acquire("a")
    await slots.acquire("b")
    older = asyncio.ensure_future(slots.acquire("a"))
    await asyncio.sleep(0)
    assert not older.done() and slots.contended
    projects[0] = 1  # no share any more: the one free slot may go to a
    newer = asyncio.ensure_future(slots.acquire("a"))
    await asyncio.wait_for(older, 60)
    assert not newer.done() and slots.in_use == 3
    slots.release("b")
    await asyncio.wait_for(newer, 60)
    assert not slots.contended
