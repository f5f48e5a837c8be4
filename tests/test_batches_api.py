"""The Batch API over HTTP, in process: OpenAI's shapes and errors, project isolation, the
echo model with fault rules, a test upstream (429s with Retry-After, 500s, 400s, dropped
connections, slow answers), cancel and expiry. Every response is checked against
/openapi.json (conftest's client)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from filesd.api.app import create_app
from filesd.config import ConfigError, parse_config
from filesd.storage.sqlite import database_path

from .batch_upstream import Behaviour, make_upstream, request_line
from .conftest import ALPHA, BETA, make_config, upload, wait_until

Client = TestClient[Any, Any]
FINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(
    custom_id: str, text: str | None = None, *, model: str = "gpt-4o-mini"
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text or custom_id}]},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in lines)


async def app_client(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    *,
    clock: Callable[[], float] | None = None,
    **tables: dict[str, Any],
) -> Client:
    config = make_config(tmp_path / "data", **tables)
    client: Client = await aiohttp_client(create_app(config, clock=clock))
    return client


# Echo answering each request after 50 ms, two at a time: a batch of 200 runs for seconds.
SLOW_ECHO: dict[str, Any] = {
    "batches": {"upstream": "echo", "concurrency": 2},
    "testing": {"faults": [{"route": "/v1/chat/completions", "latency_ms": 50}]},
}


async def slow_batch_under_way(client: Client) -> dict[str, Any]:
    """A batch of 200 requests (custom ids r0..r199) on SLOW_ECHO, once some are done."""
    batch = await start_batch(client, [chat_line(f"r{n}") for n in range(200)])

    async def some_done() -> bool:
        counts = (await get_batch(client, batch["id"]))["request_counts"]
        return bool(counts["completed"] >= 4)

    await wait_until(some_done, what="some requests done")
    return batch


async def start_batch(
    client: Client,
    lines: list[dict[str, Any]] | bytes,
    *,
    endpoint: str = "/v1/chat/completions",
    headers: dict[str, str] = ALPHA,
    **extra: Any,
) -> dict[str, Any]:
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    file = await upload(client, content, headers, purpose="batch")
    resp = await client.post(
        "/v1/batches",
        json={
            "input_file_id": file["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
            **extra,
        },
        headers=headers,
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "validating"
    return dict(body)


async def get_batch(client: Client, batch_id: str, headers: dict[str, str] = ALPHA) -> Any:
    resp = await client.get(f"/v1/batches/{batch_id}", headers=headers)
    assert resp.status == 200
    return await resp.json()


async def finished(
    client: Client, batch_id: str, timeout: float = 20, headers: dict[str, str] = ALPHA
) -> dict[str, Any]:
    """The batch once it is in a final status (waiting for it, with a deadline)."""
    seen: dict[str, Any] = {}

    async def done() -> bool:
        seen.update(await get_batch(client, batch_id, headers))
        return seen["status"] in FINAL

    await wait_until(done, timeout=timeout, what=f"batch {batch_id} finished")
    return seen


async def content_lines(client: Client, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    resp = await client.get(f"/v1/files/{file_id}/content", headers=ALPHA)
    assert resp.status == 200
    return [json.loads(x) for x in (await resp.read()).splitlines()]


# --- no upstream ---------------------------------------------------------------------------


async def test_without_an_upstream_creating_is_a_400_that_says_how_to_enable_it(
    client: Client,
) -> None:
    resp = await client.post(
        "/v1/batches",
        json={"input_file_id": "x", "endpoint": "/v1/embeddings", "completion_window": "24h"},
        headers=ALPHA,
    )
    body = await resp.json()
    assert resp.status == 400
    assert body["error"]["code"] == "batches_disabled"
    assert "[batches] upstream" in body["error"]["message"]
    assert '"echo"' in body["error"]["message"]
    # The rest of the API still answers.
    resp = await client.get("/v1/batches", headers=ALPHA)
    assert (resp.status, (await resp.json())["data"]) == (200, [])


# --- the API on the echo model ----------------------------------------------------------------


async def test_a_chat_batch_runs_to_completion_with_openais_objects(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    lines = [chat_line(f"r{n}", f"say {n}") for n in range(30)]
    created = await start_batch(client, lines, metadata={"job": "nightly"})
    assert created["id"].startswith("batch_")
    assert created["object"] == "batch"
    assert created["metadata"] == {"job": "nightly"}
    assert created["expires_at"] == created["created_at"] + 86400
    batch = await finished(client, created["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
    assert batch["model"] == "gpt-4o-mini"
    assert batch["error_file_id"] is None
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert batch[stamp] is not None
    out = await content_lines(client, batch["output_file_id"])
    assert [o["custom_id"] for o in out] == [f"r{n}" for n in range(30)]
    first = out[0]
    assert first["id"].startswith("batch_req_")
    assert first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "say 0"
    usage = batch["usage"]
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in out)
    completion = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in out)
    assert (usage["input_tokens"], usage["output_tokens"]) == (prompt, completion)
    assert usage["total_tokens"] == prompt + completion > 0
    # Final: the results live in the output file only, not in the database too.
    database = sqlite3.connect(database_path(tmp_path / "data"))
    with contextlib.closing(database):

        async def forgotten() -> bool:
            sql = "SELECT COUNT(*) FROM batch_requests WHERE result IS NOT NULL"
            return bool(database.execute(sql).fetchone()[0] == 0)

        await wait_until(forgotten, what="result payloads dropped")
    # The output is a file of the project: purpose batch_output, expiring in 30 days.
    resp = await client.get(f"/v1/files/{batch['output_file_id']}", headers=ALPHA)
    info = await resp.json()
    assert info["purpose"] == "batch_output"
    assert info["expires_at"] == info["created_at"] + 30 * 86400
    resp = await client.get(f"/v1/files/{batch['output_file_id']}", headers=BETA)
    assert resp.status == 404


async def test_embeddings_and_responses_on_echo_are_deterministic(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    embed = [
        {
            "custom_id": name,
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": text, "dimensions": 8},
        }
        for name, text in (("a", "same text"), ("b", "same text"), ("c", ["x", "y"]))
    ]
    batch = await finished(
        client, (await start_batch(client, embed, endpoint="/v1/embeddings"))["id"]
    )
    out = {
        o["custom_id"]: o["response"]["body"]
        for o in await content_lines(client, batch["output_file_id"])
    }
    vector = out["a"]["data"][0]["embedding"]
    assert len(vector) == 8
    assert abs(sum(v * v for v in vector) - 1) < 1e-3
    assert out["b"]["data"][0]["embedding"] == vector
    assert len(out["c"]["data"]) == 2 and out["c"]["data"][0]["embedding"] != vector
    assert batch["usage"]["input_tokens"] > 0 and batch["usage"]["output_tokens"] == 0

    responses = [
        {
            "custom_id": "q",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "echo me"}]},
        }
    ]
    batch = await finished(
        client, (await start_batch(client, responses, endpoint="/v1/responses"))["id"]
    )
    [line] = await content_lines(client, batch["output_file_id"])
    assert line["response"]["body"]["output"][0]["content"][0]["text"] == "echo me"
    assert batch["usage"]["output_tokens"] == line["response"]["body"]["usage"]["output_tokens"]


async def test_batches_are_per_project_and_list_newest_first_with_paging(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    ids = [(await start_batch(client, [chat_line("a")]))["id"] for _ in range(5)]
    other = await start_batch(client, [chat_line("a")], headers=BETA)
    resp = await client.get(f"/v1/batches/{other['id']}", headers=ALPHA)
    assert resp.status == 404
    assert (await resp.json())["error"]["message"] == f"No such Batch object: {other['id']}"
    resp = await client.post(f"/v1/batches/{other['id']}/cancel", headers=ALPHA)
    assert resp.status == 404
    resp = await client.get("/v1/batches", params={"limit": "2"}, headers=ALPHA)
    page = await resp.json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[4], ids[3])
    resp = await client.get("/v1/batches", params={"after": ids[3]}, headers=ALPHA)
    page = await resp.json()
    assert [b["id"] for b in page["data"]] == [ids[2], ids[1], ids[0]]
    assert page["has_more"] is False
    resp = await client.get("/v1/batches", params={"after": other["id"]}, headers=ALPHA)
    assert (resp.status, (await resp.json())["error"]["param"]) == (400, "after")
    for bad in ("0", "101", "ten"):
        resp = await client.get("/v1/batches", params={"limit": bad}, headers=ALPHA)
        assert (resp.status, (await resp.json())["error"]["param"]) == (400, "limit")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"endpoint": "/v1/images"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, None),
        ({"input_file_id": None}, "input_file_id"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_parameters_are_400s_naming_them(
    aiohttp_client: Callable[..., Any], tmp_path: Path, change: dict[str, Any], param: str | None
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    file = await upload(client, jsonl([chat_line("a")]), purpose="batch")
    body = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions"}
    body["completion_window"] = "24h"
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    resp = await client.post("/v1/batches", json=body, headers=ALPHA)
    error = (await resp.json())["error"]
    assert resp.status == 400, error
    if param is not None:
        assert error["param"] == param
    else:
        assert error["param"].startswith("output_expires_after")


async def test_an_input_file_missing_or_another_projects_fails_the_batch_as_openai_does(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """OpenAI makes the batch and fails it in validation (param `file_id`); another project's
    file is answered exactly as one that never was: the same status, fields and words but
    for the id. A file of the project for another purpose is refused at once."""
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    theirs = await upload(client, jsonl([chat_line("a")]), BETA, purpose="batch")
    mine = await upload(client, jsonl([chat_line("a")]), purpose="assistants")
    base = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    failed = []
    for file_id in (theirs["id"], "file-nope"):
        resp = await client.post(
            "/v1/batches", json={**base, "input_file_id": file_id}, headers=ALPHA
        )
        created = await resp.json()
        assert (resp.status, created["status"]) == (200, "validating"), created
        batch = await finished(client, created["id"])
        assert batch["status"] == "failed"
        assert batch["failed_at"] is not None and batch["in_progress_at"] is None
        assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
        assert batch["output_file_id"] is None and batch["error_file_id"] is None
        assert batch["errors"] == {
            "object": "list",
            "data": [
                {
                    "code": "invalid_request",
                    "message": f"Cannot find file {file_id}, or the project does not have "
                    "access to it.",
                    "param": "file_id",
                    "line": None,
                }
            ],
        }
        failed.append(batch)
    varying = ("id", "input_file_id", "errors", "created_at", "expires_at", "failed_at")
    same = [{k: v for k, v in b.items() if k not in varying} for b in failed]
    assert same[0] == same[1]
    # The other project still has its file, untouched, and sees none of ALPHA's batches.
    resp = await client.get(f"/v1/files/{theirs['id']}", headers=BETA)
    assert resp.status == 200
    resp = await client.get("/v1/batches", headers=BETA)
    assert (await resp.json())["data"] == []
    resp = await client.post(
        "/v1/batches", json={**base, "input_file_id": mine["id"]}, headers=ALPHA
    )
    assert (resp.status, (await resp.json())["error"]["param"]) == (400, "input_file_id")


async def test_a_metadata_value_of_the_wrong_type_is_refused_in_openais_words(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    file = await upload(client, jsonl([chat_line("a")]), purpose="batch")
    body = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions"}
    body |= {"completion_window": "24h", "metadata": {"k": ["v"]}}
    resp = await client.post("/v1/batches", json=body, headers=ALPHA)
    assert resp.status == 400
    assert (await resp.json())["error"] == {
        "message": "Invalid type for 'metadata.k': expected a string, but got an array instead.",
        "type": "invalid_request_error",
        "param": "metadata.k",
        "code": "invalid_type",
    }


async def test_every_endpoint_openai_batches_is_taken_and_echo_answers_or_says_it_cannot(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    bodies = {
        "/v1/moderations": {"model": "omni-moderation-latest", "input": "hello"},
        "/v1/images/generations": {"model": "gpt-image-1", "prompt": "a cat"},
        "/v1/images/edits": {"model": "gpt-image-1", "prompt": "a hat"},
        "/v1/videos": {"model": "sora-2", "prompt": "a cat"},
    }
    done = {}
    for endpoint, body in bodies.items():
        line = {"custom_id": "a", "method": "POST", "url": endpoint, "body": body}
        created = await start_batch(client, [line], endpoint=endpoint)
        done[endpoint] = await finished(client, created["id"])
    moderated = done.pop("/v1/moderations")
    assert moderated["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    [answer] = await content_lines(client, moderated["output_file_id"])
    assert answer["response"]["body"]["results"][0]["flagged"] is False
    for endpoint, batch in done.items():
        assert batch["status"] == "completed", batch["errors"]
        assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
        [refused] = await content_lines(client, batch["error_file_id"])
        error = refused["response"]["body"]["error"]
        assert (refused["response"]["status_code"], error["code"]) == (400, "unsupported_endpoint")
        assert f"cannot answer {endpoint}" in error["message"]


async def test_a_model_echo_does_not_serve_fails_validation(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    lines = [chat_line("a", model="m"), chat_line("b", model="m")]
    batch = await finished(client, (await start_batch(client, lines))["id"])
    assert batch["status"] == "failed"
    assert batch["errors"]["data"] == [
        {
            "code": "model_not_found",
            "message": "The provided model 'm' is not supported by the Batch API.",
            "param": "body.model",
            "line": 1,
        }
    ]


async def test_a_bad_file_fails_the_batch_naming_each_line(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    content = jsonl([chat_line("a"), chat_line("a"), chat_line("b", model="other")]) + b"{oops\n"
    batch = await finished(client, (await start_batch(client, content))["id"])
    assert batch["status"] == "failed"
    assert batch["failed_at"] is not None
    assert batch["errors"]["object"] == "list"
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [
        ("duplicate_custom_id", 2),
        ("mismatched_model", 3),
        ("invalid_json_line", 4),
    ]
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA)
    # As OpenAI answers it: a 409 with no code.
    assert (resp.status, (await resp.json())["error"]) == (
        409,
        {
            "message": "Cannot cancel a batch with status 'failed'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    )


async def test_a_too_large_input_fails_the_batch(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(
        aiohttp_client, tmp_path, batches={"upstream": "echo", "max_input_bytes": 100}
    )
    batch = await start_batch(client, [chat_line(f"r{n}") for n in range(5)])
    batch = await finished(client, batch["id"])
    assert [e["code"] for e in batch["errors"]["data"]] == ["file_too_large"]


# --- faults, cancel, expiry (echo) ------------------------------------------------------------


async def test_fault_rules_apply_to_echo_retried_then_failed(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    route = "/v1/chat/completions"
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo", "concurrency": 1, "max_retries": 2, "retry_backoff": 0},
        testing={
            "faults": [
                # One at a time: "a" meets two 429s and a 500, so its three attempts are
                # spent and it fails; "b" meets two more 500s, then succeeds.
                {"route": route, "status": 429, "retry_after": 0, "count": 2},
                {"route": route, "status": 500, "count": 3},
            ]
        },
    )
    batch = await finished(
        client, (await start_batch(client, [chat_line("a"), chat_line("b")]))["id"]
    )
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    [ok] = await content_lines(client, batch["output_file_id"])
    [bad] = await content_lines(client, batch["error_file_id"])
    assert ok["custom_id"] == "b" and bad["custom_id"] == "a"
    assert bad["response"]["status_code"] == 500
    assert bad["response"]["body"]["error"]["type"] == "server_error"


async def test_a_disconnect_rule_drops_an_echo_request(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo", "max_retries": 0, "concurrency": 1},
        testing={"faults": [{"route": "/v1/embeddings", "disconnect": True, "count": 1}]},
    )
    lines = [
        {
            "custom_id": name,
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "x"},
        }
        for name in ("dropped", "fine")
    ]
    batch = await start_batch(client, lines, endpoint="/v1/embeddings")
    batch = await finished(client, batch["id"])
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    [dropped] = await content_lines(client, batch["error_file_id"])
    assert dropped["custom_id"] == "dropped"
    assert dropped["response"] is None
    assert dropped["error"]["code"] == "upstream_unreachable"


async def test_x_should_retry_overrides_the_status(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    route = "/v1/chat/completions"
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo", "concurrency": 1, "max_retries": 3, "retry_backoff": 0},
        testing={
            "faults": [
                # "a": a 500 not to be retried, so it fails at once (else its retry would
                # succeed); "b": a 409 to be retried, then the echo model's 200 (else the 409
                # would be final).
                {"route": route, "status": 500, "should_retry": False, "count": 1},
                {"route": route, "status": 409, "should_retry": True, "count": 1},
            ]
        },
    )
    batch = await finished(
        client, (await start_batch(client, [chat_line("a"), chat_line("b")]))["id"]
    )
    assert batch["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    [bad] = await content_lines(client, batch["error_file_id"])
    assert (bad["custom_id"], bad["response"]["status_code"]) == ("a", 500)


async def test_cancel_stops_sending_and_keeps_what_is_done(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(
        aiohttp_client,
        tmp_path,
        **SLOW_ECHO,
    )
    batch = await slow_batch_under_way(client)
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA)
    cancelling = await resp.json()
    assert resp.status == 200
    assert cancelling["status"] in ("cancelling", "cancelled")
    assert cancelling["cancelling_at"] is not None
    batch = await finished(client, batch["id"])
    assert batch["status"] == "cancelled"
    assert batch["cancelled_at"] is not None
    done = batch["request_counts"]["completed"]
    assert 4 <= done < 200
    out = await content_lines(client, batch["output_file_id"])
    unrun = await content_lines(client, batch["error_file_id"])
    # As OpenAI counts a cancelled batch: the requests never sent count in `total` only (not
    # as failed), and each has its line in the error file.
    assert batch["request_counts"] == {"total": 200, "completed": len(out), "failed": 0}
    assert len(unrun) == 200 - len(out)
    assert {o["error"]["code"] for o in unrun} == {"batch_cancelled"}
    assert sorted(o["custom_id"] for o in out + unrun) == sorted(f"r{n}" for n in range(200))
    # Cancelling again answers the cancelled batch.
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA)
    assert (resp.status, (await resp.json())["status"]) == (200, "cancelled")


async def test_a_cancelled_batchs_counts_and_files_agree_as_openai_counts_them(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """`completed`: the output file's lines; `failed`: the requests sent that failed (error
    lines with a response); the requests never sent: the rest of the error file, counted in
    `total` only (a cancelled OpenAI batch of 8 with 4 done reads total 8, completed 4,
    failed 0)."""
    route = "/v1/chat/completions"
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo", "concurrency": 2, "max_retries": 0},
        testing={
            "faults": [
                {"route": route, "status": 400, "count": 3},
                {"route": route, "latency_ms": 50},
            ]
        },
    )
    batch = await slow_batch_under_way(client)
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA)
    assert resp.status == 200
    batch = await finished(client, batch["id"])
    assert batch["status"] == "cancelled"
    out = await content_lines(client, batch["output_file_id"])
    errors = await content_lines(client, batch["error_file_id"])
    sent_failed = [e for e in errors if e["response"] is not None]
    unrun = [e for e in errors if e["response"] is None]
    assert [e["response"]["status_code"] for e in sent_failed] == [400] * 3
    assert {e["error"]["code"] for e in unrun} == {"batch_cancelled"}
    assert batch["request_counts"] == {"total": 200, "completed": len(out), "failed": 3}
    assert len(out) + len(sent_failed) + len(unrun) == 200 and unrun


async def test_cancel_does_not_wait_for_slow_requests(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo", "concurrency": 1},
        testing={"faults": [{"route": "/v1/chat/completions", "latency_ms": 60_000}]},
    )
    batch = await start_batch(client, [chat_line(f"r{n}") for n in range(5)])

    async def running() -> bool:
        return bool((await get_batch(client, batch["id"]))["status"] == "in_progress")

    await wait_until(running, what="the batch running")
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=ALPHA)
    assert resp.status == 200
    batch = await finished(client, batch["id"], timeout=5)
    assert batch["status"] == "cancelled"
    assert batch["output_file_id"] is None
    assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 0}
    unrun = await content_lines(client, batch["error_file_id"])
    assert [o["custom_id"] for o in unrun] == [f"r{n}" for n in range(5)]


async def test_a_batch_past_its_window_expires_with_its_partial_output(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    now = [1_800_000_000.0]
    client = await app_client(
        aiohttp_client,
        tmp_path,
        clock=lambda: now[0],
        **SLOW_ECHO,
    )
    batch = await slow_batch_under_way(client)
    now[0] += 24 * 3600 + 1
    batch = await finished(client, batch["id"])
    assert batch["status"] == "expired"
    assert batch["expired_at"] >= batch["expires_at"]
    assert batch["finalizing_at"] == batch["expired_at"]
    out = await content_lines(client, batch["output_file_id"])
    unrun = await content_lines(client, batch["error_file_id"])
    assert len(out) == batch["request_counts"]["completed"] >= 4
    assert unrun and {o["error"]["code"] for o in unrun} == {"batch_expired"}
    assert len(out) + len(unrun) == 200


async def test_an_input_file_deleted_under_a_batch_fails_it_with_what_was_done(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(
        aiohttp_client,
        tmp_path,
        **SLOW_ECHO,
    )
    batch = await slow_batch_under_way(client)
    resp = await client.delete(f"/v1/files/{batch['input_file_id']}", headers=ALPHA)
    assert resp.status == 200
    # A run under way goes on reading what it opened; a restart finds the input gone.
    await client.close()
    client = await app_client(aiohttp_client, tmp_path, batches={"upstream": "echo"})
    batch = await finished(client, batch["id"])
    assert batch["status"] == "failed"
    assert [e["code"] for e in batch["errors"]["data"]] == ["input_file_deleted"]
    assert batch["finalizing_at"] is not None
    out = await content_lines(client, batch["output_file_id"])
    unrun = await content_lines(client, batch["error_file_id"])
    assert len(out) == batch["request_counts"]["completed"] >= 4
    assert {o["error"]["code"] for o in unrun} == {"batch_failed"}
    assert len(out) + len(unrun) == 200


async def test_an_output_over_the_upload_limit_is_stored_all_the_same(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """`max_file_bytes` limits uploads; a batch's output is made by the server, and its
    finished work is not thrown away for being larger."""
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo"},
        limits={"max_file_bytes": 2000},
    )
    batch = await finished(
        client, (await start_batch(client, [chat_line(f"r{n}") for n in range(8)]))["id"]
    )
    assert batch["status"] == "completed"
    resp = await client.get(f"/v1/files/{batch['output_file_id']}", headers=ALPHA)
    assert (await resp.json())["bytes"] > 2000
    assert len(await content_lines(client, batch["output_file_id"])) == 8


async def test_an_output_over_the_quota_fails_the_batch_and_leaves_no_file(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    # Two files per project: the input and the output fit, the error file does not.
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo", "max_retries": 0, "concurrency": 1},
        limits={"max_files_per_project": 2},
        testing={"faults": [{"route": "/v1/chat/completions", "status": 400, "count": 1}]},
    )
    batch = await finished(
        client, (await start_batch(client, [chat_line(f"r{n}") for n in range(4)]))["id"]
    )
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert error["code"] == "quota_exceeded"
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    resp = await client.get("/v1/files", headers=ALPHA)
    assert [f["purpose"] for f in (await resp.json())["data"]] == ["batch"]


# --- a real upstream over HTTP ----------------------------------------------------------------


async def test_an_http_upstream_with_429s_500s_400s_drops_and_slow_answers(
    aiohttp_client: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    behaviour = Behaviour(retry_after="0", slow_seconds=0.3)
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    monkeypatch.setenv("FILESD_TEST_UPSTREAM_KEY", "sk-upstream")
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={
            "upstream": str(upstream.make_url("/v1")),
            "api_key_env": "FILESD_TEST_UPSTREAM_KEY",
            "concurrency": 4,
            "max_retries": 3,
            # Far longer than the test may take: only honouring Retry-After (0 s) finishes.
            "retry_backoff": 3600,
            "request_timeout": 5,
            "models": {"gpt-test": "local-model"},
        },
    )
    modes = {
        "fine": "ok",
        "limited": "429x2",
        "flaky": "500x1",
        "broken": "500",
        "refused": "400",
        "dropped": "dropx1",
        "slow": "slow",
    }
    lines = [request_line(key, mode) for key, mode in modes.items()]
    # No Retry-After on a 500 and a dropped connection: their one retry waits the backoff,
    # so these two would not finish; they go in a batch of their own with a short backoff.
    quick = [line for line in lines if line["custom_id"] not in ("flaky", "dropped", "broken")]
    batch = await finished(client, (await start_batch(client, quick))["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    out = {o["custom_id"]: o for o in await content_lines(client, batch["output_file_id"])}
    [refused] = await content_lines(client, batch["error_file_id"])
    assert set(out) == {"fine", "limited", "slow"}
    assert out["limited"]["response"]["request_id"] == "req_up_limited_3"
    assert (refused["custom_id"], refused["response"]["status_code"]) == ("refused", 400)
    assert behaviour.calls["limited"] == 3 and behaviour.calls["refused"] == 1
    assert behaviour.authorization == {"Bearer sk-upstream"}
    assert behaviour.models == {"local-model"}
    assert batch["usage"]["input_tokens"] == 9 and batch["usage"]["output_tokens"] == 6


async def test_network_errors_and_500s_are_retried_with_backoff(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour()
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={
            "upstream": str(upstream.make_url("/v1")),
            "max_retries": 2,
            "retry_backoff": 0.01,
        },
    )
    lines = [request_line("flaky", "500x1"), request_line("dropped", "dropx2")]
    lines.append(request_line("broken", "500"))
    batch = await finished(client, (await start_batch(client, lines))["id"])
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    [broken] = await content_lines(client, batch["error_file_id"])
    assert broken["response"]["status_code"] == 500
    assert behaviour.calls == {"flaky": 2, "dropped": 3, "broken": 3}


async def test_an_unreachable_upstream_fails_each_request_with_an_error(
    aiohttp_client: Callable[..., Any], unused_tcp_port: int, tmp_path: Path
) -> None:
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={
            "upstream": f"http://127.0.0.1:{unused_tcp_port}/v1",
            "max_retries": 1,
            "retry_backoff": 0.01,
        },
    )
    batch = await finished(client, (await start_batch(client, [chat_line("a")]))["id"])
    assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    [line] = await content_lines(client, batch["error_file_id"])
    assert line["response"] is None
    assert line["error"]["code"] == "upstream_unreachable"
    # Where the upstream is is the operator's business (in the log), not the tenant's.
    assert str(unused_tcp_port) not in line["error"]["message"]
    assert "127.0.0.1" not in line["error"]["message"]


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"upstream": "ftp://x"}, "batches.upstream"),
        ({"concurrency": 0}, "batches.concurrency"),
        ({"max_retries": -1}, "batches.max_retries"),
        ({"retry_backoff": -1}, "batches.retry_backoff"),
        ({"request_timeout": 0}, "batches.request_timeout"),
        ({"max_requests": 0}, "batches.max_requests"),
        ({"max_response_bytes": 0}, "batches.max_response_bytes"),
        ({"read_timeout": 0}, "batches.read_timeout"),
        ({"max_running": 0}, "batches.max_running"),
        ({"models": {"a": 1}}, "batches.models.a"),
        ({"nope": 1}, "batches.nope"),
    ],
)
def test_bad_batch_settings_name_the_key(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config({"batches": table}, base_dir=tmp_path)


def test_the_upstream_api_key_is_not_in_the_config_repr(tmp_path: Path) -> None:
    config = parse_config({"batches": {"api_key": "sk-very-secret"}}, base_dir=tmp_path)
    assert config.batches.api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(config)


def test_batch_settings_parse(tmp_path: Path) -> None:
    config = parse_config(
        {"batches": {"upstream": "http://h:1/v1/", "models": {"a": "b"}, "retry_backoff": 0}},
        base_dir=tmp_path,
    )
    assert config.batches.upstream == "http://h:1/v1"
    assert config.batches.models == {"a": "b"}
    assert config.batches.retry_backoff == 0.0


# --- reset ------------------------------------------------------------------------------------


async def test_admin_reset_removes_batches_and_stops_their_runs(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour()
    behaviour.delay = 0.1
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    admin = {"Authorization": "Bearer admin-token-0123456789"}
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": str(upstream.make_url("/v1")), "concurrency": 2},
        admin={"token": "admin-token-0123456789"},
    )
    batch = await start_batch(client, [request_line(f"r{n}") for n in range(100)])
    kept = await start_batch(client, [request_line("b")], headers=BETA)

    async def some_sent() -> bool:
        return sum(behaviour.calls.values()) >= 4

    await wait_until(some_sent, what="some requests sent")
    resp = await client.post("/admin/reset", json={"project": "alpha"}, headers=admin)
    assert resp.status == 200
    resp = await client.get(f"/v1/batches/{batch['id']}", headers=ALPHA)
    assert resp.status == 404
    assert (await (await client.get("/v1/batches", headers=ALPHA)).json())["data"] == []
    # The other project's batch is untouched.
    assert (await get_batch(client, kept["id"], BETA))["id"] == kept["id"]
    # The run stops: no request is sent any more (while it runs, one goes every ~0.05 s),
    # far short of the 100 (5 s of them at 2 x 0.1 s).
    await wait_until(
        lambda: time.monotonic() - behaviour.last_call > 0.5,
        timeout=5,
        what="the reset batch's run stopped",
    )
    assert sum(behaviour.calls.values()) < 40
    resp = await client.get("/v1/files", headers=ALPHA)
    assert (await resp.json())["data"] == []


# --- many batches -----------------------------------------------------------------------------


def _open_blob_files(data_dir: Path) -> int:
    """Files of `data_dir`'s blob store this process holds open now."""
    blobs = str(data_dir / "blobs")
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(blobs):
                count += 1
    return count


async def test_queued_batches_wait_for_a_run_slot_without_holding_their_input_open(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={"upstream": "echo", "concurrency": 1, "max_running": 2},
        testing={"faults": [{"route": "/v1/chat/completions", "latency_ms": 30}]},
    )
    batches = [
        await start_batch(client, [chat_line(f"b{b}r{n}") for n in range(3)]) for b in range(12)
    ]

    async def some_done() -> bool:
        counts = [(await get_batch(client, b["id"]))["request_counts"] for b in batches]
        return bool(sum(c["completed"] for c in counts) >= 3)

    await wait_until(some_done, what="some requests done")
    assert _open_blob_files(tmp_path / "data") <= 2
    for batch in batches:
        assert (await finished(client, batch["id"]))["status"] == "completed"
