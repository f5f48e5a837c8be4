"""A server SIGKILLed in the middle of a batch, then started again, finishes the batch without
sending a completed request again: the test upstream counts the calls per custom_id, only
requests in flight at the kill (at most `concurrency`) may have been sent twice, and the
output has exactly one line per request. On SQLite (the same data dir) and on PostgreSQL (a
new instance takes the batch over once the dead one's lease has run out)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from openai.types import Batch

from filesd.testing.process import ServerProcess

from .batch_upstream import Behaviour, request_line, upstream_thread
from .conftest import wait_until_sync
from .pg_service import PostgresServer

pytestmark = pytest.mark.slow

CONCURRENCY = 4
REQUESTS = 400


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield ""
        return
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    with postgres.database() as dsn:
        yield dsn


def start(root: Path, name: str, database: str, upstream: str) -> ServerProcess:
    """A server on `root/data`, with its metadata there (SQLite) or in `database`: started
    again after the kill, it is a new instance, which on PostgreSQL must wait for the dead
    one's lease to run out."""
    lines = ["[storage]", f'data_dir = "{root / "data"}"', "lease_seconds = 3"]
    if database:
        lines.append(f'database = "{database}"')
    lines += ["[batches]", f'upstream = "{upstream}"', f"concurrency = {CONCURRENCY}"]
    lines += ["retry_backoff = 0.05"]
    config = root / f"{name}.toml"
    config.write_text("\n".join(lines) + "\n")
    return ServerProcess(["--config", str(config)], cwd=root)


def test_sigkill_mid_batch_resends_nothing_completed(tmp_path: Path, database: str) -> None:
    behaviour = Behaviour()
    behaviour.delay = 0.01
    key = f"sk-{uuid.uuid4().hex}"
    with upstream_thread(behaviour) as upstream:
        first = start(tmp_path, "first", database, upstream)
        try:
            client = OpenAI(base_url=first.base_url, api_key=key, max_retries=0)
            data = "".join(
                json.dumps(request_line(f"r{n}")) + "\n" for n in range(REQUESTS)
            ).encode()
            file_id = client.files.create(file=("in.jsonl", data), purpose="batch").id
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_until_sync(
                lambda: sum(behaviour.calls.values()) >= REQUESTS // 4,
                timeout=30,
                what="the batch getting going",
            )
        finally:
            first.stop(signal.SIGKILL)
        sent_before = dict(behaviour.calls)
        assert len(sent_before) < REQUESTS, "the batch finished before the kill"

        second = start(tmp_path, "second", database, upstream)
        try:
            client = OpenAI(base_url=second.base_url, api_key=key, max_retries=0)
            seen: list[Batch] = []

            def completed() -> bool:
                seen[:] = [client.batches.retrieve(batch.id)]
                status = seen[0].status
                assert status in ("validating", "in_progress", "finalizing", "completed"), (
                    f"{status} after the restart: {second.stderr_text()[-3000:]}"
                )
                return status == "completed"

            wait_until_sync(completed, timeout=60, what="the batch completed after the restart")
            [done] = seen
            assert done.request_counts is not None
            assert done.request_counts.completed == REQUESTS
            assert done.output_file_id is not None
            output = client.files.content(done.output_file_id).text.splitlines()
        finally:
            assert second.stop(signal.SIGTERM) == 0

    ids = [json.loads(line)["custom_id"] for line in output]
    assert sorted(ids) == sorted(f"r{n}" for n in range(REQUESTS))  # one line per request
    assert set(behaviour.calls) == {f"r{n}" for n in range(REQUESTS)}
    repeated = {k: c for k, c in behaviour.calls.items() if c > 1}
    # Only what was in flight at the kill may have gone out twice, and at most once more.
    assert len(repeated) <= CONCURRENCY, repeated
    assert set(repeated) <= set(sent_before)
    assert all(count == 2 for count in repeated.values()), repeated
