"""The objects filesd answers with, as declared types: OpenAI's shapes (openai-python's types are
the judge), written once.

Each is a TypedDict: building one is building a dict (no cost on the hot path), mypy checks
every place that builds one against it, and the OpenAPI document's schemas are generated from
them (`api/openapi.py`), so what is documented is what is typed. Plain types, no I/O.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic reads TypedDicts of 3.12 on 3.11 from here

# An object's schema refuses properties it does not declare.
_CLOSED = ConfigDict(extra="forbid")
# Sizes and counts.
Count = Annotated[int, Field(ge=0)]


@with_config(_CLOSED)
class FileObject(TypedDict):
    """OpenAI's `file` object."""

    id: str
    object: Literal["file"]
    bytes: Count
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed", "error"]
    status_details: str | None
    expires_at: int | None


@with_config(_CLOSED)
class FileList(TypedDict):
    """A page of files: OpenAI's `list` object, with filesd's `total` (every live match)."""

    object: Literal["list"]
    data: list[FileObject]
    total: Count
    has_more: bool
    first_id: str | None
    last_id: str | None


@with_config(_CLOSED)
class FileDeleted(TypedDict):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


@with_config(_CLOSED)
class UploadObject(TypedDict):
    """OpenAI's `upload` object; `file` is set once it is completed."""

    id: str
    object: Literal["upload"]
    bytes: Count
    created_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    expires_at: int
    file: FileObject | None


@with_config(_CLOSED)
class UploadPartObject(TypedDict):
    id: str
    object: Literal["upload.part"]
    created_at: int
    upload_id: str


class BatchError(TypedDict):
    """One problem of a batch's input (OpenAI's `BatchError`): the line it is on, if any."""

    code: str | None
    message: str | None
    param: str | None
    line: int | None


class BatchErrors(TypedDict):
    object: Literal["list"]
    data: list[BatchError]


@with_config(_CLOSED)
class BatchRequestCounts(TypedDict):
    total: Count
    completed: Count
    failed: Count


class InputTokensDetails(TypedDict):
    cached_tokens: Count


class OutputTokensDetails(TypedDict):
    reasoning_tokens: Count


class BatchUsage(TypedDict):
    input_tokens: Count
    input_tokens_details: InputTokensDetails
    output_tokens: Count
    output_tokens_details: OutputTokensDetails
    total_tokens: Count


BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]


@with_config(_CLOSED)
class BatchObject(TypedDict):
    """OpenAI's `batch` object (every field of openai-python's `types.Batch`)."""

    id: str
    object: Literal["batch"]
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None


@with_config(_CLOSED)
class BatchList(TypedDict):
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


@with_config(_CLOSED)
class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


@with_config(_CLOSED)
class Error(TypedDict):
    """OpenAI's error envelope, for every status."""

    error: ErrorDetail
