"""API errors in OpenAI's envelope, and the one boundary where everything else becomes one.

Every error response, whatever raised it (a handler, the store, aiohttp's router or body limits,
an unexpected bug), is `{"error": {"message", "type", "param", "code"}}` with
`Content-Type: application/json`. Every response carries `x-request-id`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import sqlite3
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam
from aiohttp.typedefs import Handler

from .archive import ArchiveError
from .store import (
    BlobMissing,
    BlobTooLarge,
    CursorNotFound,
    FileNotFound,
    ImportConflict,
    QuotaExceeded,
)
from .uploads import (
    DuplicatePart,
    Md5Mismatch,
    PartsSizeMismatch,
    UnknownPart,
    UploadNotFound,
    UploadNotPending,
)

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)
# The API version OpenAI reports in its `openai-version` header.
OPENAI_VERSION = "2020-10-01"


def new_request_id() -> str:
    """`req_` and 32 hex digits. Request ids correlate logs and reports; they are not secrets,
    so a fast PRNG serves (a urandom syscall per request showed in profiles)."""
    return f"req_{random.getrandbits(128):032x}"


class ApiError(Exception):
    """An error the client sees. Subclasses fix the status and the OpenAI error type."""

    status = 400
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


class InvalidRequest(ApiError):
    status = 400


class AuthenticationFailed(ApiError):
    status = 401


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class PayloadTooLarge(ApiError):
    status = 413


class RangeNotSatisfiable(ApiError):
    status = 416


class ServerError(ApiError):
    status = 500
    type = "server_error"


class TooManyRequests(ApiError):
    status = 429
    type = "requests"


class RequestTimeout(ApiError):
    status = 408


class ServiceUnavailable(ApiError):
    status = 503
    type = "server_error"


class InsufficientStorage(ApiError):
    status = 507
    type = "server_error"


def error_response(error: ApiError) -> web.Response:
    body = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    return web.json_response(body, status=error.status, headers=error.headers)


def file_not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="id")


def file_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File is too large: the maximum size is {limit} bytes.",
        param="file",
        code="file_too_large",
    )


def _from_exception(request: web.Request, exc: Exception) -> ApiError:
    """Map anything raised below the HTTP layer to the error the client sees."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, FileNotFound):
        return file_not_found(exc.file_id)
    if isinstance(exc, CursorNotFound):
        return InvalidRequest(f"No such File object: {exc.file_id}", param="after")
    if isinstance(exc, BlobTooLarge):
        return file_too_large(exc.limit)
    if isinstance(exc, ArchiveError):
        return InvalidRequest(f"Cannot import: {exc}")
    if isinstance(exc, ImportConflict):
        return ApiError(f"Cannot import: {exc}", code="conflict", status=409)
    if isinstance(exc, QuotaExceeded):
        return InvalidRequest(
            f"Quota exceeded: project {exc.project!r} may hold at most {exc.limit} {exc.what}.",
            code="quota_exceeded",
        )
    if isinstance(exc, UploadNotFound):
        return NotFound(f"No such Upload object: {exc.upload_id}", param="upload_id")
    if isinstance(exc, UploadNotPending):
        return InvalidRequest(
            f"Upload {exc.upload_id} is {exc.status}: only a pending upload accepts parts, "
            "completion or cancellation."
        )
    if isinstance(exc, UnknownPart):
        return InvalidRequest(f"No such Part object: {exc.part_id}", param="part_ids")
    if isinstance(exc, DuplicatePart):
        return InvalidRequest(f"Part {exc.part_id} is listed more than once.", param="part_ids")
    if isinstance(exc, PartsSizeMismatch):
        return InvalidRequest(
            f"The parts hold {exc.actual} bytes, but the upload was created with "
            f"bytes={exc.expected}.",
            param="part_ids",
        )
    if isinstance(exc, Md5Mismatch):
        return InvalidRequest(
            f"The MD5 checksum of the parts ({exc.actual}) does not match the md5 given "
            f"({exc.expected}).",
            param="md5",
        )
    if isinstance(exc, BlobMissing):
        return ServerError(
            f"The content of file {exc.record.id} is missing from storage; "
            "run `filesd fsck` on the server.",
            code="blob_missing",
        )
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(
            f"Invalid method for URL ({request.method} {request.path})",
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"Invalid URL ({request.method} {request.path})")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(f"Request body is too large: {exc.text}")
    if isinstance(exc, web.HTTPException):
        return ApiError(exc.reason, status=exc.status)
    disk_full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
    )
    if disk_full:
        log.error("storage full in %s %s: %s", request.method, request.path, exc)
        return InsufficientStorage(
            "The server has no room left to store this file. Try again later.",
            code="insufficient_storage",
        )
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
        log.error("database busy in %s %s: %s", request.method, request.path, exc)
        return ServiceUnavailable(
            "The server's database is busy. Retry shortly.",
            code="database_busy",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, HttpProcessingError):
        # aiohttp's parsers: malformed multipart headers, truncated or mis-encoded bodies.
        status = exc.code if 400 <= exc.code < 500 else 400
        return ApiError(f"Malformed request: {exc.message}", status=status)
    if isinstance(exc, BadContentDispositionHeader | BadContentDispositionParam):
        # aiohttp warns about these; raised only where warnings are errors (as in the tests).
        return InvalidRequest("Malformed Content-Disposition header in a multipart part.")
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
    except asyncio.CancelledError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_exception(request, exc))
    except Exception as exc:
        return error_response(_from_exception(request, exc))


async def add_api_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers OpenAI sends that clients read, on every response."""
    response.headers["x-request-id"] = request.get(REQUEST_ID) or new_request_id()
    response.headers["openai-version"] = OPENAI_VERSION
    started = request.get(STARTED)
    if started is not None:
        elapsed_ms = int((time.monotonic() - started) * 1000)
        response.headers["openai-processing-ms"] = str(elapsed_ms)
