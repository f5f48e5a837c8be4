"""The OpenAI `batch` object of a stored batch, and the pieces of output lines."""

from __future__ import annotations

import json
from typing import Any

from ..models import BatchRecord
from ..objects import BatchObject
from . import states

# Every endpoint OpenAI's API lists for batches (openai-python's `batches.create`).
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/responses",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
COMPLETION_WINDOWS = ("24h",)
WINDOW_SECONDS = {"24h": 24 * 3600}
# OpenAI's default expiry of a batch's output and error files: 30 days.
OUTPUT_EXPIRES_AFTER = 30 * 24 * 3600
# Tokens one request is counted for at most, each kind: ~1,000 times the longest context of
# any model, so only a broken upstream's count is cut. The sums of a batch are a database's
# int64 (beyond it SQLite turns them into floats, PostgreSQL refuses the write): at this cap
# they stay exact (below 2**53, JavaScript's integers) up to 4 million requests, and within
# an int64 up to 4 billion, more than any input file holds.
MAX_TOKENS = 2**31 - 1


def as_batch_object(batch: BatchRecord) -> BatchObject:
    """The OpenAI `batch` object (every field of openai-python's `types.Batch`)."""
    finished = batch.status in states.FINAL
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": json.loads(batch.errors) if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id if finished else None,
        "error_file_id": batch.error_file_id if finished else None,
        "created_at": batch.created_at,
        "in_progress_at": batch.in_progress_at,
        "expires_at": batch.expires_at,
        "finalizing_at": batch.finalizing_at,
        "completed_at": batch.completed_at,
        "failed_at": batch.failed_at,
        "expired_at": batch.expired_at,
        "cancelling_at": batch.cancelling_at,
        "cancelled_at": batch.cancelled_at,
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "usage": {
            "input_tokens": batch.input_tokens,
            "input_tokens_details": {"cached_tokens": batch.cached_tokens},
            "output_tokens": batch.output_tokens,
            "output_tokens_details": {"reasoning_tokens": batch.reasoning_tokens},
            "total_tokens": batch.input_tokens + batch.output_tokens,
        },
        "metadata": json.loads(batch.metadata) if batch.metadata else None,
    }


def errors_json(errors: list[dict[str, Any]]) -> str:
    """The `errors` of a failed batch, as stored: OpenAI's `{"object": "list", "data"}`."""
    return json.dumps({"object": "list", "data": errors})


def usage_of(body: object) -> tuple[int, int, int, int]:
    """(input, output, cached input, reasoning) tokens of a response body's `usage`, whichever
    endpoint's names it uses (chat/completions/embeddings: prompt_/completion_tokens;
    responses: input_/output_tokens): each an int from 0 to MAX_TOKENS, whatever was sent
    (what is no count, a float or a negative number, counts 0)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return (0, 0, 0, 0)
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    taken = usage.get("completion_tokens", usage.get("output_tokens"))
    in_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    cached = in_details.get("cached_tokens") if isinstance(in_details, dict) else 0
    reasoning = out_details.get("reasoning_tokens") if isinstance(out_details, dict) else 0
    return (_count(given), _count(taken), _count(cached), _count(reasoning))


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return 0
    return min(value, MAX_TOKENS)
