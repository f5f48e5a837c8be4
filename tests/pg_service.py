"""One real PostgreSQL for a test session, and a fresh empty database for each test.

The server itself (a new cluster in a temp dir under /tmp, on a free port of 127.0.0.1, `trust`
auth, no fsync, stopped with `pg_ctl stop -m immediate`) is bench/services.py's, which the
benchmark uses too: see there.

Missing binaries skip the tests that need the server, or fail them when
FILESD_REQUIRE_BACKENDS=1 (CI must not pass by skipping).
"""

from __future__ import annotations

import os

import pytest

from bench.services import PostgresServer, ServiceUnavailable, find_bin_dir, start_postgres

__all__ = ["PostgresServer", "find_bin_dir", "start_server", "unavailable"]


def unavailable(reason: str) -> None:
    """Skip the test for want of a backend, or fail it when CI requires backends."""
    if os.environ.get("FILESD_REQUIRE_BACKENDS") == "1":
        pytest.fail(f"FILESD_REQUIRE_BACKENDS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def start_server() -> PostgresServer:
    """Start the session's server, or skip/fail (see `unavailable`) when it cannot run here."""
    try:
        return start_postgres()
    except ServiceUnavailable as error:
        unavailable(str(error))
        raise AssertionError("unreachable") from None
