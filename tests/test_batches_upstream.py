"""Reading an HTTP upstream's answers: whole however they arrive (large, chunked with pauses),
bounded in size and in silence, and a 2xx without a JSON object is a failed request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .batch_upstream import Behaviour, make_upstream, request_line
from .test_batches_api import app_client, content_lines, finished, start_batch

MIB = 1024 * 1024


def _answer(key: str, text: str) -> bytes:
    body = {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return json.dumps(body).encode()


def shaped_upstream() -> web.Application:
    """The last user message is `<key>|<mode>`: `big` (a 1 MB answer in one go), `drip`
    (a chunked answer sent in pieces with pauses), `huge` (3 MB), `stall` (a piece, then
    silence for 5 s), `text` (200 with text), `list` (200 with a JSON array)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        key, _, mode = body["messages"][-1]["content"].partition("|")
        if mode == "big":
            return web.Response(body=_answer(key, "x" * MIB), content_type="application/json")
        if mode == "huge":
            return web.Response(body=_answer(key, "x" * 3 * MIB), content_type="application/json")
        if mode == "text":
            return web.Response(text="hello", content_type="text/plain")
        if mode == "list":
            return web.json_response([1, 2, 3])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        payload = _answer(key, "y" * 200_000)
        pieces = [payload[i : i + 50_000] for i in range(0, len(payload), 50_000)]
        for index, piece in enumerate(pieces):
            await response.write(piece)
            await asyncio.sleep(5 if mode == "stall" and index == 0 else 0.05)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _run(
    aiohttp_client: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
    modes: dict[str, str],
    **settings: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    upstream: Any = await aiohttp_server(shaped_upstream())
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={
            "upstream": str(upstream.make_url("/v1")),
            "max_retries": 0,
            "max_response_bytes": 2 * MIB,
            **settings,
        },
    )
    lines = [request_line(key, mode) for key, mode in modes.items()]
    batch = await finished(client, (await start_batch(client, lines))["id"])
    ok, bad = {}, {}
    if batch["output_file_id"]:
        ok = {o["custom_id"]: o for o in await content_lines(client, batch["output_file_id"])}
    if batch["error_file_id"]:
        bad = {o["custom_id"]: o for o in await content_lines(client, batch["error_file_id"])}
    return batch, ok, bad


async def test_large_and_dripped_answers_come_through_whole(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    batch, ok, bad = await _run(
        aiohttp_client, aiohttp_server, tmp_path, {"big": "big", "drip": "drip"}
    )
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}, bad
    content = {k: o["response"]["body"]["choices"][0]["message"]["content"] for k, o in ok.items()}
    assert content == {"big": "x" * MIB, "drip": "y" * 200_000}


async def test_oversized_and_non_object_answers_are_failed_requests(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    modes = {"huge": "huge", "text": "text", "list": "list", "fine": "big"}
    batch, ok, bad = await _run(aiohttp_client, aiohttp_server, tmp_path, modes)
    assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 3}, (ok, bad)
    assert set(ok) == {"fine"}, ok.keys()
    assert {k: o["error"]["code"] for k, o in bad.items()} == dict.fromkeys(
        ("huge", "text", "list"), "upstream_bad_response"
    )
    assert "max_response_bytes" in bad["huge"]["error"]["message"]


async def test_a_silent_upstream_fails_after_the_read_timeout(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    batch, _, bad = await _run(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        {"stalled": "stall"},
        read_timeout=0.5,
        request_timeout=60,
    )
    assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    error = bad["stalled"]["error"]
    assert error["code"] == "upstream_unreachable"
    # The tenant is not told where the upstream is.
    assert "127.0.0.1" not in error["message"]


# --- which models a batch may name ------------------------------------------------------------


def _model_not_found(model: str, line: int = 1) -> list[dict[str, Any]]:
    message = f"The provided model '{model}' is not supported by the Batch API."
    return [{"code": "model_not_found", "message": message, "param": "body.model", "line": line}]


async def test_the_model_must_be_one_the_upstream_lists_asked_once_in_a_while(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour()
    behaviour.listed = ["gpt-test", "other"]
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    client = await app_client(
        aiohttp_client, tmp_path, batches={"upstream": str(upstream.make_url("/v1"))}
    )
    for key in ("a", "b"):
        batch = await finished(client, (await start_batch(client, [request_line(key)]))["id"])
        assert batch["status"] == "completed", batch["errors"]
    # The list is kept: the second batch did not ask again.
    assert behaviour.model_lists == 1
    lines = [request_line("c", model="gpt-nope"), request_line("d", model="gpt-nope")]
    batch = await finished(client, (await start_batch(client, lines))["id"])
    assert batch["status"] == "failed"
    assert batch["errors"]["data"] == _model_not_found("gpt-nope")
    assert behaviour.calls["c"] == behaviour.calls["d"] == 0


async def test_an_upstream_without_a_model_list_takes_any_model(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour()  # GET /v1/models is a 404
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    client = await app_client(
        aiohttp_client, tmp_path, batches={"upstream": str(upstream.make_url("/v1"))}
    )
    lines = [request_line("a", model="whatever-it-serves")]
    batch = await finished(client, (await start_batch(client, lines))["id"])
    assert batch["status"] == "completed", batch["errors"]
    assert behaviour.model_lists == 1
    assert behaviour.models == {"whatever-it-serves"}


async def test_batches_models_names_the_models_when_set_without_asking_the_upstream(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    behaviour = Behaviour()
    behaviour.listed = ["local-model", "gpt-listed"]
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    client = await app_client(
        aiohttp_client,
        tmp_path,
        batches={
            "upstream": str(upstream.make_url("/v1")),
            "models": {"gpt-test": "local-model", "local-model": "local-model"},
        },
    )
    for model in ("gpt-test", "local-model"):
        lines = [request_line(model, model=model)]
        batch = await finished(client, (await start_batch(client, lines))["id"])
        assert batch["status"] == "completed", batch["errors"]
    # Listed by the upstream, but not in [batches.models]: that table decides.
    lines = [request_line("x", model="gpt-listed")]
    batch = await finished(client, (await start_batch(client, lines))["id"])
    assert batch["errors"]["data"] == _model_not_found("gpt-listed")
    assert behaviour.model_lists == 0
    assert behaviour.models == {"local-model"}
