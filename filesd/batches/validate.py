"""Validation of a batch's input file, as OpenAI does it, streamed line by line.

Each line must be a JSON object with a unique `custom_id`, `method` "POST", a `url` equal to
the batch's endpoint and a `body` object naming a `model` the batch may use (`knows_model`)
and holding the fields its endpoint requires (`BODY_REQUIRES`); one model per file; the
`custom_id` and the `model`, which are stored, must be text (no NUL, no lone surrogate), the
`model` at most MODEL_CHARS long; at most `max_requests` requests. A file with problems fails
the batch with `errors.data` naming each line and problem (`code`, `message`, `param`,
`line`), up to MAX_ERRORS of them; a message quotes a value of the file only `quoted` (cut
short), since the batch stores its errors.

Memory stays bounded whatever the file: one line at a time, the request rows handed on in
chunks, and custom_ids remembered as 16-byte digests (at most `max_requests` of them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..values import quoted, text_refusal, too_long
from .lines import LineTooLong, numbered_lines

# Errors reported at most (the first ones, by line).
MAX_ERRORS = 100
# Request rows handed to `save` at once.
CHUNK = 1000
# A line (one request) may be at most this large: it is held in memory to be parsed.
MAX_LINE_BYTES = 32 * 1024 * 1024
# The longest `body.model` taken: it is stored as the batch's model (real names are tens of
# characters).
MODEL_CHARS = 256

# The field each endpoint's body must hold besides `model` (the parameter openai-python's types
# mark `Required`), and the fields that may stand in for it: a Response's input may come from
# a stored prompt, or from the response or conversation it continues.
BODY_REQUIRES: dict[str, tuple[str, tuple[str, ...]]] = {
    "/v1/chat/completions": ("messages", ()),
    "/v1/completions": ("prompt", ()),
    "/v1/embeddings": ("input", ()),
    "/v1/responses": ("input", ("prompt", "previous_response_id", "conversation")),
    "/v1/moderations": ("input", ()),
    "/v1/images/generations": ("prompt", ()),
    "/v1/images/edits": ("prompt", ()),
    "/v1/videos": ("prompt", ()),
}
# How OpenAI names each endpoint's API at the head of a message ("Chat Completions: ...").
API_NAMES: dict[str, str] = {
    "/v1/chat/completions": "Chat Completions",
    "/v1/completions": "Completions",
    "/v1/embeddings": "Embeddings",
    "/v1/responses": "Responses",
    "/v1/moderations": "Moderations",
    "/v1/images/generations": "Images",
    "/v1/images/edits": "Images",
    "/v1/videos": "Videos",
}

KnowsModel = Callable[[str], Awaitable[bool]]


@dataclass
class Validation:
    """What validation found: the errors (OpenAI's BatchError objects), else the number of
    requests and their one model."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    model: str | None = None


def batch_error(
    code: str, message: str, *, line: int | None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


class _Checker:
    def __init__(self, endpoint: str, max_requests: int) -> None:
        self.endpoint = endpoint
        self.max_requests = max_requests
        self.result = Validation()
        self.seen: set[bytes] = set()
        # The model of the line checked last, if it names the file's model.
        self.line_model: str | None = None

    def error(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        self.result.errors.append(batch_error(code, message, line=line, param=param))

    def check(self, number: int, raw: bytes) -> str | None:
        """The custom_id of a valid request line, else None (its errors noted)."""
        self.line_model = None
        try:
            request = json.loads(raw)
        except (ValueError, RecursionError):
            self.error("invalid_json_line", "This line is not parseable as valid JSON.", number)
            return None
        if not isinstance(request, dict):
            self.error(
                "invalid_json_line",
                "This line is not a JSON object: each line must hold one request object.",
                number,
            )
            return None
        before = len(self.result.errors)
        for name in ("custom_id", "method", "url", "body"):
            if request.get(name) is None:
                self.error(
                    "missing_required_parameter",
                    f"Missing required parameter: '{name}'.",
                    number,
                    name,
                )
        custom_id, method, url, body = (
            request.get(k) for k in ("custom_id", "method", "url", "body")
        )
        if custom_id is not None and not isinstance(custom_id, str):
            self.error(
                "invalid_type",
                "Invalid type for 'custom_id': expected a string.",
                number,
                "custom_id",
            )
        if isinstance(custom_id, str) and not self._is_text(number, custom_id, "custom_id"):
            custom_id = None  # no further look: it cannot even be hashed (a lone surrogate)
        if method is not None and method != "POST":
            self.error(
                "invalid_method",
                f"Invalid value for 'method': {quoted(method)}. Only 'POST' is supported.",
                number,
                "method",
            )
        if url is not None and url != self.endpoint:
            self.error(
                "invalid_url",
                "The URL provided for this request does not match the batch endpoint.",
                number,
                "url",
            )
        if body is not None and not isinstance(body, dict):
            self.error(
                "invalid_type", "Invalid type for 'body': expected an object.", number, "body"
            )
        if isinstance(body, dict):
            self._check_body(number, body)
        if isinstance(custom_id, str):
            digest = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()
            if digest in self.seen:
                self.error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. The "
                    "custom_id parameter must be unique for each request in a batch.",
                    number,
                    "custom_id",
                )
            self.seen.add(digest)
        if len(self.result.errors) > before or not isinstance(custom_id, str):
            return None
        return custom_id

    def _is_text(self, number: int, value: str, param: str) -> bool:
        """Whether `value` is text the databases can store, else False (its error noted)."""
        message = text_refusal(value, param)
        if message is not None:
            self.error("invalid_value", message, number, param)
        return message is None

    def _check_body(self, number: int, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is None:
            self._missing(number, "model")
        elif not isinstance(model, str):
            self.error(
                "invalid_type",
                "Invalid type for 'body.model': expected a string.",
                number,
                "body.model",
            )
        elif not self._is_text(number, model, "body.model"):
            pass  # never the batch's model: it is stored
        elif len(model) > MODEL_CHARS:
            self.error(
                "invalid_value",
                too_long("body.model", MODEL_CHARS, len(model)),
                number,
                "body.model",
            )
        elif self.result.model is None:
            self.result.model = self.line_model = model
        elif model == self.result.model:
            self.line_model = model
        else:
            self.error(
                "mismatched_model",
                f"The model of this request ({quoted(model)}) differs from the model of the "
                f"requests before it ({quoted(self.result.model)}): a batch uses one model.",
                number,
                "body.model",
            )
        required, stand_ins = BODY_REQUIRES.get(self.endpoint, ("", ()))
        if required and all(body.get(name) is None for name in (required, *stand_ins)):
            self._missing(number, required)
        if body.get("stream") is True:
            self.error(
                "streaming_unsupported",
                f"{API_NAMES.get(self.endpoint, 'This API')}: Streaming is not supported in "
                "the Batch API.",
                number,
                "body.stream",
            )

    def _missing(self, number: int, name: str) -> None:
        """A field the body must hold is absent (or null): OpenAI's "Model parameter is
        required." for `model`, and in its words for the others."""
        self.error(
            "invalid_request",
            f"{name.capitalize()} parameter is required.",
            number,
            f"body.{name}",
        )


async def validate_input(
    chunks: AsyncIterator[bytes],
    *,
    endpoint: str,
    max_requests: int,
    save: Callable[[Sequence[tuple[int, str]]], Awaitable[None]],
    knows_model: KnowsModel,
    stopped: Callable[[], bool] = lambda: False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Validation:
    """Check every line of the input; the valid requests (line, custom_id) go to `save` in
    chunks as long as no error has been found (the caller discards them if errors follow).
    `knows_model(model)` says whether the file's model may be used (asked once); an unknown
    one is `model_not_found` on the first line naming it. Returns early (with what it has)
    once `stopped()` is true."""
    checker = _Checker(endpoint, max_requests)
    result = checker.result
    model_known: bool | None = None
    rows: list[tuple[int, str]] = []
    lines = numbered_lines(chunks, max_line_bytes=max_line_bytes)
    try:
        async with contextlib.aclosing(lines):
            async for number, raw in lines:
                if not raw.strip():
                    continue
                if result.total >= max_requests:
                    checker.error(
                        "too_many_requests",
                        f"The input file holds more than {max_requests} requests, the most a "
                        "batch may have.",
                        number,
                    )
                    break
                result.total += 1
                custom_id = checker.check(number, raw)
                if checker.line_model is not None and model_known is None:
                    model_known = await knows_model(checker.line_model)
                    if not model_known:
                        checker.error(
                            "model_not_found",
                            f"The provided model {quoted(checker.line_model)} is not supported "
                            "by the Batch API.",
                            number,
                            "body.model",
                        )
                        custom_id = None
                if custom_id is not None and not result.errors:
                    rows.append((number, custom_id))
                    if len(rows) >= CHUNK:
                        await save(rows)
                        rows = []
                        if stopped():
                            return result
                if len(result.errors) >= MAX_ERRORS:
                    break
    except LineTooLong as error:
        checker.error(
            "line_too_long",
            f"This line is longer than {error.limit} bytes, the most one request may be.",
            error.line,
        )
    if rows and not result.errors:
        await save(rows)
    if not result.errors and result.total == 0:
        checker.error("empty_file", "The input file holds no requests.", None)
    del result.errors[MAX_ERRORS:]
    return result
