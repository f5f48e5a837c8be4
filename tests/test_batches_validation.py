"""Validation of a batch's input file: every failure of OpenAI's list, each with its line, on
the streamed validator; and that a bad file fails the batch through the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from filesd.batches.lines import LineTooLong, numbered_lines
from filesd.batches.objects import ENDPOINTS
from filesd.batches.validate import API_NAMES, BODY_REQUIRES, MAX_ERRORS, validate_input

ENDPOINT = "/v1/chat/completions"


def line(custom_id: object = "a", *, url: str | None = ENDPOINT, **changes: Any) -> bytes:
    request: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    for name, value in changes.items():
        request[name] = value
    return json.dumps({k: v for k, v in request.items() if v is not None}).encode()


async def chunks_of(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def any_model(model: str) -> bool:
    return True


async def check(
    lines: Sequence[bytes],
    *,
    max_requests: int = 50_000,
    size: int = 7,
    endpoint: str = ENDPOINT,
    knows_model: Callable[[str], Awaitable[bool]] = any_model,
) -> tuple[list[dict[str, Any]], list[tuple[int, str]], int]:
    saved: list[tuple[int, str]] = []

    async def save(rows: Sequence[tuple[int, str]]) -> None:
        saved.extend(rows)

    result = await validate_input(
        chunks_of(b"\n".join(lines) + b"\n", size),
        endpoint=endpoint,
        max_requests=max_requests,
        save=save,
        knows_model=knows_model,
    )
    return result.errors, saved, result.total


async def test_a_valid_file_saves_every_request_with_its_line() -> None:
    errors, saved, total = await check([line("a"), b"", line("b"), b"  ", line("c")])
    assert errors == []
    assert saved == [(1, "a"), (3, "b"), (5, "c")]
    assert total == 3


@pytest.mark.parametrize(
    ("bad", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (line(custom_id=None), "missing_required_parameter", "custom_id"),
        (line(method=None), "missing_required_parameter", "method"),
        (line(url=None), "missing_required_parameter", "url"),
        (line(body=None), "missing_required_parameter", "body"),
        (line(custom_id=7), "invalid_type", "custom_id"),
        (line(method="GET"), "invalid_method", "method"),
        (line(url="/v1/embeddings"), "invalid_url", "url"),
        (line(body="text"), "invalid_type", "body"),
        (line(body={"messages": []}), "invalid_request", "body.model"),
        (line(body={"model": "m"}), "invalid_request", "body.messages"),
        (line(body={"model": 5, "messages": []}), "invalid_type", "body.model"),
        (line(body={"model": "other", "messages": []}), "mismatched_model", "body.model"),
        (
            line(body={"model": "m", "messages": [], "stream": True}),
            "streaming_unsupported",
            "body.stream",
        ),
        (line("first"), "duplicate_custom_id", "custom_id"),
        # What is stored of a line must be text: no lone surrogate (no UTF-8 encodes one, and
        # the custom_id is hashed as UTF-8), no NUL (PostgreSQL's text refuses it).
        (line("\ud800"), "invalid_value", "custom_id"),
        (line("a\x00"), "invalid_value", "custom_id"),
        (line(body={"model": "\udfff", "messages": []}), "invalid_value", "body.model"),
        (line(body={"model": "m\x00", "messages": []}), "invalid_value", "body.model"),
    ],
)
async def test_each_failure_names_its_line(bad: bytes, code: str, param: str | None) -> None:
    errors, _, _ = await check([line("first"), b"", line("second"), bad, line("last")])
    assert [(e["code"], e["line"], e["param"]) for e in errors] == [(code, 4, param)]
    assert errors[0]["message"]


async def test_the_messages_are_openais() -> None:
    stream = {"model": "m", "messages": [], "stream": True}
    errors, _, _ = await check([b"nope", line("a", url="/v1/x"), line("a"), line("b", body=stream)])
    assert errors[0]["message"] == "This line is not parseable as valid JSON."
    assert errors[1]["message"] == (
        "The URL provided for this request does not match the batch endpoint."
    )
    assert errors[2]["message"].startswith(
        "The custom_id for this request is a duplicate of another request."
    )
    assert errors[3]["message"] == (
        "Chat Completions: Streaming is not supported in the Batch API."
    )


async def test_a_body_without_a_model_is_openais_invalid_request() -> None:
    errors, saved, _ = await check([line("a", body={"messages": []})])
    assert errors == [
        {
            "code": "invalid_request",
            "message": "Model parameter is required.",
            "param": "body.model",
            "line": 1,
        }
    ]
    assert saved == []


# What each endpoint's body must hold besides `model`, and a body that holds it.
BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/chat/completions": ("messages", {"messages": [{"role": "user", "content": "hi"}]}),
    "/v1/completions": ("prompt", {"prompt": "hi"}),
    "/v1/embeddings": ("input", {"input": "hi"}),
    "/v1/responses": ("input", {"input": "hi"}),
    "/v1/moderations": ("input", {"input": "hi"}),
    "/v1/images/generations": ("prompt", {"prompt": "a cat"}),
    "/v1/images/edits": ("prompt", {"prompt": "a hat", "images": [{"file_id": "file-1"}]}),
    "/v1/videos": ("prompt", {"prompt": "a cat"}),
}


def test_every_endpoint_has_its_required_field_and_api_name() -> None:
    assert set(BODY_REQUIRES) == set(API_NAMES) == set(BODIES) == set(ENDPOINTS)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_each_endpoint_requires_its_fields_in_openais_words(endpoint: str) -> None:
    required, body = BODIES[endpoint]
    whole = line("a", url=endpoint, body={"model": "m", **body})
    lacking = {"model": "m", **{k: v for k, v in body.items() if k != required}}
    errors, _, _ = await check([whole, line("b", url=endpoint, body=lacking)], endpoint=endpoint)
    assert errors == [
        {
            "code": "invalid_request",
            "message": f"{required.capitalize()} parameter is required.",
            "param": f"body.{required}",
            "line": 2,
        }
    ]
    assert required == BODY_REQUIRES[endpoint][0]


async def test_a_stored_prompt_or_a_response_continued_stands_in_for_a_responses_input() -> None:
    bodies = [
        {"model": "m", "prompt": {"id": "pmpt_1"}},
        {"model": "m", "previous_response_id": "resp_1"},
        {"model": "m", "conversation": "conv_1"},
    ]
    lines = [line(str(n), url="/v1/responses", body=b) for n, b in enumerate(bodies)]
    errors, saved, _ = await check(lines, endpoint="/v1/responses")
    assert errors == []
    assert len(saved) == 3


async def test_an_unknown_model_is_model_not_found_once_asked_once() -> None:
    asked: list[str] = []

    async def knows(model: str) -> bool:
        asked.append(model)
        return model == "m"

    errors, saved, _ = await check([line("a"), line("b")], knows_model=knows)
    assert (errors, len(saved), asked) == ([], 2, ["m"])
    asked.clear()
    other = {"model": "gpt-nope", "messages": []}
    errors, saved, _ = await check(
        [b"", line("a", body=other), line("b", body=other)], knows_model=knows
    )
    assert errors == [
        {
            "code": "model_not_found",
            "message": "The provided model 'gpt-nope' is not supported by the Batch API.",
            "param": "body.model",
            "line": 2,
        }
    ]
    assert (saved, asked) == ([], ["gpt-nope"])


async def test_too_many_requests_stops_at_the_first_one_over() -> None:
    errors, _, _ = await check([line(str(n)) for n in range(6)], max_requests=4)
    assert [(e["code"], e["line"]) for e in errors] == [("too_many_requests", 5)]


async def test_an_empty_file_fails() -> None:
    errors, saved, _ = await check([b"", b"   "])
    assert [(e["code"], e["line"]) for e in errors] == [("empty_file", None)]
    assert saved == []


async def test_errors_are_capped() -> None:
    errors, saved, _ = await check([b"x"] * (MAX_ERRORS + 50))
    assert len(errors) == MAX_ERRORS
    assert saved == []


async def test_a_line_over_the_limit_is_refused_without_holding_it() -> None:
    data = line("a") + b"\n" + b"x" * 5000 + b"\n" + line("b")
    with pytest.raises(LineTooLong) as info:
        async for _ in numbered_lines(chunks_of(data, 100), max_line_bytes=1000):
            pass
    assert info.value.line == 2
    result = await validate_input(
        chunks_of(data, 100),
        endpoint=ENDPOINT,
        max_requests=10,
        save=_ignore,
        knows_model=any_model,
        max_line_bytes=1000,
    )
    assert [(e["code"], e["line"]) for e in result.errors] == [("line_too_long", 2)]


async def _ignore(rows: Sequence[tuple[int, str]]) -> None:
    pass


@pytest.mark.parametrize("size", [1, 2, 3, 64, 10_000])
async def test_lines_split_anywhere_across_chunks(size: int) -> None:
    data = b"a\r\n\nbc\nlast-without-newline"
    got = [item async for item in numbered_lines(chunks_of(data, size), max_line_bytes=100)]
    assert got == [(1, b"a"), (2, b""), (3, b"bc"), (4, b"last-without-newline")]
