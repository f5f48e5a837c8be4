"""Validation of a batch's input file: every failure of OpenAI's list, each with its line, on
the streamed validator; and that a bad file fails the batch through the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from filesd.batches.lines import LineTooLong, numbered_lines
from filesd.batches.validate import MAX_ERRORS, validate_input

ENDPOINT = "/v1/chat/completions"


def line(custom_id: object = "a", **changes: Any) -> bytes:
    request: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    for name, value in changes.items():
        if value is None:
            request.pop(name)
        else:
            request[name] = value
    return json.dumps(request).encode()


async def chunks_of(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def check(
    lines: Sequence[bytes], *, max_requests: int = 50_000, size: int = 7
) -> tuple[list[dict[str, Any]], list[tuple[int, str]], int]:
    saved: list[tuple[int, str]] = []

    async def save(rows: Sequence[tuple[int, str]]) -> None:
        saved.extend(rows)

    result = await validate_input(
        chunks_of(b"\n".join(lines) + b"\n", size),
        endpoint=ENDPOINT,
        max_requests=max_requests,
        save=save,
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
        (line(body={"messages": []}), "missing_required_parameter", "body.model"),
        (line(body={"model": 5}), "invalid_type", "body.model"),
        (line(body={"model": "other"}), "mismatched_model", "body.model"),
        (line(body={"model": "m", "stream": True}), "streaming_unsupported", "body.stream"),
        (line("first"), "duplicate_custom_id", "custom_id"),
        # What is stored of a line must be text: no lone surrogate (no UTF-8 encodes one, and
        # the custom_id is hashed as UTF-8), no NUL (PostgreSQL's text refuses it).
        (line("\ud800"), "invalid_value", "custom_id"),
        (line("a\x00"), "invalid_value", "custom_id"),
        (line(body={"model": "\udfff"}), "invalid_value", "body.model"),
        (line(body={"model": "m\x00"}), "invalid_value", "body.model"),
    ],
)
async def test_each_failure_names_its_line(bad: bytes, code: str, param: str | None) -> None:
    errors, _, _ = await check([line("first"), b"", line("second"), bad, line("last")])
    assert [(e["code"], e["line"], e["param"]) for e in errors] == [(code, 4, param)]
    assert errors[0]["message"]


async def test_the_messages_are_openais() -> None:
    errors, _, _ = await check([b"nope", line("a", url="/v1/x"), line("a")])
    assert errors[0]["message"] == "This line is not parseable as valid JSON."
    assert errors[1]["message"].startswith(
        "The URL provided for this request does not match the batch endpoint"
    )
    assert errors[2]["message"].startswith(
        "The custom_id for this request is a duplicate of another request."
    )


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
