"""Batches across instances: two `filesd serve` processes on one PostgreSQL and one S3 bucket.
One instance drives a batch at a time (the other never sends its requests), a cancel through
either reaches the one driving it, and when the driving instance is SIGKILLed the other takes
the batch over once its lease has run out, sending again at most the requests in flight."""

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
from .s3_service import S3Bucket

pytestmark = pytest.mark.slow

CONCURRENCY = 4
FINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
def instances(
    postgres_server: PostgresServer, s3_bucket: S3Bucket, tmp_path: Path, behaviour: Behaviour
) -> Iterator[list[ServerProcess]]:
    with postgres_server.database() as dsn, upstream_thread(behaviour) as upstream:
        started = []
        for name in ("a", "b"):
            config = tmp_path / f"{name}.toml"
            config.write_text(
                f'[storage]\ndata_dir = "{tmp_path / name}"\ndatabase = "{dsn}"\n'
                f'blobs = "{s3_bucket.blobs_url("files")}"\nlease_seconds = 3\n'
                f"{s3_bucket.s3_table()}\n"
                f'[batches]\nupstream = "{upstream}"\nconcurrency = {CONCURRENCY}\n'
            )
            started.append(ServerProcess(["--config", str(config)], cwd=tmp_path))
        yield started
        for server in started:
            server.stop(signal.SIGKILL)


def start_batch(client: OpenAI, requests: int) -> Batch:
    data = "".join(json.dumps(request_line(f"r{n}")) + "\n" for n in range(requests)).encode()
    file_id = client.files.create(file=("in.jsonl", data), purpose="batch").id
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def wait_for(client: OpenAI, batch_id: str, timeout: float = 60) -> Batch:
    seen: list[Batch] = []

    def final() -> bool:
        seen[:] = [client.batches.retrieve(batch_id)]
        return seen[0].status in FINAL

    wait_until_sync(final, timeout=timeout, what=f"batch {batch_id} finished")
    return seen[0]


def test_one_instance_drives_a_batch_and_a_cancel_reaches_it(
    instances: list[ServerProcess], behaviour: Behaviour
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    a, b = (OpenAI(base_url=s.base_url, api_key=key, max_retries=0) for s in instances)
    batch = wait_for(b, start_batch(a, 300).id)
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.completed == 300
    assert dict(behaviour.calls) == {f"r{n}": 1 for n in range(300)}  # nobody sent twice
    lines = b.files.content(batch.output_file_id or "").text.splitlines()
    assert len(lines) == 300

    behaviour.delay = 0.05
    running = start_batch(a, 400)

    def some_done() -> bool:
        counts = a.batches.retrieve(running.id).request_counts
        return counts is not None and counts.completed >= 8

    # Completed (recorded), not only sent: a request in flight at the cancel is not recorded.
    wait_until_sync(some_done, timeout=30, what="8 requests done")
    assert b.batches.cancel(running.id).status in ("cancelling", "cancelled")
    cancelled = wait_for(a, running.id)
    assert cancelled.status == "cancelled"
    assert cancelled.request_counts is not None
    assert 8 <= cancelled.request_counts.completed < 400


def test_a_killed_instances_batch_is_finished_by_the_other(
    instances: list[ServerProcess], behaviour: Behaviour
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    behaviour.delay = 0.01
    first, second = instances
    a, b = (OpenAI(base_url=s.base_url, api_key=key, max_retries=0) for s in instances)
    batch = start_batch(a, 400)
    # Instance a drives it: created there, its runner was poked at once (b looks each second).
    wait_until_sync(
        lambda: sum(behaviour.calls.values()) >= 100, timeout=30, what="100 requests sent"
    )
    assert a.batches.retrieve(batch.id).status == "in_progress"
    first.stop(signal.SIGKILL)
    done = wait_for(b, batch.id)
    if done.status != "completed":
        raise AssertionError(f"{done.status}: {second.stderr_text()[-2000:]}")
    assert done.request_counts is not None and done.request_counts.completed == 400
    ids = [
        json.loads(x)["custom_id"]
        for x in b.files.content(done.output_file_id or "").text.splitlines()
    ]
    assert sorted(ids) == sorted(f"r{n}" for n in range(400))
    repeated = {k: c for k, c in behaviour.calls.items() if c > 1}
    assert len(repeated) <= CONCURRENCY, repeated
