"""The official `openai` SDK's batch code, unchanged, against real filesd servers on free
ports: on the echo model and on a test upstream (a small aiohttp app in a thread) that answers
200s, 429s with Retry-After, 500s, slow answers and dropped connections. Each runs on SQLite
and on PostgreSQL (the module's database)."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import Batch

from filesd.testing.process import ServerProcess

from .batch_upstream import Behaviour, request_line, upstream_thread
from .pg_service import PostgresServer

pytestmark = pytest.mark.slow

FINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "" (SQLite in the data dir) or the DSN of a PostgreSQL database for the module."""
    if request.param == "sqlite":
        yield ""
        return
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    with postgres.database() as dsn:
        yield dsn


def start(root: Path, database: str, batches: str) -> ServerProcess:
    """A server (open mode) with `batches` as its [batches] table."""
    root.mkdir(parents=True, exist_ok=True)
    storage = f'[storage]\ndata_dir = "{root / "data"}"\nlease_seconds = 3\n'
    if database:
        storage += f'database = "{database}"\n'
    config = root / "filesd.toml"
    config.write_text(f"{storage}\n[batches]\n{batches}\n")
    return ServerProcess(["--config", str(config)], cwd=root)


@pytest.fixture(scope="module")
def echo_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = start(tmp_path_factory.mktemp("echo"), database, 'upstream = "echo"\nconcurrency = 4')
    yield proc.base_url
    assert proc.stop(signal.SIGTERM) == 0


@pytest.fixture(scope="module")
def behaviour() -> Behaviour:
    return Behaviour(retry_after="0", slow_seconds=0.3)


@pytest.fixture(scope="module")
def upstream_server(
    database: str, behaviour: Behaviour, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with upstream_thread(behaviour) as url:
        batches = (
            f'upstream = "{url}"\napi_key = "sk-up"\nconcurrency = 4\nmax_retries = 3\n'
            "retry_backoff = 0.05\nrequest_timeout = 10\n"
        )
        proc = start(tmp_path_factory.mktemp("upstream"), database, batches)
        yield proc.base_url
        assert proc.stop(signal.SIGTERM) == 0


def client_for(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key=f"sk-{uuid.uuid4().hex}", max_retries=0)


def upload_lines(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=("batch.jsonl", data), purpose="batch").id


def wait_for(client: OpenAI, batch_id: str, timeout: float = 60) -> Batch:
    """Poll `batches.retrieve` until the batch is final (with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s"
        time.sleep(0.05)


def output_of(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def chat(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
    }


def test_the_sdk_pipeline_on_echo(echo_server: str) -> None:
    client = client_for(echo_server)
    file_id = upload_lines(client, [chat(f"task-{n}", f"answer {n}") for n in range(40)])
    created = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"description": "nightly eval job"},
    )
    assert created.status == "validating"
    batch = wait_for(client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (40, 40)
    assert batch.usage is not None and batch.usage.total_tokens > 0
    assert batch.metadata == {"description": "nightly eval job"}
    results = output_of(client, batch.output_file_id)
    answers = {
        r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in results
    }
    assert answers == {f"task-{n}": f"answer {n}" for n in range(40)}
    assert client.files.retrieve(batch.output_file_id or "").purpose == "batch_output"


def test_list_auto_pages_and_cancel(echo_server: str) -> None:
    client = client_for(echo_server)
    file_id = upload_lines(client, [chat("a", "x")])
    ids = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(5)
    ]
    listed = [b.id for b in client.batches.list(limit=2)]
    assert listed == ids[::-1]
    for batch_id in ids:
        wait_for(client, batch_id)
    # A finished batch cannot be cancelled; a running one can.
    with pytest.raises(Exception, match="409"):
        client.batches.cancel(ids[0])
    big = upload_lines(client, [chat(f"r{n}", "y" * 2000) for n in range(3000)])
    running = client.batches.create(
        input_file_id=big, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = client.batches.cancel(running.id)
    assert cancelled.status in ("cancelling", "cancelled")
    batch = wait_for(client, running.id)
    assert batch.status == "cancelled"
    assert batch.cancelled_at is not None


async def test_the_async_sdk_too(echo_server: str) -> None:
    async with AsyncOpenAI(
        base_url=echo_server, api_key=f"sk-{uuid.uuid4().hex}", max_retries=0
    ) as client:
        data = json.dumps(
            {
                "custom_id": "e",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": "hello"},
            }
        ).encode()
        file = await client.files.create(file=("e.jsonl", data), purpose="batch")
        batch = await client.batches.create(
            input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        ids = [b.id async for b in client.batches.list()]
        assert ids == [batch.id]


def test_the_sdk_pipeline_on_a_test_upstream(upstream_server: str, behaviour: Behaviour) -> None:
    client = client_for(upstream_server)
    run = uuid.uuid4().hex[:8]  # the module's upstream counts calls for every test
    modes = {"ok": "ok", "limited": "429x2", "flaky": "500x1", "dropped": "dropx1"}
    modes |= {"slow": "slow", "broken": "500", "refused": "400"}
    lines = [request_line(f"{run}-{key}", mode) for key, mode in modes.items()]
    batch = client.batches.create(
        input_file_id=upload_lines(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = wait_for(client, batch.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 2)
    good = {r["custom_id"].split("-", 1)[1] for r in output_of(client, batch.output_file_id)}
    bad = {
        r["custom_id"].split("-", 1)[1]: r["response"]["status_code"]
        for r in output_of(client, batch.error_file_id)
    }
    assert good == {"ok", "limited", "flaky", "dropped", "slow"}
    assert bad == {"broken": 500, "refused": 400}
    calls = {key: behaviour.calls[f"{run}-{key}"] for key in modes}
    assert calls == {
        "ok": 1,
        "limited": 3,
        "flaky": 2,
        "dropped": 2,
        "slow": 1,
        "broken": 4,  # max_retries = 3
        "refused": 1,  # a 400 is final
    }
    assert behaviour.authorization == {"Bearer sk-up"}
