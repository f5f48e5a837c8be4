"""Throwaway backends on loopback: a PostgreSQL cluster and a moto S3 server, each in a temp dir
on a free port, gone afterwards. Used by bench/shared.py and by the tests' fixtures
(tests/pg_service.py, tests/s3_service.py), so nothing here imports pytest: what the tests do
about a missing binary (skip, or fail in CI) is theirs; here it is a `ServiceUnavailable`.

PostgreSQL: a new cluster in a temp dir under /tmp, listening on a free TCP port of 127.0.0.1
with `trust` auth, so that any process (`filesd serve` subprocesses too) connects with the DSN
alone. Tuned for throwaway use (no fsync) and stopped with `pg_ctl stop -m immediate`: nothing
in it is meant to last. When run as root (containers), the cluster belongs to the `postgres`
user: initdb and the server refuse to run as root, so both run through `runuser -u postgres --`.

S3: moto's server as its own process (`python -m moto.server`), so every process of the run
reaches the same one. It keeps everything in its memory.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")
_numbers = itertools.count(1)
MOTO_START_TIMEOUT = 30.0


class ServiceUnavailable(Exception):
    """A backend cannot run on this machine (a binary, package or user is missing)."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- PostgreSQL --------------------------------------------------------------------------------


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


class PostgresServer:
    """A running cluster; `database()` makes a fresh database for one test (or measure)."""

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
            self.port = free_port()
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


def start_postgres() -> PostgresServer:
    """Start a new cluster; `stop()` it afterwards. Raises `ServiceUnavailable` when it cannot
    run here (no initdb/pg_ctl/psql; as root, no `postgres` user or no `runuser`)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise ServiceUnavailable("PostgreSQL (initdb, pg_ctl) is not installed")
    psql = str(bin_dir / "psql") if (bin_dir / "psql").is_file() else shutil.which("psql")
    if psql is None:
        raise ServiceUnavailable(f"psql is not installed (beside {bin_dir} or on PATH)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceUnavailable(
                "running as root and there is no `postgres` user to run PostgreSQL as"
            ) from None
        if shutil.which("runuser") is None:
            raise ServiceUnavailable("running as root and `runuser` is missing")
    server = PostgresServer(bin_dir, psql)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


# --- S3 (moto) ---------------------------------------------------------------------------------


def moto_missing() -> str | None:
    """Why moto's S3 server cannot run here, or None when it can."""
    missing = [m for m in ("moto", "flask", "boto3") if importlib.util.find_spec(m) is None]
    if missing:
        return f"moto's S3 server needs {', '.join(missing)} (pip install 'moto[s3,server]')"
    return None


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/moto-api/")
        connection.getresponse().read()
    except OSError:
        return False
    finally:
        connection.close()
    return True


@contextlib.contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """Run one moto S3 server (its log in `log_dir`) until the block ends; yields its endpoint
    URL. Raises `ServiceUnavailable` when moto is not installed."""
    why = moto_missing()
    if why is not None:
        raise ServiceUnavailable(why)
    for _attempt in range(3):  # another process may take the free port before moto binds it
        port = free_port()
        log = (log_dir / f"moto-{port}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + MOTO_START_TIMEOUT
        while proc.poll() is None and not _answers(port) and time.monotonic() < deadline:
            # Waits on the process: returns at once if it dies, else after a short poll.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
        if proc.poll() is None and _answers(port):
            break
        proc.kill()
        proc.wait()
        log.close()
    else:
        raise RuntimeError(f"moto's S3 server did not start; see the logs in {log_dir}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
