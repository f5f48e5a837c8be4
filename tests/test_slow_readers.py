"""Slow readers: a client that takes a download a few bytes at a time cannot hold its connection.

Against real in-thread servers with `[limits] body_timeout = 1` and `min_body_rate = 64 KiB/s`:
the slow reader below takes about 320 B/s (200 times too little), the honest one reads as fast
as it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from filesd.api.appkeys import CONNECTIONS, REQUESTS
from filesd.api.connections import (
    BUSY,
    IDLE,
    SILENT,
    ConnectionGate,
    GuardedRequestHandler,
    bytes_acked,
    queued_bytes,
)
from filesd.testing import FilesdServer, serve

from .conftest import wait_until, wait_until_sync

# Uploading the file sometimes makes aiohttp's multipart reader call its deprecated
# `unread_data` (it depends on how the body is split into packets); under the suite's
# warnings-as-errors that is a 500. Not what these tests are about: ignore it, as production does.

RATE = 64 * 1024
SIZE = 12 * 1024 * 1024
LIMITS = {"body_timeout": 1, "min_body_rate": RATE}


@pytest.fixture(scope="module")
def content() -> bytes:
    return os.urandom(SIZE)


@contextlib.contextmanager
def _server_with_file(content: bytes, **tables: Any) -> Iterator[tuple[FilesdServer, str, str]]:
    """A server holding `content` as a file: (server, file id, the project's key)."""
    with serve(limits=LIMITS, **tables) as server:
        project = server.new_project()
        with project.openai() as client:
            file_id = client.files.create(file=("big.jsonl", content), purpose="batch").id
        yield server, file_id, project.api_key


def _gate(server: FilesdServer) -> ConnectionGate:
    gate = server._app[CONNECTIONS]
    assert isinstance(gate, ConnectionGate)
    return gate


def _handlers(server: FilesdServer) -> list[GuardedRequestHandler]:
    return list(_gate(server)._open)


def _address(server: FilesdServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _request(file_id: str, key: str) -> bytes:
    return (
        f"GET /v1/files/{file_id}/content HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()


def _slow_reader(server: FilesdServer) -> socket.socket:
    """A client with a 4 KiB receive buffer (so the server's send queue fills up at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(_address(server))
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Reads what is left as fast as it comes; True once the server has closed or reset."""
    sock.settimeout(0.05)
    while True:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


@pytest.mark.slow
def test_a_slow_reader_is_disconnected_and_its_connection_freed(
    content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """64 bytes every 0.2 s out of a 12 MiB download: cut off within a few windows, and the
    connection leaves the server's count (it used to stay as long as the client liked)."""
    caplog.set_level(logging.WARNING, logger="filesd")
    with _server_with_file(content) as (server, file_id, key):
        gate = _gate(server)
        wait_until_sync(lambda: gate.open == 0, what="the upload's connection gone")
        sock = _slow_reader(server)
        try:
            sock.sendall(_request(file_id, key))
            wait_until_sync(lambda: gate.census() == {BUSY: 1}, what="the download running")
            started = time.monotonic()
            received = 0
            deadline = started + 20
            while gate.open != 0:  # reading a few bytes per second meanwhile
                assert time.monotonic() < deadline, f"still connected after {received} bytes"
                try:
                    chunk = sock.recv(64)
                except ConnectionResetError:
                    break
                assert chunk, "closed by the server while still counted as open"
                received += len(chunk)
                time.sleep(0.2)
            took = time.monotonic() - started
            wait_until_sync(lambda: gate.open == 0, what="the connection count back to 0")
            # Nothing left for a SIGTERM drain to wait for.
            wait_until_sync(lambda: server._app[REQUESTS].running == 0, what="no request running")
            wait_until_sync(lambda: _closed_by_server(sock), what="the client told")
        finally:
            sock.close()
        assert received < SIZE // 100
        assert took < 10, took
        closing = [r for r in caplog.records if "reads too slowly" in r.getMessage()]
        assert len(closing) == 1, [r.getMessage() for r in closing]
        # Ended like a client's disconnect: no error, no traceback (from aiohttp or asyncio).
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert urllib.request.urlopen(server.url + "/healthz", timeout=10).status == 200


@pytest.mark.slow
def test_an_honest_client_downloads_the_whole_file(content: bytes) -> None:
    """Read at full speed: every byte, unchanged."""
    with _server_with_file(content) as (server, file_id, key):
        sock = socket.create_connection(_address(server), timeout=10)
        try:
            sock.sendall(_request(file_id, key))
            received = bytearray()
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
                head, sep, body = bytes(received).partition(b"\r\n\r\n")
                if sep and len(body) >= SIZE:
                    break
        finally:
            sock.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert (
            len(body) == SIZE and hashlib.sha256(body).digest() == hashlib.sha256(content).digest()
        )


@pytest.mark.slow
def test_a_paced_reader_well_above_the_rate_is_not_cut_off(content: bytes) -> None:
    """1 MiB/s (16 times the minimum) through a 4 KiB receive buffer, for three windows,
    while sendfile keeps the server's send queue full: sent whole."""
    rate = 16 * RATE
    part = content[: 3 * rate]
    with _server_with_file(part) as (server, file_id, key):
        sock = _slow_reader(server)
        received = bytearray()
        try:
            sock.sendall(_request(file_id, key)[:-2] + b"Connection: close\r\n\r\n")
            while chunk := sock.recv(16384):
                received += chunk
                time.sleep(len(chunk) / rate)
        finally:
            sock.close()
        assert bytes(received).partition(b"\r\n\r\n")[2] == part


async def test_bytes_acked_and_queued_bytes_read_the_kernel_counters() -> None:
    """TCP_INFO's tcpi_bytes_acked (at the offset assumed) and TIOCOUTQ, on a real connection:
    a megabyte queued while the peer does not read, then acknowledged once it has."""
    size = 1_000_000
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        peer, peer_writer = await accepted.get()
        transport = writer.transport
        before = bytes_acked(transport)
        assert before is not None  # Linux
        writer.write(b"x" * size)
        assert queued_bytes(transport) > 0
        await peer.readexactly(size)
        await writer.drain()
        await wait_until(
            lambda: queued_bytes(transport) == 0 and bytes_acked(transport) == before + size,
            what="everything acknowledged",
        )
        for stream in (writer, peer_writer):
            stream.close()
            await stream.wait_closed()


@pytest.mark.slow
def test_a_handler_slower_than_the_window_is_not_cut_off(content: bytes) -> None:
    """A response that starts 2.5 windows late (nothing waits for the client meanwhile), on a
    connection whose previous response was taken in full, is sent whole."""
    fault = {"method": "GET", "route": "/v1/files/{file_id}/content", "latency_ms": 2500}
    with _server_with_file(content, testing={"faults": [fault]}) as (server, file_id, key):
        request = urllib.request.Request(
            f"{server.base_url}/files/{file_id}/content",
            headers={"Authorization": f"Bearer {key}"},
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = resp.read()
        assert time.monotonic() - started >= 2.5
        assert body == content


@pytest.mark.slow
def test_idle_connections_carry_no_watchdog_timer() -> None:
    """The watchdog runs while a request is in progress and stops once the connection is idle
    (keepalive_timeout bounds those); a connection that has sent nothing has none either."""
    with serve(limits=LIMITS) as server:
        key = server.new_project().api_key
        gate = _gate(server)
        sock = socket.create_connection(_address(server), timeout=10)
        try:
            wait_until_sync(lambda: gate.census() == {SILENT: 1}, what="a new connection")
            (handler,) = _handlers(server)
            assert handler._send_timer is None
            # A request in progress (an upload whose body is still coming): armed...
            body = (
                b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
                b"\r\nhello\r\n--b--\r\n"
            )
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + key.encode()
                + b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body[:20]
            )
            wait_until_sync(lambda: gate.census() == {BUSY: 1}, what="a request in progress")
            assert handler._send_timer is not None
            sock.sendall(body[20:])
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
            # ...and gone (within one window) once the connection waits for its next request.
            wait_until_sync(
                lambda: gate.census() == {IDLE: 1} and handler._send_timer is None,
                what="an idle connection without a timer",
            )
        finally:
            sock.close()
