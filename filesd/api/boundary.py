"""The error boundary: where every exception becomes an answer in OpenAI's envelope.

One table maps exception classes to the error the client sees. The class of an exception is
looked up along its MRO, most specific first (as Starlette does), so a subclass can have its own
entry and anything else falls back to its base's. An exception found nowhere is a bug: logged
with its traceback, answered with a 500 that quotes the request id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from ..services.archive import ArchiveError
from ..services.errors import (
    BatchesDisabled,
    BatchNotCancellable,
    BatchNotFound,
    BlobMissing,
    CursorNotFound,
    DuplicatePart,
    EmptyPart,
    FileIdTaken,
    FileNotFound,
    FileTooLarge,
    ImportConflict,
    InputFileWrongPurpose,
    Md5Mismatch,
    PartExceedsUpload,
    PartsSizeMismatch,
    PartTooLarge,
    QuotaExceeded,
    StorageBusy,
    StorageFull,
    StorageUnavailable,
    TooManyParts,
    UnknownPart,
    UploadNotFound,
    UploadNotPending,
    is_storage_full,
)
from .errors import (
    REQUEST_ID,
    STARTED,
    ApiError,
    InsufficientStorage,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    error_response,
    invalid_url,
    new_request_id,
)

log = logging.getLogger(__name__)

Mapper = Callable[[web.Request, Any], ApiError]


def _storage_full(request: web.Request, exc: BaseException) -> ApiError:
    log.error("storage full in %s %s: %s", request.method, request.path, exc)
    return InsufficientStorage(
        "The server has no room left to store this file. Try again later.",
        code="insufficient_storage",
    )


def _storage_unavailable(request: web.Request, exc: StorageUnavailable) -> ApiError:
    log.error("storage unavailable in %s %s: %s", request.method, request.path, exc)
    return ServiceUnavailable(
        "The server's storage is unreachable. Retry shortly.",
        code="storage_unavailable",
        headers={"Retry-After": "1"},
    )


def _storage_busy(request: web.Request, exc: StorageBusy) -> ApiError:
    log.error("database busy in %s %s: %s", request.method, request.path, exc)
    return ServiceUnavailable(
        "The server's database is busy. Retry shortly.",
        code="database_busy",
        headers={"Retry-After": "1"},
    )


def _os_error(request: web.Request, exc: OSError) -> ApiError:
    # The storage reports a full disk as StorageFull; this catches one met anywhere else.
    if is_storage_full(exc):
        return _storage_full(request, exc)
    return unexpected(request, exc)


def _http_processing(request: web.Request, exc: HttpProcessingError) -> ApiError:
    # aiohttp's parsers: malformed multipart headers, truncated or mis-encoded bodies.
    status = exc.code if 400 <= exc.code < 500 else 400
    return ApiError(f"Malformed request: {exc.message}", status=status)


def _blob_missing(request: web.Request, exc: BlobMissing) -> ApiError:
    what = f"file {exc.file_id}" if exc.file_id else "a file"
    return ServerError(
        f"The content of {what} is missing from storage; run `filesd fsck` on the server.",
        code="blob_missing",
    )


ERRORS: dict[type[BaseException], Mapper] = {
    ApiError: lambda request, exc: exc,
    # the store and the storage
    FileNotFound: lambda request, exc: NotFound(f"No such File object: {exc.file_id}", param="id"),
    CursorNotFound: lambda request, exc: InvalidRequest(
        f"No such File object: {exc.file_id}", param="after"
    ),
    FileTooLarge: lambda request, exc: PayloadTooLarge(
        f"File is too large: the maximum size is {exc.limit} bytes.",
        param="file",
        code="file_too_large",
    ),
    QuotaExceeded: lambda request, exc: InvalidRequest(
        f"Quota exceeded: project {exc.project!r} may hold at most {exc.limit} {exc.what}.",
        code="quota_exceeded",
    ),
    ArchiveError: lambda request, exc: InvalidRequest(f"Cannot import: {exc}"),
    ImportConflict: lambda request, exc: ApiError(
        f"Cannot import: {exc}", code="conflict", status=409
    ),
    # The taken id may be another project's file: only the log names it (see the store).
    FileIdTaken: lambda request, exc: ServerError(
        "A file id this server made is taken already; nothing was stored. Retry the request.",
        code="file_id_taken",
    ),
    BlobMissing: _blob_missing,
    StorageFull: _storage_full,
    StorageBusy: _storage_busy,
    StorageUnavailable: _storage_unavailable,
    OSError: _os_error,
    # the Uploads API
    UploadNotFound: lambda request, exc: NotFound(
        f"No such Upload object: {exc.upload_id}", param="upload_id"
    ),
    UploadNotPending: lambda request, exc: InvalidRequest(
        f"Upload {exc.upload_id} is {exc.status}: only a pending upload accepts parts, "
        "completion or cancellation."
    ),
    UnknownPart: lambda request, exc: InvalidRequest(
        f"No such Part object: {exc.part_id}", param="part_ids"
    ),
    DuplicatePart: lambda request, exc: InvalidRequest(
        f"Part {exc.part_id} is listed more than once.", param="part_ids"
    ),
    PartsSizeMismatch: lambda request, exc: InvalidRequest(
        f"The parts hold {exc.actual} bytes, but the upload was created with bytes={exc.expected}.",
        param="part_ids",
    ),
    Md5Mismatch: lambda request, exc: InvalidRequest(
        f"The MD5 checksum of the parts ({exc.actual}) does not match the md5 given "
        f"({exc.expected})."
        + (
            f" The upload was cancelled after {exc.tries} checksum mismatches: create a new upload."
            if exc.cancelled
            else ""
        ),
        param="md5",
    ),
    EmptyPart: lambda request, exc: InvalidRequest(
        "The part is empty: a part must hold at least 1 byte.", param="data"
    ),
    PartTooLarge: lambda request, exc: InvalidRequest(
        f"The part is too large: a part holds at most {exc.limit} bytes.",
        param="data",
        code="part_too_large",
    ),
    TooManyParts: lambda request, exc: InvalidRequest(
        f"The upload has {exc.limit} parts already, the most an upload may have: complete it "
        "with the parts it has, or send larger parts to a new upload.",
        param="data",
    ),
    PartExceedsUpload: lambda request, exc: InvalidRequest(
        f"The part is too large for this upload: with its {exc.size} bytes the parts would "
        f"hold more than the {exc.declared} bytes the upload was created with.",
        param="data",
        code="part_exceeds_upload",
    ),
    # the Batch API
    BatchesDisabled: lambda request, exc: InvalidRequest(str(exc), code="batches_disabled"),
    BatchNotFound: lambda request, exc: (
        InvalidRequest(f"No such Batch object: {exc.batch_id}", param="after")
        if exc.param == "after"
        else NotFound(f"No such Batch object: {exc.batch_id}", param="batch_id")
    ),
    InputFileWrongPurpose: lambda request, exc: InvalidRequest(
        f"The input file {exc.file_id} has purpose '{exc.purpose}': a batch's input file must "
        "be uploaded with purpose 'batch'.",
        param="input_file_id",
        code="invalid_value",
    ),
    # OpenAI's words, and its code: none.
    BatchNotCancellable: lambda request, exc: ApiError(
        f"Cannot cancel a batch with status '{exc.status}'.", status=409
    ),
    # aiohttp
    web.HTTPMethodNotAllowed: lambda request, exc: MethodNotAllowed(
        f"Invalid method for URL ({request.method} {request.path})",
        headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
    ),
    web.HTTPNotFound: lambda request, exc: invalid_url(request),
    web.HTTPRequestEntityTooLarge: lambda request, exc: PayloadTooLarge(
        f"Request body is too large: {exc.text}"
    ),
    web.HTTPException: lambda request, exc: ApiError(exc.reason, status=exc.status),
    HttpProcessingError: _http_processing,
}


def to_api_error(request: web.Request, exc: BaseException) -> ApiError:
    """The error the client sees for `exc`: the table's entry for the nearest class."""
    for cls in type(exc).__mro__:
        mapper = ERRORS.get(cls)
        if mapper is not None:
            return mapper(request, exc)
    return unexpected(request, exc)


def unexpected(request: web.Request, exc: BaseException) -> ApiError:
    log.error(
        "unhandled error in %s %s (request %s)",
        request.method,
        request.path,
        request.get(REQUEST_ID),
        exc_info=exc,
    )
    return ServerError(
        "The server had an error while processing your request. Sorry about that! "
        f"Quote the request id {request.get(REQUEST_ID)} when reporting it."
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id and turn every exception into an enveloped error response."""
    request[REQUEST_ID] = new_request_id()
    request[STARTED] = time.monotonic()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(to_api_error(request, exc))
    except Exception as exc:
        return error_response(to_api_error(request, exc))
