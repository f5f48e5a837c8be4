"""The records the store hands out: plain data, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import quote

from .objects import BatchStatus, FileList, FileObject, UploadObject, UploadPartObject

# A file is `processed` once stored, `error` once marked damaged (by fsck).
FileStatus = Literal["processed", "error"]
# An upload: `completing` while a completion joins its parts (shown as pending).
UploadStatus = Literal["pending", "completing", "completed", "cancelled", "expired"]
_SHOWN_UPLOAD_STATUS: dict[
    UploadStatus, Literal["pending", "completed", "cancelled", "expired"]
] = {
    "pending": "pending",
    "completing": "pending",
    "completed": "completed",
    "cancelled": "cancelled",
    "expired": "expired",
}


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / RFC 8187): the
    header of a download, whether filesd sends the bytes or a presigned URL of the bucket does."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='!#$&+^`|~')}"
    return value


@dataclass(frozen=True)
class FileRecord:
    """One file of one project, as stored. `sha256` names the blob holding its bytes."""

    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: int
    expires_at: int | None
    status: FileStatus = "processed"
    status_details: str | None = None

    @classmethod
    def from_row(cls, row: Iterable[Any]) -> FileRecord:
        """A record from a database row of its fields in order (all ten), trusted as typed.

        The frozen dataclass's `__init__` sets each field through `object.__setattr__`
        (~1.2 µs a record, 25 µs of a list page of 20); filling the instance's dict at once
        costs ~0.3 µs. The record is as frozen afterwards as any other.
        """
        record = cls.__new__(cls)
        record.__dict__.update(zip(_FILE_FIELDS, row))  # noqa: B905 (a row has them all)
        return record

    def as_file_object(self) -> FileObject:
        """The OpenAI `file` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "status_details": self.status_details,
            "expires_at": self.expires_at,
        }


_FILE_FIELDS = tuple(f.name for f in fields(FileRecord))


@dataclass(frozen=True)
class FilePage:
    """One page of a listing; `total` counts every live match, whatever the page."""

    files: list[FileRecord]
    total: int
    has_more: bool

    def as_list_object(self) -> FileList:
        """The OpenAI `list` object."""
        return {
            "object": "list",
            "data": [f.as_file_object() for f in self.files],
            "total": self.total,
            "has_more": self.has_more,
            "first_id": self.files[0].id if self.files else None,
            "last_id": self.files[-1].id if self.files else None,
        }


@dataclass(frozen=True)
class UploadRecord:
    """An upload in parts. `status`: pending, completing, completed, cancelled or expired."""

    id: str
    project: str
    filename: str
    purpose: str
    mime_type: str
    bytes: int
    created_at: int
    expires_at: int
    file_expires_after: int | None
    status: UploadStatus
    file_id: str | None = None

    def as_upload_object(self, file: FileRecord | None = None) -> UploadObject:
        """The OpenAI `upload` object; a `completing` upload still shows as pending."""
        return {
            "id": self.id,
            "object": "upload",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": _SHOWN_UPLOAD_STATUS[self.status],
            "expires_at": self.expires_at,
            "file": file.as_file_object() if file is not None else None,
        }


@dataclass(frozen=True)
class PartRecord:
    """A part of an upload; its bytes are in the parts area under `token`."""

    id: str
    upload_id: str
    token: str
    bytes: int
    created_at: int

    def as_part_object(self) -> UploadPartObject:
        return {
            "id": self.id,
            "object": "upload.part",
            "created_at": self.created_at,
            "upload_id": self.upload_id,
        }


@dataclass(frozen=True)
class KeyRecord:
    """An API key made with `filesd keys create`: only the SHA-256 of the secret is kept."""

    id: str
    key_sha256: str
    project: str
    hint: str
    created_at: int
    revoked_at: int | None = None


@dataclass(frozen=True)
class ProjectUsage:
    """A project's live files, their bytes, and the bytes of the distinct blobs they use."""

    project: str
    files: int
    bytes: int
    physical_bytes: int


@dataclass(frozen=True)
class StorageTotals:
    """Live files and their bytes (logical); distinct blobs they use and those bytes."""

    files: int
    logical_bytes: int
    blobs: int
    physical_bytes: int


@dataclass(frozen=True)
class BatchRecord:
    """One batch of one project, as stored. `metadata` and `errors` are JSON text (or None);
    `expires_at` is the end of its completion window. The counts and token sums grow as
    results are recorded (`record_batch_results`), in the same transaction as the results."""

    id: str
    project: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    metadata: str | None = None
    output_expires_after: int | None = None
    model: str | None = None
    errors: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one request of a batch: its input line, whether it succeeded (`ok`: into
    the output file, else the error file), the output line (JSON text) and the tokens it used
    (input, output, cached input, reasoning)."""

    line: int
    ok: bool
    result: str
    usage: tuple[int, int, int, int] = (0, 0, 0, 0)
