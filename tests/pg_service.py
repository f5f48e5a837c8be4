"""One real PostgreSQL for a test session, and a fresh empty database for each test.

The server runs from a new cluster in a temp dir under /tmp (never in the checkout), listens on
a free TCP port of 127.0.0.1 with `trust` auth, so that any process of the test run, `filesd
serve` subprocesses too, can connect with the DSN alone. It is tuned for tests (no fsync) and
stopped with `pg_ctl stop -m immediate` at the end: nothing in it is meant to last.

When run as root (containers), the cluster belongs to the `postgres` user: initdb and the
server refuse to run as root, so both run through `runuser -u postgres --`.

Missing binaries skip the tests that need the server, or fail them when
FILESD_REQUIRE_BACKENDS=1 (CI must not pass by skipping).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")
_numbers = itertools.count(1)


def unavailable(reason: str) -> None:
    """Skip the test for want of a backend, or fail it when CI requires backends."""
    if os.environ.get("FILESD_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"FILESD_REQUIRE_BACKENDS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def find_bin_dir() -> Path | None:
    """The directory of initdb and pg_ctl: from PATH, else the newest one installed."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = sorted(
        (p for pattern in _SEARCH for p in Path("/").glob(pattern.lstrip("/"))),
        key=lambda p: [int(s) if s.isdigit() else 0 for s in p.parts],
    )
    for candidate in reversed(found):
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A running cluster; `database()` makes a fresh database for one test."""

    def __init__(self, bin_dir: Path, psql: str) -> None:
        self.bin_dir = bin_dir
        self.psql = psql
        self.host = "127.0.0.1"
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="filesd-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_user, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        done = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "64MB",
        }
        # The port is free when picked but may be taken before the server binds it: retry.
        for _ in range(5):
            self.port = _free_port()
            options = " ".join(f"-c {k}={v}" for k, v in {**settings, "port": self.port}.items())
            done = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                "-o", options, "start",
            )  # fmt: skip
            if done.returncode == 0:
                return
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {done.stderr or done.stdout}\n{log[-2000:]}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _psql(self, sql: str) -> None:
        done = subprocess.run(
            [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(),
             "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"psql {sql!r} failed: {done.stderr}")

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh, empty database for the duration of the block; yields its DSN. Dropped
        afterwards, with any connection still open to it (a server a test left running)."""
        name = f"t{os.getpid()}_{next(_numbers)}"
        self._psql(f"CREATE DATABASE {name}")
        try:
            yield self.dsn(name)
        finally:
            self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_server() -> PostgresServer:
    """Start the session's server, or skip/fail (see `unavailable`) when it cannot run here."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL (initdb, pg_ctl) is not installed")
        raise AssertionError("unreachable")
    psql = str(bin_dir / "psql") if (bin_dir / "psql").is_file() else shutil.which("psql")
    if psql is None:
        unavailable(f"psql is not installed (beside {bin_dir} or on PATH)")
        raise AssertionError("unreachable")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no `postgres` user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            unavailable("running as root and `runuser` is missing")
    server = PostgresServer(bin_dir, psql)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
