"""Connection-level limits ([server] header_timeout, keepalive_timeout, max_connections), each
against a running server: a real listener with filesd's own protocol, not a test client."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import itertools
import logging
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from filesd.api.appkeys import CONNECTIONS
from filesd.api.connections import BUSY, HEAD, LOG_INTERVAL, SILENT, AcceptErrorLog
from filesd.testing import FilesdServer, serve
from filesd.testing.process import ServerProcess

from .conftest import wait_until_sync


def _address(server: FilesdServer | ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


_OPEN: list[socket.socket] = []


def _connect(server: FilesdServer | ServerProcess) -> socket.socket:
    sock = socket.create_connection(_address(server), timeout=10)
    sock.settimeout(0.05)
    _OPEN.append(sock)
    return sock


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (fails after `timeout`)."""
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection is still open after {timeout}s: {received[:200]!r}")


def _healthz(url: str) -> int:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
        return int(resp.status)


@pytest.fixture
def guarded() -> Iterator[Callable[..., FilesdServer]]:
    """In-thread servers with the given [server] settings."""
    with contextlib.ExitStack() as stack:
        yield lambda **server: stack.enter_context(serve(server=server))


def test_a_half_sent_request_line_is_closed_after_header_timeout(
    guarded: Callable[..., FilesdServer],
) -> None:
    server = guarded(header_timeout=0.5, keepalive_timeout=60)
    sock = _connect(server)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HT")
    answer = _read_until_closed(sock)
    assert time.monotonic() - started >= 0.4
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert b'"code": "timeout"' in answer
    assert _healthz(server.url) == 200


def test_a_dribbling_client_is_closed_although_bytes_keep_coming(
    guarded: Callable[..., FilesdServer],
) -> None:
    server = guarded(header_timeout=0.5, keepalive_timeout=60)
    sock = _connect(server)
    started = time.monotonic()
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 1000
    for byte in header:  # one byte every 20 ms: never idle, never done
        time.sleep(0.02)
        # The whole header takes ~20 s to drip; the server must give up long before.
        assert time.monotonic() - started < 15, "a client took 15 s over its headers"
        try:
            sock.sendall(bytes([byte]))
            sock.recv(65536)  # the 408, or the end: either way the server gave up on it
            break
        except TimeoutError:
            continue
        except OSError:  # reset: the server closed the connection
            break
    else:
        raise AssertionError("the server read the whole dribbled header")
    assert time.monotonic() - started >= 0.4


def test_a_connection_that_sends_nothing_is_closed_after_header_timeout(
    guarded: Callable[..., FilesdServer],
) -> None:
    server = guarded(header_timeout=0.5, keepalive_timeout=60)
    assert _read_until_closed(_connect(server)) == b""  # closed, without a response


def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(
    guarded: Callable[..., FilesdServer],
) -> None:
    server = guarded(header_timeout=30, keepalive_timeout=0.5)
    sock = _connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in answer
    assert time.monotonic() - started >= 0.4  # kept alive, then closed for idleness


@pytest.mark.slow
def test_a_kept_alive_connection_serves_requests_without_header_timeouts(
    guarded: Callable[..., FilesdServer],
) -> None:
    """The header timer restarts with each request: idle time between requests is governed by
    keepalive_timeout only."""
    server = guarded(header_timeout=0.3, keepalive_timeout=30)
    sock = _connect(server)
    sock.settimeout(10)
    for _ in range(3):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.5)  # longer than header_timeout, idle: must not be closed
    sock.close()


def _healthy(url: str) -> bool:
    try:
        return _healthz(url) == 200
    except OSError:
        return False


def _ask_healthz(sock: socket.socket) -> bytes:
    """One GET /healthz on `sock`: the response's head and body (the connection stays open)."""
    sock.settimeout(10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = sock.recv(65536)
    sock.settimeout(0.05)
    return answer


def test_a_half_sent_head_on_a_kept_alive_connection_is_closed_after_header_timeout(
    guarded: Callable[..., FilesdServer],
) -> None:
    """Slowloris on keep-alive: after a first request, half of the next head arrives; the rest
    must follow within header_timeout, not keepalive_timeout."""
    server = guarded(header_timeout=0.5, keepalive_timeout=60)
    sock = _connect(server)
    assert _ask_healthz(sock).startswith(b"HTTP/1.1 200 ")
    started = time.monotonic()
    sock.sendall(b"GET /healthz HT")
    answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"code": "timeout"' in answer, answer
    assert 0.4 <= time.monotonic() - started < 30  # header_timeout, not keepalive's 60 s


def test_a_partial_head_right_behind_a_complete_one_is_closed_after_header_timeout(
    guarded: Callable[..., FilesdServer],
) -> None:
    """The start of a next head in the same packet as a whole request (pipelining)."""
    server = guarded(header_timeout=0.5, keepalive_timeout=60)
    sock = _connect(server)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HT")
    answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"HTTP/1.1 408 " in answer and b'"code": "timeout"' in answer, answer
    assert 0.4 <= time.monotonic() - started < 30  # header_timeout, not keepalive's 60 s


def test_pipelined_requests_are_all_answered(guarded: Callable[..., FilesdServer]) -> None:
    """Whole pipelined heads are no partial head: all answered, the connection kept."""
    server = guarded(header_timeout=0.3, keepalive_timeout=60)
    sock = _connect(server)
    sock.settimeout(10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    answer = b""
    while answer.count(b"HTTP/1.1 200 ") < 3:
        answer += sock.recv(65536)
    time.sleep(0.6)  # idle beyond header_timeout: governed by keepalive_timeout only
    assert _ask_healthz(sock).startswith(b"HTTP/1.1 200 ")


def test_idle_keepalive_connections_make_room_for_new_ones(
    guarded: Callable[..., FilesdServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A full house of kept-alive connections that sit idle (keepalive_timeout is long) must
    not lock anyone out: the one idle longest is closed for the newcomer, at once."""
    caplog.set_level(logging.WARNING, logger="filesd")
    server = guarded(max_connections=4, header_timeout=30, keepalive_timeout=60)
    idle = [_connect(server) for _ in range(4)]
    for sock in idle:
        assert _ask_healthz(sock).startswith(b"HTTP/1.1 200 ")
    started = time.monotonic()
    for _ in range(3):
        newcomer = _connect(server)
        assert _ask_healthz(newcomer).startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - started < 30  # at once, not after keepalive_timeout (60 s)
    # The oldest idle ones went first, without a word; the newest idle one is still open.
    for sock in idle[:3]:
        assert _read_until_closed(sock) == b""
    assert _ask_healthz(idle[3]).startswith(b"HTTP/1.1 200 ")
    assert _healthz(server.url) == 200
    evictions = [r for r in caplog.records if "idle keep-alive" in r.getMessage()]
    assert len(evictions) == 1, [r.getMessage() for r in evictions]


def _census(server: FilesdServer) -> dict[str, int]:
    """The server's open connections by state (connections.IDLE, SILENT, HEAD, BUSY)."""
    return dict(server._app[CONNECTIONS].census())


def test_silent_and_stalled_connections_make_room_for_new_ones(
    guarded: Callable[..., FilesdServer],
) -> None:
    """Connections that send nothing, or half a head, hold no place against a newcomer: the
    oldest of them is closed for it (a stalled head is told why, with a 503)."""
    server = guarded(max_connections=4, header_timeout=30, keepalive_timeout=60)
    half = _connect(server)
    half.sendall(b"GET /healthz HT")
    wait_until_sync(lambda: _census(server) == {HEAD: 1}, what="a half-sent head")
    silent = [_connect(server) for _ in range(3)]
    wait_until_sync(lambda: _census(server) == {HEAD: 1, SILENT: 3}, what="a full house")
    started = time.monotonic()
    newcomer = _connect(server)
    assert _ask_healthz(newcomer).startswith(b"HTTP/1.1 200 ")
    answer = _read_until_closed(half)  # the oldest
    assert answer.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in answer
    newcomer.close()
    silent.append(_connect(server))
    wait_until_sync(lambda: _census(server) == {SILENT: 4}, what="a silent full house")
    assert _healthz(server.url) == 200
    assert _read_until_closed(silent[0]) == b""  # the oldest, closed without a word
    assert time.monotonic() - started < 30  # at once, not after keepalive_timeout (60 s)
    wait_until_sync(lambda: _census(server) == {SILENT: 3}, what="the others still open")


def _start_upload(server: FilesdServer) -> socket.socket:
    """A connection busy with a request: an upload whose body is still coming."""
    sock = _connect(server)
    sock.sendall(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-busy\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\nabc'
    )
    return sock


def test_connections_beyond_max_connections_are_refused_when_all_are_busy(
    guarded: Callable[..., FilesdServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Busy connections (requests in progress) are never closed to make room: the newcomer
    gets the 503, and the refusals are logged once."""
    caplog.set_level(logging.WARNING, logger="filesd")
    server = guarded(max_connections=4, header_timeout=30)
    busy = [_start_upload(server) for _ in range(4)]
    wait_until_sync(lambda: _census(server) == {BUSY: 4}, what="4 uploads in progress")
    refused = [_connect(server) for _ in range(20)]
    for sock in refused:
        answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
        assert b"too_many_connections" in answer
    for sock in busy:
        sock.close()
    wait_until_sync(lambda: _healthy(server.url), what="/healthz once the uploads left")
    limit_logs = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(limit_logs) == 1, [r.getMessage() for r in limit_logs]
    assert "every connection busy" in limit_logs[0].getMessage()


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="filesd")
    loop = asyncio.new_event_loop()
    try:
        handler = AcceptErrorLog(loop, interval=60)
        for _ in range(1000):
            handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                },
            )
    finally:
        loop.close()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "Too many open files" in messages[0], messages


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_descriptor_flood_is_logged_once_and_the_server_recovers(tmp_path: Path) -> None:
    """The attack of issue 9: more half-sent requests than the server has descriptors. The
    server runs with 64 descriptors and the default max_connections, so accept() fails."""
    server = ServerProcess(
        ["--data-dir", str(tmp_path / "data"), "--log-level", "debug"],
        cwd=tmp_path,
        prefix=["prlimit", "--nofile=64"],
    )
    try:
        flood: list[socket.socket] = []
        for _ in range(150):
            sock = _connect(server)
            sock.sendall(b"GET /healthz HT")
            flood.append(sock)
        # asyncio retries accept() every second and each retry fails again: wait for two of
        # them (logged at debug only), so that a repeated warning would have shown.
        wait_until_sync(
            lambda: server.stderr_text().count("again (logged at most once") >= 2,
            timeout=20,
            what="two more failed accept()s",
        )
        for sock in flood:
            sock.close()
        wait_until_sync(
            lambda: _healthy(server.url), timeout=20, what="/healthz answering after the flood"
        )
        stderr = server.stderr_text()
        # Once per LOG_INTERVAL: exactly once unless this machine took longer than that.
        warned = [
            datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for line in stderr.splitlines()
            if " WARNING filesd.api.connections: cannot accept connections" in line
        ]
        assert warned, stderr[-3000:]
        gaps = [later - earlier for earlier, later in itertools.pairwise(warned)]
        assert all(gap >= LOG_INTERVAL - 0.01 for gap in gaps), (gaps, stderr[-3000:])
        # (Other work that needs a descriptor meanwhile may fail and say so: the limit is set
        # below what max_connections needs on purpose. accept() itself is never a traceback.)
        assert "socket.accept()" not in stderr and "out of system resource" not in stderr
    finally:
        assert server.stop() == 0
