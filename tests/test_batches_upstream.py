"""Reading an HTTP upstream's answers: whole however they arrive (large, chunked with pauses),
bounded in size and in silence, and a 2xx without a JSON object is a failed request.
Whatever an upstream answers (a redirect, ...) is that request's line, and the request is
sent once (these tests allow no retry)."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from filesd.batches.objects import MAX_TOKENS
from filesd.batches.runner import BatchRunner
from filesd.batches.service import BatchService
from filesd.batches.upstream import Answer
from filesd.services.core import Services
from filesd.services.settings import StoreSettings

from .batch_upstream import Behaviour, make_upstream, request_line
from .conftest import ALPHA, chunks_of, make_config, wait_until
from .test_batches_api import Client, app_client, finished, start_batch

MIB = 1024 * 1024


def _answer(key: str, text: str, usage: dict[str, Any] | None = None) -> bytes:
    body = {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": usage or {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return json.dumps(body).encode()


DEEP = b"[" * 100_000 + b"]" * 100_000
# Token counts no int64 holds (the database's integers), and two that overflow one together.
HUGE_USAGE = {
    "prompt_tokens": 2**63,
    "completion_tokens": 2**64,
    "prompt_tokens_details": {"cached_tokens": 2**70},
    "completion_tokens_details": {"reasoning_tokens": 10**30},
}
HALF_USAGE = {"prompt_tokens": 2**62, "completion_tokens": 2**62}


def _raw_answer(key: str, mode: str) -> tuple[int, bytes] | None:
    """(status, body) of the modes answered in one piece, else None."""
    answers = {
        "deep": (200, b'{"choices": ' + DEEP + b"}"),
        "deep400": (400, b'{"error": ' + DEEP + b"}"),
        "huge-usage": (200, _answer(key, "many", HUGE_USAGE)),
        "half-usage": (200, _answer(key, "half", HALF_USAGE)),
        "nan": (200, b'{"object": "chat.completion", "choices": [], "score": NaN}'),
        "infinity400": (400, b'{"error": {"message": "no", "limit": -Infinity}}'),
        "overflow": (200, b'{"object": "chat.completion", "choices": [], "score": 1e400}'),
    }
    return answers.get(mode)


def shaped_upstream(
    calls: collections.Counter[str] | None = None, elsewhere: str = ""
) -> web.Application:
    """The last user message is `<key>|<mode>`: `big` (a 1 MB answer in one go), `drip`
    (a chunked answer sent in pieces with pauses), `huge` (3 MB), `stall` (a piece, then
    silence for 5 s), `text` (200 with text), `list` (200 with a JSON array), `307` / `302`
    (a redirect to `elsewhere`), those of `_raw_answer`. `calls` counts the calls per key."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        key, _, mode = body["messages"][-1]["content"].partition("|")
        if calls is not None:
            calls[key] += 1
        if mode in ("307", "302"):
            raise (
                web.HTTPTemporaryRedirect(elsewhere) if mode == "307" else web.HTTPFound(elsewhere)
            )
        raw = _raw_answer(key, mode)
        if raw is not None:
            return web.Response(status=raw[0], body=raw[1], content_type="application/json")
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


async def test_an_answer_nested_too_deeply_is_that_requests_error_line(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    calls: collections.Counter[str] = collections.Counter()
    batch, _, bad = await _run(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        {"deep": "deep", "refused": "deep400", "fine": "big"},
        upstream_app=shaped_upstream(calls),
    )
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert calls == {"deep": 1, "refused": 1, "fine": 1}
    assert bad["deep"]["error"] == {
        "code": "upstream_bad_response",
        "message": "The upstream answered 200, but its JSON is nested too deeply to be read.",
    }
    refused = bad["refused"]["response"]
    assert refused["status_code"] == 400
    assert refused["body"]["error"]["message"] == (
        "The upstream answered 400, but its JSON is nested too deeply to be read."
    )


async def test_token_counts_beyond_any_real_one_are_bounded(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    # 2**63 is more than the database's integers hold, two 2**62 overflow one; each request's
    # count is capped (its output line keeps what the upstream said).
    calls: collections.Counter[str] = collections.Counter()
    batch, ok, _ = await _run(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        {"huge": "huge-usage", "half": "half-usage", "other-half": "half-usage"},
        upstream_app=shaped_upstream(calls),
    )
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert calls == {"huge": 1, "half": 1, "other-half": 1}
    cap = MAX_TOKENS
    assert batch["usage"] == {
        "input_tokens": 3 * cap,
        "input_tokens_details": {"cached_tokens": cap},
        "output_tokens": 3 * cap,
        "output_tokens_details": {"reasoning_tokens": cap},
        "total_tokens": 6 * cap,
    }
    assert ok["huge"]["response"]["body"]["usage"] == HUGE_USAGE


async def test_nan_and_infinity_never_reach_the_output(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    # An answer holding NaN or Infinity is no JSON (RFC 8259): the request fails, rather than
    # its body being changed (null would put a value there the upstream never sent), and every
    # line of the output and error files stays JSON any parser reads (`_run` reads them so).
    calls: collections.Counter[str] = collections.Counter()
    modes = {"nan": "nan", "refused": "infinity400", "overflow": "overflow", "fine": "big"}
    batch, ok, bad = await _run(
        aiohttp_client, aiohttp_server, tmp_path, modes, upstream_app=shaped_upstream(calls)
    )
    assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert calls == dict.fromkeys(modes, 1)
    assert set(ok) == {"fine"}
    assert bad["nan"]["error"] == {
        "code": "upstream_bad_response",
        "message": "The upstream answered 200, but its body holds NaN, which is not JSON.",
    }
    assert bad["overflow"]["error"] == {
        "code": "upstream_bad_response",
        "message": "The upstream answered 200, but its body holds a number beyond a double's "
        "range, which JSON cannot carry.",
    }
    refused = bad["refused"]["response"]
    assert refused["status_code"] == 400
    assert refused["body"]["error"]["message"] == (
        "The upstream answered 400, but its body holds -Infinity, which is not JSON."
    )


def elsewhere_app(hits: list[str]) -> web.Application:
    """Another host, which answers any request with a chat completion (and notes it)."""

    async def anything(request: web.Request) -> web.Response:
        hits.append(f"{request.method} {request.path}")
        return web.json_response({"id": "chatcmpl-elsewhere", "object": "chat.completion"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


async def _run(
    aiohttp_client: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
    modes: dict[str, str],
    *,
    upstream_app: web.Application | None = None,
    **settings: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    upstream: Any = await aiohttp_server(upstream_app or shaped_upstream())
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
        ok = {o["custom_id"]: o for o in await strict_lines(client, batch["output_file_id"])}
    if batch["error_file_id"]:
        bad = {o["custom_id"]: o for o in await strict_lines(client, batch["error_file_id"])}
    return batch, ok, bad


async def strict_lines(client: Client, file_id: str) -> list[Any]:
    """The lines of a file, each read as RFC 8259 JSON (Python's parser takes NaN and
    Infinity too): whatever the upstream answered, every output line is JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    resp = await client.get(f"/v1/files/{file_id}/content", headers=ALPHA)
    assert resp.status == 200
    return [json.loads(line, parse_constant=refuse) for line in (await resp.read()).splitlines()]


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


async def test_a_model_list_no_parser_reads_is_no_list_not_a_stuck_batch(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    """`GET /v1/models` answering JSON nested deeper than the parser goes left every batch
    validating (the parser's RecursionError escaped the fetch): it is no list, any model."""
    behaviour = Behaviour()
    behaviour.models_body = b"[" * 200_000
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    client = await app_client(
        aiohttp_client, tmp_path, batches={"upstream": str(upstream.make_url("/v1"))}
    )
    lines = [request_line("a", model="whatever-it-serves")]
    batch = await finished(client, (await start_batch(client, lines))["id"])
    assert batch["status"] == "completed", batch["errors"]
    assert behaviour.model_lists == 1


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


async def test_redirects_are_not_followed(
    aiohttp_client: Callable[..., Any], aiohttp_server: Callable[..., Any], tmp_path: Path
) -> None:
    # A 307 would send the tenant's prompt to another host; a 302 would fetch any URL (an
    # internal one) and record what it answers as the tenant's result.
    hits: list[str] = []
    other: Any = await aiohttp_server(elsewhere_app(hits))
    calls: collections.Counter[str] = collections.Counter()
    elsewhere = str(other.make_url("/v1/chat/completions"))
    batch, ok, bad = await _run(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        {"temporary": "307", "found": "302"},
        upstream_app=shaped_upstream(calls, elsewhere),
    )
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 2}, ok
    assert hits == []
    assert calls == {"temporary": 1, "found": 1}
    for key, status in (("temporary", "307"), ("found", "302")):
        error = bad[key]["error"]
        assert error["code"] == "upstream_bad_response"
        assert f"answered {status}, a redirect" in error["message"]
        assert str(other.port) not in error["message"]


def _closed_port() -> int:
    """A port nothing listens on (one the system just gave out, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _garbage_server() -> asyncio.Server:
    """A server answering every request with no HTTP (aiohttp's error then quotes the URL it
    requested, query and all)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@pytest.mark.parametrize("failure", ["refused", "garbage"])
async def test_the_upstreams_credentials_are_never_logged(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    caplog.set_level(logging.INFO)
    async with contextlib.AsyncExitStack() as stack:
        if failure == "refused":
            port = _closed_port()
        else:
            server = await _garbage_server()
            stack.push_async_callback(server.wait_closed)
            stack.callback(server.close)
            port = server.sockets[0].getsockname()[1]
        client = await app_client(
            aiohttp_client,
            tmp_path,
            batches={
                "upstream": f"http://someone:pw-s3cret@127.0.0.1:{port}/v1?key=q-s3cret",
                "max_retries": 0,
            },
        )
        batch = await finished(client, (await start_batch(client, [request_line("k")]))["id"])
    [line] = await strict_lines(client, batch["error_file_id"])
    assert line["error"]["code"] == "upstream_unreachable"
    assert "s3cret" not in json.dumps(line)
    # The operator is told where the request went, without what the URL holds besides.
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in caplog.text
    assert "s3cret" not in caplog.text
    assert "someone" not in caplog.text


@pytest.mark.parametrize(
    ("api_key", "expected"),
    [
        ("", "Basic " + base64.b64encode(b"someone:pw-s3cret").decode()),
        ("sk-upstream", "Bearer sk-upstream"),
    ],
)
async def test_credentials_in_the_upstream_url_are_basic_auth_unless_a_key_is_set(
    aiohttp_client: Callable[..., Any],
    aiohttp_server: Callable[..., Any],
    tmp_path: Path,
    api_key: str,
    expected: str,
) -> None:
    behaviour = Behaviour()
    upstream: Any = await aiohttp_server(make_upstream(behaviour))
    url = str(upstream.make_url("/v1")).replace("http://", "http://someone:pw-s3cret@")
    client = await app_client(
        aiohttp_client, tmp_path, batches={"upstream": url, "api_key": api_key, "max_retries": 0}
    )
    batch = await finished(client, (await start_batch(client, [request_line("k")]))["id"])
    assert batch["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    assert behaviour.authorization == {expected}
    assert behaviour.calls == {"k": 1}


class UnforeseenUpstream:
    """An `Upstream` (the runner's seam) whose answers nothing in filesd foresees: the last
    user message `raises` makes `send` raise a RuntimeError, `deep` answers a body nested
    5,000 levels deep (as a parser without Python's limit would give it), anything else a
    plain chat completion. `calls` counts the calls per message."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def send(self, endpoint: str, body: dict[str, Any], project: str) -> Answer:
        key = body["messages"][-1]["content"]
        self.calls[key] += 1
        if key == "raises":
            raise RuntimeError("nothing foresaw this")
        answer: dict[str, Any] = {"object": "chat.completion", "choices": []}
        if key == "deep":
            for _ in range(5000):
                answer = {"nested": answer}
        return Answer(200, answer)

    async def knows_model(self, model: str) -> bool:
        return True

    async def close(self) -> None:
        pass


async def test_an_unforeseen_failure_is_that_requests_error_line_and_sent_once(
    tmp_path: Path,
) -> None:
    # An exception while sending a request or writing its answer ends that request, not the
    # batch's drive: a drive that failed is taken up again later, sending its requests anew.
    config = make_config(tmp_path / "data", batches={"upstream": "echo", "max_retries": 3})
    services = await Services.open(StoreSettings.from_config(config))
    upstream = UnforeseenUpstream()
    meta = services.backends.meta
    runner = BatchRunner(services.files, services.instance, meta, config.batches, upstream)
    runner.start()
    try:
        batches = BatchService(services.files, meta, runner)
        lines = [request_line(key, "") for key in ("raises", "deep", "fine")]
        for line in lines:
            line["body"]["messages"][-1]["content"] = line["custom_id"]
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        received = await services.files.receive(chunks_of(data))
        source = await services.files.create("p", received, filename="in.jsonl", purpose="batch")
        batch = await batches.create(
            "p",
            input_file_id=source.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=None,
            output_expires_after=None,
        )

        async def done() -> bool:
            return (await batches.get("p", batch.id)).status == "completed"

        await wait_until(done, timeout=20, what="the batch completed")
        batch = await batches.get("p", batch.id)
        assert (batch.completed, batch.failed) == (1, 2)
        assert upstream.calls == {"raises": 1, "deep": 1, "fine": 1}
        assert batch.error_file_id is not None
        record = await services.files.get("p", batch.error_file_id)
        content = b"".join([chunk async for chunk in services.files.open_stream(record)])
        errors = {e["custom_id"]: e["error"] for e in map(json.loads, content.splitlines())}
        assert errors == {
            "raises": {
                "code": "upstream_bad_response",
                "message": "Handling this request failed (RuntimeError); it was not retried.",
            },
            "deep": {
                "code": "upstream_bad_response",
                "message": "Handling this request failed (RecursionError); it was not retried.",
            },
        }
    finally:
        await runner.close()
        await services.close()
