"""What a client sends is stored by a batch only cut short, over HTTP: an `input_file_id`
longer than any file id is refused at create, a `body.model` longer than any model name fails
validation (never the batch's `model`), and a message quotes a value of the input file only
in a short form, so that a Batch object stays a few KB however large the values sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filesd.api.schemas import FILE_ID_CHARS
from filesd.batches.validate import MODEL_CHARS
from filesd.values import QUOTED_CHARS

from .batch_upstream import request_line
from .conftest import ALPHA
from .test_batches_api import app_client, chat_line, finished, start_batch

ECHO = {"upstream": "echo"}
BASE = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
# What one error of a Batch object may take, its words and a short form of a value.
ERROR_BYTES = 2048


def size(value: object) -> int:
    return len(json.dumps(value).encode())


async def test_an_input_file_id_longer_than_any_file_id_is_refused_and_makes_no_batch(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches=ECHO)
    huge = "file-" + "x" * 900_000
    resp = await client.post("/v1/batches", json={**BASE, "input_file_id": huge}, headers=ALPHA)
    assert resp.status == 400
    assert (await resp.json())["error"] == {
        "message": f"Invalid 'input_file_id': string too long. Expected a string with maximum "
        f"length {FILE_ID_CHARS}, but got a string with length {len(huge)} instead.",
        "type": "invalid_request_error",
        "param": "input_file_id",
        "code": "string_above_max_length",
    }
    resp = await client.get("/v1/batches", headers=ALPHA)
    assert (await resp.json())["data"] == []


async def test_a_missing_input_files_message_quotes_its_id_cut_short(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """The longest id taken names no file: the batch fails, its message quoting the id's start."""
    client = await app_client(aiohttp_client, tmp_path, batches=ECHO)
    longest = "file-" + "y" * (FILE_ID_CHARS - 5)
    resp = await client.post("/v1/batches", json={**BASE, "input_file_id": longest}, headers=ALPHA)
    created = await resp.json()
    assert resp.status == 200, created
    batch = await finished(client, created["id"])
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert error["message"] == (
        f"Cannot find file {longest[:QUOTED_CHARS]}\u2026, or the project does not have access "
        "to it."
    )


async def test_huge_values_of_the_input_are_quoted_cut_short_in_the_batchs_errors(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches=ECHO)
    method = "P" * 200_000
    lines = [{**chat_line(f"s{n}"), "method": method} for n in range(5)]
    lines += [{**chat_line(f"a{n}"), "method": [["x" * 10_000] * 5] * 5} for n in range(3)]
    lines.append({**chat_line("model"), "method": "GET"})
    batch = await finished(client, (await start_batch(client, lines))["id"])
    errors = batch["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("invalid_method", n) for n in range(1, 10)]
    assert errors[0]["message"] == (
        f"Invalid value for 'method': '{method[:QUOTED_CHARS]}\u2026'. Only 'POST' is supported."
    )
    assert errors[-1]["message"] == "Invalid value for 'method': 'GET'. Only 'POST' is supported."
    assert all(size(e) < ERROR_BYTES for e in errors), [size(e) for e in errors]
    resp = await client.get("/v1/batches?limit=100", headers=ALPHA)
    assert len(await resp.read()) < ERROR_BYTES * (len(errors) + 1)


async def test_a_model_name_longer_than_any_fails_validation_and_is_never_the_batchs(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """Echo serves every `gpt-` name, however long: the bound is validation's."""
    client = await app_client(aiohttp_client, tmp_path, batches=ECHO)
    huge = "gpt-" + "x" * 1_000_000
    lines = [request_line("a", model=huge), request_line("b", model="gpt-4o-mini")]
    batch = await finished(client, (await start_batch(client, lines))["id"])
    assert (batch["status"], batch["model"]) == ("failed", None)
    assert batch["errors"]["data"] == [
        {
            "code": "invalid_value",
            "message": f"Invalid 'body.model': string too long. Expected a string with maximum "
            f"length {MODEL_CHARS}, but got a string with length {len(huge)} instead.",
            "param": "body.model",
            "line": 1,
        }
    ]
    longest = "gpt-" + "z" * (MODEL_CHARS - 4)
    batch = await finished(
        client, (await start_batch(client, [chat_line("a", model=longest)]))["id"]
    )
    assert (batch["status"], batch["model"]) == ("completed", longest)


async def test_a_model_named_in_a_message_is_quoted_cut_short(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = await app_client(aiohttp_client, tmp_path, batches=ECHO)
    unknown = "m" * MODEL_CHARS
    other = "gpt-" + "o" * (MODEL_CHARS - 4)
    cases = [
        ([chat_line("a", model=unknown)], "model_not_found", unknown),
        ([chat_line("a"), chat_line("b", model=other)], "mismatched_model", other),
    ]
    for lines, code, model in cases:
        batch = await finished(client, (await start_batch(client, lines))["id"])
        [error] = batch["errors"]["data"]
        assert error["code"] == code
        assert f"'{model[:QUOTED_CHARS]}\u2026'" in error["message"]
        assert model[: QUOTED_CHARS + 1] not in error["message"]
