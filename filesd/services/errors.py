"""What the services refuse, as plain exceptions: one place for every caller to look.

The API's error boundary turns each into OpenAI's envelope and the command line into its
words and exit codes; neither reaches below the services for them. The storage's neutral
errors, which the services let through unchanged, are named here too.
"""

from __future__ import annotations

from ..storage.base import (
    BlobMissing,
    SchemaTooNew,
    StorageBusy,
    StorageFull,
    StorageUnavailable,
    is_storage_full,
)
from ..storage.opening import DatabaseMissing, DataDirLocked

__all__ = [
    "BatchNotCancellable",
    "BatchNotFound",
    "BatchesDisabled",
    "BlobMissing",
    "CompletionAbandoned",
    "CursorNotFound",
    "DataDirLocked",
    "DatabaseMissing",
    "DuplicatePart",
    "EmptyPart",
    "FileIdTaken",
    "FileNotFound",
    "FileTooLarge",
    "ImportConflict",
    "InputFileWrongPurpose",
    "Md5Mismatch",
    "MigrationError",
    "NotOnTheseBackends",
    "PartExceedsUpload",
    "PartTooLarge",
    "PartsSizeMismatch",
    "QuotaExceeded",
    "SchemaTooNew",
    "StorageBusy",
    "StorageFull",
    "StorageUnavailable",
    "TooManyParts",
    "UnknownPart",
    "UploadNotFound",
    "UploadNotPending",
    "is_storage_full",
]


# --- files ---------------------------------------------------------------------------------


class FileNotFound(Exception):
    """No live file with this id in this project (another project's file is not found too)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(file_id)
        self.file_id = file_id


class CursorNotFound(Exception):
    """The `after` cursor names no file of this project."""

    def __init__(self, file_id: str) -> None:
        super().__init__(file_id)
        self.file_id = file_id


class FileTooLarge(Exception):
    """The content is larger than a file may be (`[limits] max_file_bytes`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"content exceeds {limit} bytes")
        self.limit = limit


class QuotaExceeded(Exception):
    """Storing the file would take the project over one of its quotas; nothing was stored."""

    def __init__(self, project: str, what: str, limit: int) -> None:
        super().__init__(f"project {project!r} may hold at most {limit} {what}")
        self.project = project
        self.what = what
        self.limit = limit


class FileIdTaken(Exception):
    """The id made for a new file belongs to a stored file already; nothing was stored."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"file id {file_id} is taken already")
        self.file_id = file_id


class CompletionAbandoned(Exception):
    """The upload this file was to complete was settled meanwhile by another instance (this
    one looked dead): the file was not stored."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"the completion making file {file_id} was settled by another instance")
        self.file_id = file_id


class ImportConflict(Exception):
    """Files with these ids exist already; nothing was imported."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"{len(ids)} file id(s) exist already, e.g. {ids[0]}")
        self.ids = ids


class MigrationError(Exception):
    """The source's data cannot be copied as it is; nothing of the batch was stored."""


class NotOnTheseBackends(Exception):
    """An operator command cannot work on the configured backends; the message says what to
    use instead."""


# --- uploads -------------------------------------------------------------------------------


class UploadNotFound(Exception):
    def __init__(self, upload_id: str) -> None:
        super().__init__(upload_id)
        self.upload_id = upload_id


class UploadNotPending(Exception):
    """The upload is completed, cancelled or expired (or being completed)."""

    def __init__(self, upload_id: str, status: str) -> None:
        super().__init__(f"{upload_id} is {status}")
        self.upload_id = upload_id
        self.status = status


class UnknownPart(Exception):
    def __init__(self, part_id: str) -> None:
        super().__init__(part_id)
        self.part_id = part_id


class DuplicatePart(Exception):
    def __init__(self, part_id: str) -> None:
        super().__init__(part_id)
        self.part_id = part_id


class PartsSizeMismatch(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"parts hold {actual} bytes, the upload declared {expected}")
        self.expected = expected
        self.actual = actual


class EmptyPart(Exception):
    """The part holds no bytes (each part costs a file, an fsync and a row: none are free)."""


class PartTooLarge(Exception):
    """The part is larger than a part may be (`[limits] max_part_bytes`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a part holds at most {limit} bytes")
        self.limit = limit


class TooManyParts(Exception):
    """The upload has as many parts as an upload may have already."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an upload may have at most {limit} parts")
        self.limit = limit


class PartExceedsUpload(Exception):
    """The part would take the upload's parts past the bytes it was created with."""

    def __init__(self, declared: int, size: int) -> None:
        super().__init__(f"a part of {size} bytes would take the parts past {declared} bytes")
        self.declared = declared
        self.size = size


class Md5Mismatch(Exception):
    """The parts' MD5 is not the one given. `cancelled`: that was the upload's last try (of
    `tries`)."""

    def __init__(
        self, expected: str, actual: str, *, cancelled: bool = False, tries: int = 0
    ) -> None:
        super().__init__(f"md5 {actual} does not match {expected}")
        self.expected = expected
        self.actual = actual
        self.cancelled = cancelled
        self.tries = tries


# --- batches -------------------------------------------------------------------------------

DISABLED_MESSAGE = (
    "The Batch API is off on this server: no upstream is configured. Set [batches] upstream "
    'in filesd.toml to "echo" (a built-in deterministic model, for tests) or to the base URL '
    'of an OpenAI-compatible API (e.g. "http://127.0.0.1:11434/v1" for Ollama, '
    '"http://127.0.0.1:8000/v1" for vLLM), then restart filesd.'
)


class BatchesDisabled(Exception):
    """No `[batches] upstream` is configured."""

    def __init__(self) -> None:
        super().__init__(DISABLED_MESSAGE)


class BatchNotFound(Exception):
    """No batch of that id in the caller's project (another project's is answered the same)."""

    def __init__(self, batch_id: str, param: str = "batch_id") -> None:
        super().__init__(f"no batch {batch_id}")
        self.batch_id = batch_id
        self.param = param


class InputFileWrongPurpose(Exception):
    def __init__(self, file_id: str, purpose: str) -> None:
        super().__init__(f"file {file_id} has purpose {purpose}")
        self.file_id = file_id
        self.purpose = purpose


class BatchNotCancellable(Exception):
    """The batch has finished (or is finishing) already."""

    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(f"batch {batch_id} is {status}")
        self.batch_id = batch_id
        self.status = status
